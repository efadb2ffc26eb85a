"""The generic text-file stream on files the tests write, and bad input through the CLI (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from forgetting.registry import tokenizer_maker
from forgetting.errors import BadInput
from forgetting.run import main
from forgetting.streams import build_stream

POS = ["a lovely film", "great acting", "i loved it", "superb story", "what a joy", "truly wonderful"]
NEG = ["a dull film", "bad acting", "i hated it", "awful story", "what a bore", "truly terrible"]
SPORT = ["the team won", "a late goal", "the coach quit", "a record run", "the final set"]
ROWS = ([("reviews", t, "pos") for t in POS] + [("reviews", t, "neg") for t in NEG]
        + [("sports", t, "sport") for t in SPORT] + [("sports", "the match was lovely", "pos")])
TINY = ["--bert-layers", "1", "--bert-hidden", "16", "--bert-heads", "2"]


def write_csv(path: Path, rows, newline: str = "\r", header=("task", "text", "label")) -> Path:
    lines = [",".join(header)] + [",".join(f'"{v}"' for v in row) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def opts(path, **kw):
    return {"text_file": str(path), "tokenizer": tokenizer_maker("bert"), "max_seq_len": 16, **kw}


def decoded(stream, task: int, split: str) -> list[str]:
    data = getattr(stream.tasks[task], split)
    inputs, _ = data.gather(torch.arange(len(data)))
    return [s for s in stream.tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True)]


def test_csv_with_cr_line_endings_gives_tasks_in_order_of_appearance(tmp_path):
    stream = build_stream("text-file", "class", opts(write_csv(tmp_path / "d.csv", ROWS)))
    assert [t.name for t in stream.tasks] == ["text-file[reviews]", "text-file[sports]"]
    assert [t.classes for t in stream.tasks] == [["neg", "pos"], ["pos", "sport"]]
    assert stream.layout.task_outputs == [[0, 1], [1, 2]]  # "pos" is one class, one output, in both tasks
    assert [(len(t.train), len(t.test)) for t in stream.tasks] == [(10, 2), (5, 1)]  # 80/20 of 12 and 6 rows
    seen = sorted(decoded(stream, 0, "train") + decoded(stream, 0, "test"))
    assert seen == sorted(POS + NEG), "CR line endings must separate rows"
    sports = decoded(stream, 1, "train") + decoded(stream, 1, "test")
    labels = torch.cat([stream.tasks[1].train.targets, stream.tasks[1].test.targets]).tolist()
    assert dict(zip(sports, labels))["the match was lovely"] == 1


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_jsonl_and_parquet_give_the_same_stream_as_csv(tmp_path, fmt):
    df = pd.DataFrame(ROWS, columns=["task", "text", "label"])
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        path.write_text("\r\n".join(json.dumps(r) for r in df.to_dict("records")) + "\r\n")
    else:
        df.to_parquet(path)
    stream = build_stream("text-file", "task", opts(path))
    csv_stream = build_stream("text-file", "task", opts(write_csv(tmp_path / "d.csv", ROWS, "\n")))
    for a, b in zip(stream.tasks, csv_stream.tasks):
        assert (a.name, a.classes, a.outputs) == (b.name, b.classes, b.outputs)
        assert torch.equal(a.train.targets, b.train.targets) and a.train.encoded["input_ids"] == b.train.encoded["input_ids"]


def test_test_file_domain_scenario_and_configurable_columns(tmp_path):
    header = ("split_name", "body", "y")
    train = write_csv(tmp_path / "train.csv", ROWS, header=header)
    test = write_csv(tmp_path / "test.csv", [("sports", "a dull match", "neg"), ("reviews", "so great", "pos")],
                     header=header)
    stream = build_stream("text-file", "domain", opts(train, text_test_file=str(test), text_column="body",
                                                       label_column="y", task_column="split_name",
                                                       text_tasks=["sports", "reviews"]))
    assert [t.name for t in stream.tasks] == ["text-file[sports]", "text-file[reviews]"]
    assert [t.classes for t in stream.tasks] == [["neg", "pos", "sport"]] * 2 and stream.layout.n_outputs == 3
    assert [len(t.train) for t in stream.tasks] == [6, 12]
    assert stream.tasks[0].test.targets.tolist() == [0] and stream.tasks[1].test.targets.tolist() == [1]


@pytest.mark.parametrize("extra, message", [
    ({"text_column": "body"}, "--text-column: no column 'body' in .*, allowed: task, text, label"),
    ({"text_tasks": ["reviews", "cooking"]}, "--text-tasks: task 'cooking' has no rows in"),
    ({"text_labels": ["pos", "neg"]}, "label 'sport' is outside the declared classes \\(--text-labels\\)"),
])
def test_bad_files_are_bad_input(tmp_path, extra, message):
    with pytest.raises(BadInput, match=message):
        build_stream("text-file", "class", opts(write_csv(tmp_path / "d.csv", ROWS), **extra))


def test_empty_tasks_are_bad_input(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS + [("", "no task here", "pos")])
    with pytest.raises(BadInput, match="row 19 of .* has an empty 'task' column"):
        build_stream("text-file", "class", opts(path))
    test = write_csv(tmp_path / "t.csv", [("reviews", "fine", "pos")])
    with pytest.raises(BadInput, match="task 'sports' has no rows in .*t.csv"):
        build_stream("text-file", "class", opts(write_csv(tmp_path / "d.csv", ROWS), text_test_file=str(test)))
    one = write_csv(tmp_path / "one.csv", ROWS[:12] + [("solo", "lonely row", "pos")])
    with pytest.raises(BadInput, match="task 'solo' has 1 example"):
        build_stream("text-file", "class", opts(one))


def test_cli_bad_input_exits_2_with_one_line_and_no_results(tmp_path, cli):
    data = write_csv(tmp_path / "d.csv", ROWS)
    results = tmp_path / "results"
    p = cli("forgetting.run", "--benchmark", "text-file", "--text-file", str(data), "--text-column", "body",
            "--model", "bert", "--results-dir", str(results))
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "no column 'body'" in p.stderr and "Traceback" not in p.stderr
    assert not results.exists()


def run_main(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_cli_rejects_empty_tasks_checkpoints_without_config_and_non_text_models(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ROWS)
    results = tmp_path / "results"
    base = ["--benchmark", "text-file", "--text-file", str(data), "--results-dir", str(results), "--quiet", *TINY]
    code, err = run_main(capsys, *base, "--model", "bert", "--text-tasks", "reviews", "empty")
    assert code == 2 and "task 'empty' has no rows" in err and err.count("\n") == 1
    (tmp_path / "ckpt").mkdir()
    code, err = run_main(capsys, *base[:-len(TINY)], "--model", f"bert:{tmp_path / 'ckpt'}")
    assert code == 2 and "no config.json in" in err and err.count("\n") == 1
    code, err = run_main(capsys, *base[:-len(TINY)], "--model", "mlp")
    assert code == 2 and "it reads tensor inputs but benchmark 'text-file' gives text" in err
    code, err = run_main(capsys, *base, "--model", "bert", "--text-labels", "pos", "neg")
    assert code == 2 and "label 'sport' is outside the declared classes" in err
    assert not results.exists()


def test_cli_trains_a_small_bert_on_a_file_stream_with_naive_kl_and_rdrop(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", ROWS)
    for method in ("naive", "kl", "rdrop"):
        code, err = run_main(capsys, "--benchmark", "text-file", "--text-file", str(data), "--model", "bert", *TINY,
                             "--method", method, "--epochs", "2", "--scenario", "task", "--max-seq-len", "16",
                             "--results-dir", str(tmp_path / "results"), "--quiet", "--device", "cpu")
        assert code == 0, err
    runs = list((tmp_path / "results").iterdir())
    assert len(runs) == 3
    for run in runs:
        rows = pd.read_csv(run / "metrics.csv")
        assert len(rows) == 2 * (1 + 2 * 2)  # 2 tasks evaluated at init and after each of 2 epochs of 2 tasks
        assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
        assert rows["accuracy"].between(0, 1).all() and rows.query("trained_task == 1")["kl_base"].notna().all()


def test_a_one_class_task_in_the_task_scenario_warns(tmp_path, caplog):
    import logging

    from forgetting.run import warn_one_class_tasks

    rows = ([("reviews", t, "pos") for t in POS] + [("reviews", t, "neg") for t in NEG]
            + [("sports", t, "sport") for t in SPORT + ["a new coach", "the last lap"]])
    path = write_csv(tmp_path / "d.csv", rows)
    caplog.set_level(logging.WARNING, logger="forgetting")
    assert warn_one_class_tasks(build_stream("text-file", "task", opts(path))) == ["text-file[sports]"]
    assert "task 'text-file[sports]' has one class" in caplog.text and "--scenario domain or class" in caplog.text
    caplog.clear()
    for scenario in ("domain", "class"):  # one shared head: no one-output head
        assert warn_one_class_tasks(build_stream("text-file", scenario, opts(path))) == []
    assert warn_one_class_tasks(build_stream("text-file", "task", opts(write_csv(tmp_path / "e.csv", ROWS)))) == []
    assert caplog.text == ""


def test_editing_the_data_file_gives_a_new_run_id_and_the_manifest_records_its_digest(tmp_path):
    import hashlib

    from forgetting.registry import make_config
    from forgetting.results import read_run
    from forgetting.run import run_experiment

    path = write_csv(tmp_path / "d.csv", ROWS)

    def config(**kw):
        return make_config(benchmark="text-file", scenario="class", model="bert", epochs=1, progress=False,
                           stream_options={"text_file": str(path), "max_seq_len": 16}, results_dir=str(tmp_path / "r"),
                           model_options={"bert_layers": 1, "bert_hidden": 16, "bert_heads": 2}, **kw)

    first = config()
    assert first.data_fingerprint == {"text_file": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()}
    run_dir, _, status = run_experiment(first)
    assert status == "complete" and read_run(run_dir)[2]["data"] == first.data_fingerprint
    assert run_experiment(config())[2] == "skipped"  # same bytes: the same run
    write_csv(path, ROWS[:-1] + [("sports", "the match was dull", "pos")])  # one row edited
    edited = config()
    assert edited.run_id != first.run_id and edited.data_fingerprint != first.data_fingerprint
    assert run_experiment(edited)[2] == "complete"  # not "already complete"
    write_csv(path, ROWS)  # back as it was: the first run again
    assert config().run_id == first.run_id


def test_mnist_runs_hash_their_idx_files(tmp_path, mnist_dir):
    import shutil

    from forgetting.registry import make_config

    copy = tmp_path / "data"
    shutil.copytree(mnist_dir / "mnist", copy / "mnist")
    cfg = make_config(benchmark="split-mnist", data_dir=str(copy))
    assert sorted(cfg.data_fingerprint) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert make_config(benchmark="split-mnist", data_dir=str(mnist_dir)).run_id == cfg.run_id  # moved: same
    labels = copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = labels.read_bytes()
    labels.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit of one byte
    assert make_config(benchmark="split-mnist", data_dir=str(copy)).run_id != cfg.run_id
    assert make_config().data_fingerprint == {}  # bundled digits: no files, ids as before


@pytest.mark.parametrize("benchmark, folder, edited", [("uci-sentiment", "uci_sentiment", "yelp_labelled.txt"),
                                                       ("ag-news", "ag_news", "classes.txt"),
                                                       ("clinc150", "clinc150", "domains.json")])
def test_local_text_runs_hash_their_files(tmp_path, data_dir, benchmark, folder, edited):
    import shutil

    from forgetting.registry import make_config

    shutil.copytree(data_dir / folder, tmp_path / folder)
    before = make_config(benchmark=benchmark, model="bert", data_dir=str(tmp_path))
    assert edited in before.data_fingerprint
    assert make_config(benchmark=benchmark, model="bert", data_dir=str(data_dir)).run_id == before.run_id
    with open(tmp_path / folder / edited, "ab") as f:
        f.write(b"\n")
    assert make_config(benchmark=benchmark, model="bert", data_dir=str(tmp_path)).run_id != before.run_id


# --- one line where one line is promised ---------------------------------------------------------
def test_a_text_file_that_is_not_a_regular_file_is_one_line(tmp_path, capsys, cli):
    """A directory gave IsADirectoryError's traceback; /dev/zero hung (its content hash never ends)."""
    results = tmp_path / "results"
    (tmp_path / "folder.csv").mkdir()
    code, err = run_main(capsys, "--benchmark", "text-file", "--text-file", str(tmp_path / "folder.csv"),
                         "--model", "bert", "--results-dir", str(results), "--quiet", *TINY)
    assert code == 2 and err.count("\n") == 1 and "folder.csv' is not a file" in err, err
    p = cli("forgetting.run", "--benchmark", "text-file", "--text-file", "/dev/zero", "--model", "bert",
            "--results-dir", str(results), "--quiet", *TINY, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "'/dev/zero' is not a file" in p.stderr, p.stderr
    assert not results.exists()


def test_a_ragged_csv_row_is_named_in_one_line(tmp_path, capsys):
    """A row with a field too many printed three lines (datasets' log, a blank, ours) and named no row."""
    data = write_csv(tmp_path / "d.csv", ROWS, "\n")
    lines = data.read_text().splitlines()
    lines[5] += ',"one too many"'
    data.write_text("\n".join(lines) + "\n")
    results = tmp_path / "results"
    code, err = run_main(capsys, "--benchmark", "text-file", "--text-file", str(data), "--model", "bert",
                         "--results-dir", str(results), "--quiet", *TINY)
    assert code == 2 and err.count("\n") == 1, err
    assert "line 6 (row 5): 4 fields, the header has 3" in err and not results.exists()


@pytest.mark.parametrize("scenario", ["class", "domain"])
def test_tasks_of_one_class_each_are_refused_in_class_and_domain(tmp_path, capsys, scenario):
    """Every task of one class trained a classifier that is right whatever it does (100 %)."""
    rows = [("first", t, "pos") for t in POS] + [("second", t, "neg") for t in NEG]
    data = write_csv(tmp_path / "d.csv", rows)
    results = tmp_path / "results"
    code, err = run_main(capsys, "--benchmark", "text-file", "--text-file", str(data), "--model", "bert",
                         "--scenario", scenario, "--results-dir", str(results), "--quiet", *TINY)
    assert code == 2 and err.count("\n") == 1 and f"--scenario {scenario}: " in err, err
    assert ("one output" if scenario == "class" else "every task holds one class") in err
    assert not results.exists()
