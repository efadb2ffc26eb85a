"""TRACE's and O-LoRA's layouts read into prompt/response tasks; bad layouts are one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgetting.registry import tokenizer_maker
from forgetting.run import main
from forgetting.streams import build_stream

DATA = Path(__file__).parent / "data"


def decode(data, i):
    tok = data.tokenizer
    return tok.decode(data.prompts[i]), tok.decode(data.responses[i][:-1])


def test_trace_layout_reads_into_its_tasks_prompts_and_answers():
    opts = {"data_dir": str(DATA / "trace"), "trace_tasks": ["FOMC,MeetingBank"], "tokenizer": tokenizer_maker("gpt2"),
            "max_seq_len": 256}
    stream = build_stream("trace", "domain", opts)
    assert [t.name for t in stream.tasks] == ["trace[FOMC]", "trace[MeetingBank]"]
    fomc = json.loads((DATA / "trace/FOMC/train.json").read_text())
    train = stream.tasks[0].train
    assert len(train) == 4 and [decode(train, i) for i in range(4)] == [(r["prompt"], r["answer"]) for r in fomc]
    test = json.loads((DATA / "trace/FOMC/test.json").read_text())
    got = sorted(decode(stream.tasks[0].test, i) for i in range(len(stream.tasks[0].test)))
    assert got == sorted((r["prompt"], r["answer"]) for r in test)
    assert stream.tasks[0].classes == ["A", "B", "C"]  # the answers form a small set: answer accuracy over them
    assert stream.info["lm_task"] == "completion" and stream.info["scoring"] == "trace"
    summary = json.loads((DATA / "trace/MeetingBank/test.json").read_text())
    assert decode(stream.tasks[1].test, 0) == (summary[0]["prompt"], summary[0]["answer"])


def test_olora_layout_reads_with_its_instruction_options_and_labels():
    opts = {"data_dir": str(DATA / "olora"), "olora_tasks": ["amazon", "TC/agnews"], "tokenizer": tokenizer_maker("gpt2"),
            "max_seq_len": 256}
    stream = build_stream("olora", "domain", opts)
    assert [t.name for t in stream.tasks] == ["olora[amazon]", "olora[agnews]"]
    row = json.loads((DATA / "olora/TC/agnews/train.json").read_text())[0]
    expected = ("What is the topic of the following paragraph? Choose one from the option.\n"
                "Option: World, Sports, Business, Science or Technology \n" + row["sentence"] + "\nAnswer:")
    assert decode(stream.tasks[1].train, 0) == (expected, " " + row["label"])
    # the choices are labels.json's, in its order (not only the labels the files happen to hold)
    assert stream.tasks[0].classes == ["very negative", "negative", "neutral", "positive", "very positive"]
    tok = stream.tokenizer
    assert [tok.decode(c[:-1]) for c in stream.tasks[1].train.choices] == [
        " World", " Sports", " Business", " Science or Technology"]
    test = stream.tasks[1].test
    for i in range(len(test)):
        assert tok.decode(test.choices[int(test.targets[i])][:-1]) == tok.decode(test.responses[i][:-1])


def _copy(tmp, name):
    shutil.copytree(DATA / name, tmp / name)
    return tmp / name


def trace_missing_test(tmp):
    root = _copy(tmp, "trace")
    (root / "FOMC" / "test.json").unlink()
    return ["--benchmark", "trace", "--data-dir", str(root), "--trace-tasks", "FOMC"], "test.json' is missing"


def trace_not_a_list(tmp):
    root = _copy(tmp, "trace")
    (root / "FOMC" / "train.json").write_text('{"prompt": "a", "answer": "b"}')
    return ["--benchmark", "trace", "--data-dir", str(root), "--trace-tasks", "FOMC"], "holds a JSON dict"


def trace_wrong_keys(tmp):
    root = _copy(tmp, "trace")
    (root / "FOMC" / "train.json").write_text('[{"input": "a", "output": "b"}]')
    return ["--benchmark", "trace", "--data-dir", str(root), "--trace-tasks", "FOMC"], "item 0 of"


def trace_bad_json(tmp):
    root = _copy(tmp, "trace")
    (root / "FOMC" / "test.json").write_text('[{"prompt": "a",')
    return ["--benchmark", "trace", "--data-dir", str(root), "--trace-tasks", "FOMC"], "is not valid JSON"


def trace_unknown_task(tmp):
    return (["--benchmark", "trace", "--data-dir", str(_copy(tmp, "trace")), "--trace-tasks", "FOMC,Py150"],
            "no folder 'Py150'")


def trace_no_tasks(tmp):
    return ["--benchmark", "trace", "--data-dir", str(_copy(tmp, "trace"))], "allowed: FOMC, MeetingBank"


def olora_no_labels(tmp):
    root = _copy(tmp, "olora")
    (root / "TC" / "agnews" / "labels.json").unlink()
    return ["--benchmark", "olora", "--data-dir", str(root), "--olora-tasks", "agnews"], "labels.json' is missing"


def olora_label_outside(tmp):
    root = _copy(tmp, "olora")
    (root / "TC" / "agnews" / "test.json").write_text('[{"sentence": "x", "label": "Weather"}]')
    return ["--benchmark", "olora", "--data-dir", str(root), "--olora-tasks", "agnews"], "label 'Weather'"


def olora_no_instructions(tmp):
    root = _copy(tmp, "olora")
    (root / "instruction_config.json").unlink()
    return ["--benchmark", "olora", "--data-dir", str(root), "--olora-tasks", "agnews"], "--olora-instructions"


def olora_unknown(tmp):
    return (["--benchmark", "olora", "--data-dir", str(_copy(tmp, "olora")), "--olora-tasks", "yelp"],
            "allowed: SC/amazon, TC/agnews")


BAD = {f.__name__: f for f in (trace_missing_test, trace_not_a_list, trace_wrong_keys, trace_bad_json, trace_unknown_task,
                               trace_no_tasks, olora_no_labels, olora_label_outside, olora_no_instructions, olora_unknown)}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_layouts_are_one_line_exit_2_nothing_written(name, tmp_path, capsys):
    argv, needle = BAD[name](tmp_path)
    results = tmp_path / "results"
    assert main([*argv, "--model", "gpt2", "--results-dir", str(results), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert not results.exists()


def test_a_trace_stream_needs_a_causal_lm(tmp_path, capsys):
    assert main(["--benchmark", "trace", "--data-dir", str(DATA / "trace"), "--trace-tasks", "FOMC", "--model", "bert",
                 "--results-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert "need a causal LM" in capsys.readouterr().err


def test_lm_domains_reads_reviews_news_and_requests_from_their_sources(data_dir):
    for folder in ("uci_sentiment", "ag_news", "clinc150"):
        if not (data_dir / folder).is_dir():
            pytest.skip(f"{folder} not in the data directory")
    opts = {"data_dir": str(data_dir), "tokenizer": tokenizer_maker("gpt2"), "max_seq_len": 64,
            "text_train_per_task": 20, "text_test_per_task": 10}
    stream = build_stream("lm-domains", "domain", opts)
    assert [t.name for t in stream.tasks] == ["lm-domains[reviews]", "lm-domains[news]", "lm-domains[requests]"]
    assert stream.info["lm_task"] == "lm" and [len(t.train) for t in stream.tasks] == [20, 20, 20]
    from forgetting.streams.text_local import read_uci

    amazon = [a.encode() for a in read_uci(data_dir / "uci_sentiment" / "amazon_cells_labelled.txt")[0]]
    # byte-level tokens are the UTF-8 bytes: each text is a source sentence (cut at the context)
    assert all(any(a.startswith(bytes(r[:-1])) for a in amazon) for r in stream.tasks[0].train.responses)
    clinc = json.loads((data_dir / "clinc150" / "data_full.json").read_text())
    queries = [q.encode() for q, _ in clinc["test"]]
    assert all(any(q.startswith(bytes(r[:-1])) for q in queries) for r in stream.tasks[2].test.responses)


def test_a_long_prompt_leaves_room_for_its_tasks_longest_choice():
    opts = {"data_dir": str(DATA / "olora"), "olora_tasks": ["agnews"], "tokenizer": tokenizer_maker("gpt2"),
            "max_seq_len": 48}
    stream = build_stream("olora", "domain", opts)
    data = stream.tasks[0].test
    longest = max(len(c) for c in data.choices)  # ' Science or Technology' and its end-of-text token
    assert longest > min(len(r) for r in data.responses)
    # every choice is scored after every prompt: the begin token, the prompt's end and the longest choice fit
    assert all(1 + len(p) + longest <= 48 for p in data.prompts)
    assert all(len(p) == 48 - 1 - longest for p in data.prompts)  # the prompts were cut at their beginning
