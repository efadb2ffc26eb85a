"""``text-file``: a stream from the user's own table, so bringing data needs no code.

One file (CSV, TSV, JSON Lines or Parquet, read with ``datasets.load_dataset``) with a text
column, a label column and a task column; tasks are learned in the order they first appear
(or as ``--text-tasks`` lists them). Without ``--text-test-file`` each task's rows are split
80/20 into train and test parts, stratified, with a fixed seed. A task's classes are the labels
of its rows (in ``--text-labels`` order when declared, else sorted); in the
``domain`` scenario every task gets all classes. With a causal LM (``--model gpt2``) a file without
a label column is a corpus (``text,task``): its texts are language-modelled.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

from ..errors import BadInput, first_line
from ..options import Option, defaults
from .digest import file_digest
from .text import RawTask, encodes_own_tasks, require_own_encoding, sample, split_train_test, text_stream

OPTIONS = [
    Option("text_file", str, "", "text-file stream: the data, a .csv, .tsv, .jsonl/.json or .parquet file"),
    Option("text_test_file", str, "", "text-file stream: a separate test file with the same columns (empty: a "
           "fifth of each task's rows, stratified, fixed seed)"),
    Option("text_column", str, "text", "text-file stream: the column holding the text"),
    Option("label_column", str, "label", "text-file stream: the column holding the label"),
    Option("task_column", str, "task", "text-file stream: the column holding the task name"),
    Option("text_labels", str, [], "text-file stream: the declared classes, in output order; any other label is "
           "an error (none: the labels found, sorted)", nargs="*"),
    Option("prompt_column", str, "", "text-file stream, causal LMs: the column holding the prompt (with "
           "--response-column: prompt/response rows, no labels; empty: labelled texts)"),
    Option("response_column", str, "", "text-file stream, causal LMs: the column holding the response the loss is "
           "taken on (empty: labelled texts)"),
    Option("text_tasks", str, [], "text-file stream: the tasks to learn, in order (none: all, in order of "
           "first appearance)", nargs="*"),
    Option("eval_only_tasks", str, [], "text-file stream, causal LMs with prompt/response rows: tasks measured at "
           "every evaluation but never trained (all their rows are test rows; e.g. what the base could already do)",
           nargs="*", hashed_at_default=False),
]

LOADERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".jsonl": ("json", {}), ".json": ("json", {}),
           ".parquet": ("parquet", {})}


def data_fingerprint(options: dict) -> dict:
    """The digest of the data file and of the test file: editing either gives a new run id."""
    out = {}
    for key in ("text_file", "text_test_file"):
        digest = file_digest(options[key]) if options.get(key) else None
        if digest is not None:
            out[key] = digest
    return out


def check_text(path: Path, flag: str) -> None:
    """What ``datasets`` reports only as "An error occurred while generating the dataset": an
    empty file, bytes that are not UTF-8, a JSON line that does not parse, a CSV without rows,
    each named with its line. Read line by line, so a large file is never held whole (a ``.json``
    file is, once: it may be one JSON document)."""
    where = f"{flag}: {str(path)!r}"
    _check_utf8(path, where)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        if suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
                return  # one JSON document: datasets reads it
            except ValueError:
                pass  # JSON Lines in a .json file: checked line by line
        for lineno, line in enumerate(_text_lines(path), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise BadInput(f"{where} line {lineno}: not valid JSON ({e.msg} at column {e.colno}), allowed: one "
                               "JSON object per line") from None
            if not isinstance(row, dict):
                raise BadInput(f"{where} line {lineno}: a JSON {type(row).__name__}, allowed: one JSON object per line")
    else:
        delimiter = LOADERS[suffix][1].get("sep", ",")
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header, rows = None, 0
            try:
                for record in reader:
                    if not any(f.strip() for f in record):
                        continue
                    if header is None:
                        header = record
                        continue
                    rows += 1
                    if len(record) != len(header):
                        raise BadInput(f"{where} line {reader.line_num} (row {rows}): {len(record)} fields, the header "
                                       f"has {len(header)}, allowed: one value per column (quote a value holding "
                                       f"{'a tab' if delimiter == chr(9) else 'a comma'})")
            except csv.Error as e:
                raise BadInput(f"{where} line {reader.line_num}: not valid {'TSV' if delimiter == chr(9) else 'CSV'} "
                               f"({e})") from None
        if not rows:
            raise BadInput(f"{where} has a header line but no rows, allowed: a header line and one row per example")


def _text_lines(path: Path):
    """The file's lines as ``str.splitlines`` cuts the whole text, one byte line at a time (a byte line ends
    at a newline, which ``splitlines`` also ends a line at, so the numbering is the whole text's)."""
    with path.open("rb") as f:
        for raw in f:
            yield from raw.decode("utf-8").splitlines()


def _check_utf8(path: Path, where: str) -> None:
    """An empty file or bytes that are not UTF-8, named with their line, one byte line in memory at a time."""
    lines, blank = 0, True
    with path.open("rb") as f:
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = lines + len((raw[: e.start].decode("utf-8", "replace") + "x").splitlines())
                raise BadInput(f"{where} line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}), allowed: UTF-8; "
                               "save the file as UTF-8") from None
            lines += len(text.splitlines())
            blank = blank and not raw.strip()
    if blank:
        raise BadInput(f"{where} is empty, allowed: a header line and one row per example (CSV, TSV) or one JSON "
                       "object per line (JSON Lines)")


def open_table(path_str: str, flag: str, columns: dict[str, str], optional: Sequence[str] = ()):
    """The data file as a ``datasets.Dataset`` (an Arrow table on disk, memory-mapped, not in memory), through
    ``datasets.load_dataset``; BadInput for a bad file or a missing column (one whose option is in ``optional``
    may be absent)."""
    import datasets

    path = Path(path_str).expanduser()
    if not path.is_file():
        raise BadInput(f"{flag}: {path_str!r} is not a file")
    if path.suffix.lower() not in LOADERS:
        raise BadInput(f"{flag}: {path_str!r} has an unknown suffix, allowed: {', '.join(LOADERS)}")
    builder, kwargs = LOADERS[path.suffix.lower()]
    if builder != "parquet":
        check_text(path, flag)
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=str(path.resolve()), split="train", **kwargs)
    except Exception as e:  # pyarrow, pandas and datasets each raise their own kinds for a malformed file
        raise BadInput(f"{flag}: cannot read {path_str!r} as {builder}: {first_line(e)}") from None
    finally:
        if was:
            datasets.enable_progress_bars()
    for option, name in columns.items():
        if name not in ds.column_names and option not in optional:
            raise BadInput(f"{option}: no column {name!r} in {path_str!r}, allowed: {', '.join(ds.column_names)}")
    return ds


def load_table(path_str: str, flag: str, columns: dict[str, str], optional: Sequence[str] = ()) -> dict[str, list]:
    """The named columns of a data file, whole, as lists (see ``open_table``)."""
    ds = open_table(path_str, flag, columns, optional)
    return {name: ds[name] for name in columns.values() if name in ds.column_names}


def _values(ds, name: str) -> list:
    """A column's values as ``ds[name]`` gives them, each distinct value one shared object (a label or task
    column of a million rows holds a handful of values, not a million strings)."""
    column = ds.data.table.column(name)
    try:
        encoded = column.combine_chunks().dictionary_encode()
    except Exception:  # a type Arrow does not dictionary-encode (lists, structs): the plain values
        return ds[name]
    distinct = encoded.dictionary.to_pylist() + [None]
    codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False)
    return [distinct[k] for k in codes.tolist()]


def _first_missing(ds, name: str) -> int | None:
    """The first row whose ``name`` value is null or NaN, read from Arrow's validity bits (no text is
    turned into a Python string)."""
    import pyarrow.compute as pc

    column = ds.data.table.column(name)
    try:
        where = pc.index(pc.is_null(column, nan_is_null=True), True).as_py()
    except Exception:  # a type without nulls Arrow can test: the values
        where = next((i for i, v in enumerate(ds[name]) if _missing(v)), -1)
    return None if where < 0 else where


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _label(v):
    """Labels compare as strings, so ``1`` in a CSV and ``"1"`` in --text-labels are the same class."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _sorted_labels(labels) -> list[str]:
    labels = sorted(set(labels))
    try:
        return sorted(labels, key=int)
    except ValueError:
        return labels


def read_rows(path: str, flag: str, options: dict):
    """``(rows, texts)``: rows are (task, row index, label), checked: no empty task, text or label (the first
    bad row named); ``texts(indices)`` gives the texts of those rows only. The split and the sample choose rows
    by task and label alone, so only the chosen rows' texts are ever read into memory. For a causal LM (a
    tokenizer maker that encodes its own tasks) the label column may be absent: the file is a corpus, every
    label ''."""
    task_col, text_col, label_col = options["task_column"], options["text_column"], options["label_column"]
    cols = {"--text-column": text_col, "--label-column": label_col, "--task-column": task_col}
    ds = open_table(path, flag, cols, optional=("--label-column",) if encodes_own_tasks(options) else ())
    tasks = _values(ds, task_col)
    unlabelled = label_col not in ds.column_names
    labels = [""] * len(tasks) if unlabelled else _values(ds, label_col)

    def first_empty(values):
        return next((i for i, v in enumerate(values) if _missing(v) or not str(v).strip()), None)

    bad = [(i, col) for i, col in ((first_empty(tasks), task_col), (_first_missing(ds, text_col), text_col),
                                   (None if unlabelled else first_empty(labels), label_col)) if i is not None]
    if bad:
        i, col = min(bad, key=lambda b: b[0])  # the first bad row; in it the first column, task, text, label
        raise BadInput(f"{flag}: row {i + 1} of {path!r} has an empty {col!r} column")
    if not tasks:
        raise BadInput(f"{flag}: {path!r} has no rows")
    canon: dict = {}
    rows = [(canon.setdefault(str(t), str(t)), i, canon.setdefault(_label(y), _label(y)))
            for i, (t, y) in enumerate(zip(tasks, labels))]

    def texts(indices: Sequence[int]) -> list[str]:
        return [str(x) for x in ds.select(list(indices))[text_col]] if len(indices) else []

    return rows, texts


def read_pairs(path: str, flag: str, options: dict) -> list[tuple[str, str, str]]:
    """(task, prompt, response) per row, checked: no empty task or response."""
    cols = {"--task-column": options["task_column"], "--prompt-column": options["prompt_column"],
            "--response-column": options["response_column"]}
    table = load_table(path, flag, cols)
    rows = []
    for i, (task, prompt, response) in enumerate(zip(*(table[c] for c in cols.values())), 1):
        for value, col in ((task, options["task_column"]), (response, options["response_column"])):
            if _missing(value) or not str(value).strip():
                raise BadInput(f"{flag}: row {i} of {path!r} has an empty {col!r} column")
        rows.append((str(task), "" if _missing(prompt) else str(prompt), str(response)))
    if not rows:
        raise BadInput(f"{flag}: {path!r} has no rows")
    return rows


def build(scenario: str, options: dict):
    options = {**defaults(OPTIONS), **options}
    if not options.get("text_file"):
        raise BadInput("--text-file: the text-file benchmark needs a data file, allowed: a .csv, .tsv, .jsonl, "
                       ".json or .parquet file with text, label and task columns")
    if options.get("prompt_column") or options.get("response_column"):
        return build_pairs(scenario, options)
    if options.get("eval_only_tasks"):
        raise BadInput("--eval-only-tasks: applies to prompt/response rows (--prompt-column, --response-column) of a "
                       "causal LM")
    path, test_path = options["text_file"], options.get("text_test_file") or ""
    train_rows, train_texts = read_rows(path, "--text-file", options)
    test_rows, test_texts = read_rows(test_path, "--text-test-file", options) if test_path else (None, None)
    declared = list(options.get("text_labels") or [])
    if len(set(declared)) != len(declared):
        raise BadInput(f"--text-labels: a label is declared twice in {declared}")
    if declared:
        for rows, where in ((train_rows, path), (test_rows or [], test_path)):
            for i, (_, _, label) in enumerate(rows, 1):
                if label not in declared:
                    raise BadInput(f"row {i} of {where!r}: label {label!r} is outside the declared classes "
                                   f"(--text-labels), allowed: {', '.join(declared)}")
    chosen = chosen_tasks(train_rows, options, path)

    def of(rows, task):
        picked = [(x, y) for t, x, y in rows if t == task]
        return [x for x, _ in picked], [y for _, y in picked]

    every_row = train_rows + (test_rows or [])
    all_labels = declared or _sorted_labels(y for t, _, y in every_row if t in chosen)
    raw = []
    for task in chosen:
        x, y = of(train_rows, task)
        found = {label for t, _, label in every_row if t == task}
        if test_rows is None:
            x_tr, y_tr, x_te, y_te = split_train_test(task, x, y)
        else:
            (x_tr, y_tr), (x_te, y_te) = (x, y), of(test_rows, task)
            if not x_te:
                raise BadInput(f"--text-test-file: task {task!r} has no rows in {test_path!r}: every task needs "
                               "test examples")
        classes = all_labels if scenario == "domain" else [c for c in all_labels if c in found]
        # the per-task sample text_stream takes, taken here on row indices (it is a no-op there after), so
        # only the texts of the sampled rows are read
        x_tr, y_tr = sample(x_tr, y_tr, int(options.get("text_train_per_task") or 0))
        x_te, y_te = sample(x_te, y_te, int(options.get("text_test_per_task") or 0))
        raw.append(RawTask(task, train_texts(x_tr), y_tr, (test_texts or train_texts)(x_te), y_te, classes))
    info = {"source": str(Path(path).expanduser().resolve()),
            "split": f"test file {test_path}" if test_path else "each task split 80/20 stratified, seed 0"}
    if all(label == "" for _, _, label in every_row) and encodes_own_tasks(options):
        info["lm_unlabelled"] = True  # a corpus: language modelling only
    return text_stream("text-file", scenario, raw, options, info)


def chosen_tasks(train_rows: list[tuple], options: dict, path: str, held_out: list | None = None) -> list:
    """The tasks to learn, in order: ``--text-tasks``, checked against the tasks the rows hold, or all of them
    but the ``held_out`` (evaluation-only) ones."""
    order = list(dict.fromkeys(t for t, _, _ in train_rows))
    chosen = list(options.get("text_tasks") or [t for t in order if t not in (held_out or [])])
    for task in chosen:
        if task not in order:
            raise BadInput(f"--text-tasks: task {task!r} has no rows in {path!r}, allowed: {', '.join(order)}")
    if len(set(chosen)) != len(chosen):
        raise BadInput(f"--text-tasks: a task is listed twice in {chosen}")
    return chosen


def build_pairs(scenario: str, options: dict):
    """Prompt/response rows per task, for causal LMs (``--prompt-column`` and ``--response-column``)."""
    if not (options.get("prompt_column") and options.get("response_column")):
        missing = "--response-column" if options.get("prompt_column") else "--prompt-column"
        raise BadInput(f"{missing}: prompt/response rows need both --prompt-column and --response-column")
    require_own_encoding("--response-column", "rows", options)
    path, test_path = options["text_file"], options.get("text_test_file") or ""
    train_rows = read_pairs(path, "--text-file", options)
    test_rows = read_pairs(test_path, "--text-test-file", options) if test_path else None
    held_out = [n.strip() for v in options.get("eval_only_tasks") or [] for n in str(v).split(",") if n.strip()]
    chosen = chosen_tasks(train_rows, options, path, held_out)
    every = list(dict.fromkeys(t for t, _, _ in train_rows + (test_rows or [])))
    for task in held_out:
        if task in chosen:
            raise BadInput(f"--eval-only-tasks: {task!r} is also a task to learn (--text-tasks), allowed: a task "
                           "that is measured only")
        if task not in every:
            raise BadInput(f"--eval-only-tasks: task {task!r} has no rows in {path!r}, allowed: {', '.join(every)}")
    if len(set(held_out)) != len(held_out):
        raise BadInput(f"--eval-only-tasks: a task is listed twice in {held_out}")
    raw = []
    for task in chosen:
        x = [p for t, p, _ in train_rows if t == task]
        y = [r for t, _, r in train_rows if t == task]
        if test_rows is None:
            x_tr, y_tr, x_te, y_te = split_train_test(task, x, y)
        else:
            x_tr, y_tr = x, y
            x_te = [p for t, p, _ in test_rows if t == task]
            y_te = [r for t, _, r in test_rows if t == task]
            if not x_te:
                raise BadInput(f"--text-test-file: task {task!r} has no rows in {test_path!r}: every task needs "
                               "test examples")
        raw.append(RawTask(task, x_tr, y_tr, x_te, y_te, sorted(set(y_tr) | set(y_te))))
    for task in held_out:  # measured, never trained: every row of the task is a test row
        rows = [(p, r) for t, p, r in train_rows + (test_rows or []) if t == task]
        raw.append(RawTask(task, [], [], [p for p, _ in rows], [r for _, r in rows], sorted({r for _, r in rows}),
                           eval_only=True))
    info = {"source": str(Path(path).expanduser().resolve()), "lm_pairs": True,
            "split": f"test file {test_path}" if test_path else "each task split 80/20 (stratified where possible), seed 0"}
    return text_stream("text-file", scenario, raw, options, info)
