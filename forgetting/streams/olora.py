"""``olora``: the O-LoRA "long sequence" benchmark's layout (Wang et al. 2023, github.com/cmnfriend/O-LoRA).

As its loader (``src/uie_dataset_lora.py``) reads it: ``DATA_DIR/<TYPE>/<dataset>/`` holds
``train.json``, ``dev.json``, ``test.json`` (a JSON list of ``{"sentence", "label"}``) and
``labels.json`` (the list of label strings), TYPE one of SC, TC, NLI, QQP, BoolQA, COPA,
MultiRC, WiC; the instructions are a JSON file (O-LoRA's ``configs/instruction_config.json``)
mapping TYPE to ``[{"instruction_type": "zero-shot", "instruction": ...}]``. The prompt is
O-LoRA's: the type's first zero-shot instruction, ``Option: <labels joined by ', '> \\n``, the
sentence and ``\\nAnswer:`` (COPA: the sentence and ``\\nAnswer:`` only); the response is a space
and the label. ``--olora-tasks`` names datasets (``dbpedia``) or TYPE/dataset (``TC/dbpedia``);
the model learns ``train.json`` and is scored on ``test.json``, by answer accuracy over the
labels of ``labels.json`` and by exact match.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput
from ..options import Option
from .digest import file_digest
from .text import RawTask, require_own_encoding, text_stream
from .trace import _root, read_json_list, task_names

OPTIONS = [
    Option("olora_tasks", str, [], "olora: the datasets to learn, in order, as DATASET or TYPE/DATASET folders "
           "under --data-dir (e.g. dbpedia amazon yahoo agnews; a comma-separated list works too)", nargs="*"),
    Option("olora_instructions", str, "", "olora: O-LoRA's instruction file (configs/instruction_config.json; "
           "empty: DATA_DIR/instruction_config.json)", hashed=False),
]
TYPES = ("SC", "TC", "NLI", "QQP", "BoolQA", "COPA", "MultiRC", "WiC")
FILES = ("train.json", "test.json", "labels.json")


def _folder(root: Path, name: str) -> Path:
    """``root/TYPE/name`` for a dataset ``name`` (one TYPE must hold it) or ``root/TYPE/DATASET`` as given."""
    if "/" in name:
        path = root / name
        if not path.is_dir():
            raise BadInput(f"--olora-tasks: no folder {name!r} under {str(root)!r}")
        return path
    hits = sorted(p for p in root.glob(f"*/{name}") if p.is_dir())
    if not hits:
        found = sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*") if (p / "train.json").is_file())
        raise BadInput(f"--olora-tasks: no dataset {name!r} in a TYPE folder under {str(root)!r}, allowed: "
                       f"{', '.join(found) or 'none found'}")
    if len(hits) > 1:
        raise BadInput(f"--olora-tasks: {name!r} is in {len(hits)} folders ({', '.join(str(h.relative_to(root)) for h in hits)}), "
                       "allowed: name it as TYPE/DATASET")
    return hits[0]


def _instructions(options: dict, root: Path) -> dict[str, str]:
    """TYPE -> its first zero-shot instruction (O-LoRA's "single" strategy)."""
    path = Path(options.get("olora_instructions") or root / "instruction_config.json").expanduser()
    if not path.is_file():
        raise BadInput(f"--olora-instructions: {str(path)!r} is missing, allowed: O-LoRA's instruction_config.json "
                       "(TYPE -> [{\"instruction_type\": \"zero-shot\", \"instruction\": ...}])")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"--olora-instructions: {str(path)!r} is not valid JSON: {e}") from None
    out = {}
    if isinstance(table, dict):
        for kind, entries in table.items():
            zero = [e.get("instruction") for e in entries or [] if isinstance(e, dict)
                    and e.get("instruction_type") == "zero-shot" and isinstance(e.get("instruction"), str)]
            if zero:
                out[kind] = zero[0]
    return out


def _labels(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInput(f"--data-dir: {str(path)!r} is missing, allowed: a dataset folder holding {', '.join(FILES)}")
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadInput(f"--data-dir: {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise BadInput(f"--data-dir: {str(path)!r} must be a non-empty JSON list of label strings")
    return labels


def prompt(kind: str, instruction: str, labels: list[str], sentence: str) -> str:
    """O-LoRA's prompt of one example."""
    if kind == "COPA":
        return f"{sentence}\nAnswer:"
    return f"{instruction}Option: {', '.join(labels)} \n{sentence}\nAnswer:"


def data_fingerprint(options: dict) -> dict:
    if not options.get("data_dir"):
        return {}
    root = Path(options["data_dir"]).expanduser()
    out = {}
    for n in task_names(options.get("olora_tasks")):
        try:
            folder = _folder(root, n)
        except BadInput:
            return {}  # reported by the builder
        for f in FILES:
            digest = file_digest(folder / f)
            if digest is not None:
                out[f"{n}/{f}"] = digest
    ins = Path(options.get("olora_instructions") or root / "instruction_config.json").expanduser()
    if file_digest(ins) is not None:
        out["instructions"] = file_digest(ins)
    return out


def raw_tasks(options: dict) -> list[RawTask]:
    root = _root(options, "olora")
    names = task_names(options.get("olora_tasks"))
    if not names:
        raise BadInput("--olora-tasks: name the datasets to learn, in order (e.g. dbpedia amazon yahoo agnews)")
    if len(set(names)) != len(names):
        raise BadInput(f"--olora-tasks: a dataset is listed twice in {names}")
    folders = [_folder(root, n) for n in names]
    instructions = _instructions(options, root)
    tasks = []
    for n, folder in zip(names, folders):
        kind = folder.parent.name
        if kind not in TYPES:
            raise BadInput(f"--olora-tasks: {n!r} is under {kind!r}, allowed task types: {', '.join(TYPES)}")
        if kind != "COPA" and kind not in instructions:
            raise BadInput(f"--olora-instructions: no zero-shot instruction for task type {kind!r}, allowed: a file "
                           f"with one for each of {', '.join(sorted({f.parent.name for f in folders}))}")
        labels = _labels(folder / "labels.json")
        splits = []
        for f in ("train.json", "test.json"):
            rows = read_json_list(folder / f, ("sentence", "label"))
            for i, r in enumerate(rows):
                if r["label"] not in labels:
                    raise BadInput(f"--data-dir: item {i} of {str(folder / f)!r} has label {r['label']!r}, allowed: "
                                   f"{', '.join(labels)} (labels.json)")
            splits.append(([prompt(kind, instructions.get(kind, ""), labels, r["sentence"]) for r in rows],
                           [" " + r["label"] for r in rows]))
        (x_tr, y_tr), (x_te, y_te) = splits
        tasks.append(RawTask(folder.name, x_tr, y_tr, x_te, y_te, [" " + lab for lab in labels]))
    return tasks


def build(scenario: str, options: dict):
    require_own_encoding("--benchmark olora", "tasks", options)
    raw = raw_tasks(options)
    info = {"source": str(Path(options["data_dir"]).expanduser().resolve()), "lm_pairs": True,
            "lm_choices_are_classes": True, "split": "train.json / test.json of each dataset (O-LoRA's layout)", "scoring": "olora"}
    return text_stream("olora", scenario, raw, options, info)
