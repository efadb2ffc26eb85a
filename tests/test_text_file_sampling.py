"""A text file's split and per-task sample are chosen from its task and label columns alone: the rows chosen are
the ones a whole-table read chooses, and the texts of the rows not chosen are never read into memory."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import datasets
import pandas as pd
import pytest

from forgetting.errors import BadInput
from forgetting.streams import files
from forgetting.streams.text import sample, split_train_test


def table(n: int, seed: int = 0) -> pd.DataFrame:
    """Three tasks; labels written "1.0"/"2.0" (a float column to pandas: classes "1" and "2"), a rare
    class of one row (too small to stratify), texts not unique."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = ["b", "a", "c"][i % 3]
        label = "3.0" if i == 7 else rng.choice(["1.0", "2.0", "2.0"])
        rows.append((task, f"text {rng.randrange(n // 2)} " + "x" * rng.randrange(5), label))
    return pd.DataFrame(rows, columns=["task", "text", "label"])


def write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("\r\n".join(json.dumps(r) for r in df.to_dict("records")) + "\r\n")
    elif path.suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def captured(monkeypatch, options: dict):
    """The raw tasks ``files.build`` hands to the tokenising stage, sampled as that stage samples them."""
    seen = {}
    monkeypatch.setattr(files, "text_stream", lambda name, scenario, raw, opts, info: seen.setdefault("raw", raw))
    files.build("class", options)
    n_train, n_test = options.get("text_train_per_task", 0), options.get("text_test_per_task", 0)
    return [(t.name, *sample(t.train_texts, t.train_labels, n_train), *sample(t.test_texts, t.test_labels, n_test),
             t.classes) for t in seen["raw"]]


def whole_table_reference(path: Path, test_path: Path | None, n_train: int, n_test: int):
    """Today's rule, on the whole table read at once: split (or test file), then sample, on the texts."""
    def rows(p):
        t = files.load_table(str(p), "--text-file", {"a": "text", "b": "label", "c": "task"})
        return [(str(k), str(x), files._label(y)) for k, x, y in zip(t["task"], t["text"], t["label"])]

    train, test = rows(path), rows(test_path) if test_path else None
    labels = files._sorted_labels(y for _, _, y in train + (test or []))
    out = []
    for task in dict.fromkeys(k for k, _, _ in train):
        x, y = [r[1] for r in train if r[0] == task], [r[2] for r in train if r[0] == task]
        if test is None:
            x_tr, y_tr, x_te, y_te = split_train_test(task, x, y)
        else:
            x_tr, y_tr = x, y
            x_te, y_te = [r[1] for r in test if r[0] == task], [r[2] for r in test if r[0] == task]
        found = {r[2] for r in train + (test or []) if r[0] == task}
        x_tr, y_tr = sample(x_tr, y_tr, n_train)
        x_te, y_te = sample(x_te, y_te, n_test)
        out.append((task, x_tr, y_tr, x_te, y_te, [c for c in labels if c in found]))
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("n_train,n_test,with_test_file", [(0, 0, False), (20, 7, False), (15, 4, True)])
def test_rows_chosen_are_the_whole_table_ones(tmp_path, monkeypatch, fmt, n_train, n_test, with_test_file):
    path = write(table(300), tmp_path / f"d.{fmt}")
    test_path = write(table(90, seed=1), tmp_path / f"t.{fmt}") if with_test_file else None
    options = {"text_file": str(path), "text_test_file": str(test_path or ""),
               "text_train_per_task": n_train, "text_test_per_task": n_test}
    got = captured(monkeypatch, options)
    assert got == whole_table_reference(path, test_path, n_train, n_test)
    assert [g[0] for g in got] == ["b", "a", "c"]
    # in a CSV "1.0" is the number 1 (class "1"), in JSON and Parquet the string "1.0", as before
    assert {y for g in got for y in g[2] + g[4]} <= ({"1", "2", "3"} if fmt in ("csv", "tsv") else {"1.0", "2.0", "3.0"})
    if n_train:
        assert [len(g[1]) for g in got] == [n_train] * 3


def test_texts_of_rows_not_chosen_are_never_read(tmp_path, monkeypatch):
    """The text column is read only on the chosen rows: no read of it spans more rows than the sample."""
    reads = []
    getitem = datasets.Dataset.__getitem__

    def spy(self, key):
        if key == "text":
            reads.append(len(self))
        return getitem(self, key)

    monkeypatch.setattr(datasets.Dataset, "__getitem__", spy)
    path = write(table(3000), tmp_path / "d.csv")
    got = captured(monkeypatch, {"text_file": str(path), "text_train_per_task": 10, "text_test_per_task": 5})
    assert [(len(g[1]), len(g[3])) for g in got] == [(10, 5)] * 3
    assert reads and max(reads) <= 10, f"the text column was read on {max(reads)} rows for a sample of 10"


def test_a_sample_from_a_file_takes_memory_far_below_its_size(tmp_path, monkeypatch):
    """Peak Python memory while building a 50-example sample of a ~4 MB file whose Arrow table the loader
    has already written (the first read converts it in bounded chunks, the loader's own): a small part of
    the file, where a whole-table read holds the file's bytes and every text."""
    rng = random.Random(0)
    df = pd.DataFrame([(f"t{i % 2}", "".join(rng.choices("abcdefgh ", k=1000)), str(i % 3)) for i in range(4000)],
                      columns=["task", "text", "label"])
    path = write(df, tmp_path / "big.csv")
    size = path.stat().st_size
    options = {"text_file": str(path), "text_train_per_task": 50, "text_test_per_task": 10}
    captured(monkeypatch, options)  # the loader writes its Arrow table
    tracemalloc.start()
    try:
        got = captured(monkeypatch, options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(g[1]) for g in got] == [50, 50]
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte file"


@pytest.mark.parametrize("content,line", [
    (b'task,text,label\r"a","b",1\r"a","\xff",2\r', 3),  # CR line endings: one line each
    (b'task,text,label\n"a","b\xe2\x80\xa8c",1\n"a","\xe9",2\n', 4),  # U+2028 ends a line, as str.splitlines says
    (b'task,text,label\r\n"a","ok",1\r\n"a","bad \xc3",2\r\n', 3),
])
def test_line_numbers_of_bytes_not_utf8_are_the_whole_texts(tmp_path, content, line):
    path = tmp_path / "d.csv"
    path.write_bytes(content)
    with pytest.raises(BadInput, match=f"line {line}: not UTF-8"):
        files.check_text(path, "--text-file")


def test_json_line_numbers_follow_str_splitlines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"task": "a", "text": "x", "label": 1}\r{"task": "a", "text": "y", "label": 2}\r{oops\r')
    with pytest.raises(BadInput, match="line 3: not valid JSON"):
        files.check_text(path, "--text-file")
