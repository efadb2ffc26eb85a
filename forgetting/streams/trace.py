"""``trace``: TRACE's layout (Wang et al. 2023), prompt/response tasks for causal LMs, read as published.

One folder per task under ``--data-dir`` (``DATA_DIR/FOMC``, ``DATA_DIR/C-STANCE``, ...), each
holding ``train.json``, ``eval.json`` and ``test.json``: a JSON list of ``{"prompt", "answer"}``.
The model learns ``train.json`` and is scored on ``test.json`` (``eval.json``, TRACE's validation
split, is checked but not used). The prompt is the row's prompt as written (TRACE's instruction
included) and the response its answer, as TRACE concatenates them; tasks are learned in the
order ``--trace-tasks`` lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput
from ..options import Option
from .digest import file_digest
from .text import RawTask, require_own_encoding, text_stream

OPTIONS = [
    Option("trace_tasks", str, [], "trace: the task folders under --data-dir to learn, in order (e.g. FOMC "
           "C-STANCE ScienceQA; a comma-separated list works too)", nargs="*"),
]
SPLITS = ("train.json", "eval.json", "test.json")
USED = ("train.json", "test.json")


def task_names(value) -> list[str]:
    """``--trace-tasks``/``--olora-tasks`` given as separate values or one comma-separated list."""
    return [n.strip() for v in (value or []) for n in str(v).split(",") if n.strip()]


def read_json_list(path: Path, keys: tuple[str, str], flag: str = "--data-dir") -> list[dict]:
    """A JSON list of objects holding ``keys`` (each a string), checked; BadInput naming the file otherwise."""
    if not path.is_file():
        raise BadInput(f"{flag}: {str(path)!r} is missing, allowed: a folder per task holding "
                       f"{', '.join(SPLITS)}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{flag}: {str(path)!r} is not UTF-8 text, allowed: a JSON list of objects") from None
    except ValueError as e:
        raise BadInput(f"{flag}: {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}), allowed: a JSON "
                       f"list of {{{', '.join(map(repr, keys))}}} objects") from None
    if not isinstance(rows, list) or not rows:
        raise BadInput(f"{flag}: {str(path)!r} holds {'an empty list' if rows == [] else 'a JSON ' + type(rows).__name__}, "
                       f"allowed: a non-empty JSON list of {{{', '.join(map(repr, keys))}}} objects")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in keys):
            raise BadInput(f"{flag}: item {i} of {str(path)!r} is not an object with string fields "
                           f"{', '.join(map(repr, keys))}: {json.dumps(row)[:80]}")
    return rows


def _root(options: dict, what: str) -> Path:
    if not options.get("data_dir"):
        raise BadInput(f"--data-dir: {what} needs a data directory holding a folder per task")
    root = Path(options["data_dir"]).expanduser()
    if not root.is_dir():
        raise BadInput(f"--data-dir: {str(root)!r} is not a directory")
    return root


def _chosen(options: dict, root: Path) -> list[str]:
    names = task_names(options.get("trace_tasks"))
    found = sorted(p.name for p in root.iterdir() if (p / "train.json").is_file())
    if not names:
        raise BadInput(f"--trace-tasks: name the tasks to learn, in order, allowed: {', '.join(found) or 'none found'}")
    for n in names:
        if not (root / n).is_dir():
            raise BadInput(f"--trace-tasks: no folder {n!r} under {str(root)!r}, allowed: "
                           f"{', '.join(found) or 'none found'}")
    if len(set(names)) != len(names):
        raise BadInput(f"--trace-tasks: a task is listed twice in {names}")
    return names


def data_fingerprint(options: dict) -> dict:
    """Digests of every file read: editing one gives a new run id."""
    if not options.get("data_dir"):
        return {}
    root = Path(options["data_dir"]).expanduser()
    out = {}
    for n in task_names(options.get("trace_tasks")):
        for f in USED:
            digest = file_digest(root / n / f)
            if digest is not None:
                out[f"{n}/{f}"] = digest
    return out


def raw_tasks(options: dict) -> list[RawTask]:
    """The tasks as ``RawTask`` prompt/response pairs (the layout checked, nothing tokenised)."""
    root = _root(options, "trace")
    tasks = []
    for n in _chosen(options, root):
        rows = {}
        for f in SPLITS:
            if f == "eval.json" and not (root / n / f).is_file():
                continue  # the validation split is not used: its absence is no error
            rows[f] = read_json_list(root / n / f, ("prompt", "answer"))
        train, test = rows["train.json"], rows["test.json"]
        answers = sorted({r["answer"] for r in train + test})
        tasks.append(RawTask(n, [r["prompt"] for r in train], [r["answer"] for r in train],
                             [r["prompt"] for r in test], [r["answer"] for r in test], answers))
    return tasks


def build(scenario: str, options: dict):
    require_own_encoding("--benchmark trace", "tasks", options)
    raw = raw_tasks(options)
    info = {"source": str(Path(options["data_dir"]).expanduser().resolve()), "lm_pairs": True,
            "split": "train.json / test.json of each task (TRACE's layout)", "scoring": "trace"}
    return text_stream("trace", scenario, raw, options, info)
