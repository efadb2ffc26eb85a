"""five-datasets, tested up to the network call: ``datasets.load_dataset`` is replaced by small local tables."""

from __future__ import annotations

import pytest

from forgetting.registry import tokenizer_maker
from forgetting.errors import BadInput
from forgetting.streams import build_stream
from forgetting.streams import hub


@pytest.fixture
def fake_hub(monkeypatch):
    """``load_dataset`` answering from small tables shaped like the hub's, recording what was asked."""
    import datasets

    calls = []

    def load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        src = next(s for s in hub.SOURCES.values() if s.hub_id == name)
        n = 40 if split == "train" else 20
        columns = {f: [f"{name} {split} {f} {i}" for i in range(n)] for f in src.text_fields}
        columns[src.label_field] = [i % len(src.classes) for i in range(n)]
        return datasets.Dataset.from_dict(columns)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_five_datasets_asks_the_hub_for_the_papers_order_and_samples(fake_hub):
    stream = build_stream("five-datasets", "class", {"tokenizer": tokenizer_maker("bert"), "max_seq_len": 16, "five_order": 1,
                                                     "text_train_per_task": 30, "text_test_per_task": 10})
    order = ["yelp", "agnews", "dbpedia", "amazon", "yahoo"]
    assert fake_hub == [(hub.SOURCES[n].hub_id, s) for n in order for s in ("train", "test")]
    assert [t.name for t in stream.tasks] == [f"five-datasets[{n}]" for n in order]
    assert [(len(t.train), len(t.test)) for t in stream.tasks] == [(30, 10)] * 5
    # the paper's 33 classes: Yelp and Amazon share their five ratings
    assert stream.layout.n_outputs == 4 + 5 + 14 + 10
    assert stream.tasks[3].outputs == stream.tasks[0].outputs == [0, 1, 2, 3, 4]
    assert stream.tasks[1].outputs == [5, 6, 7, 8] and stream.tasks[4].outputs == list(range(23, 33))
    assert stream.tasks[0].classes[0] == "rating/1 star" and stream.tasks[4].classes[5] == "yahoo/Sports"
    texts, labels = hub.load_split(hub.SOURCES["dbpedia"], "train", 40)  # all 40 rows: no sampling, file order
    assert texts[1] == "fancyzhx/dbpedia_14 train title 1 fancyzhx/dbpedia_14 train content 1"
    assert labels[:3] == ["dbpedia/Company", "dbpedia/EducationalInstitution", "dbpedia/Artist"]
    sampled, _ = hub.load_split(hub.SOURCES["dbpedia"], "train", 5)
    assert len(sampled) == 5 and sampled == hub.load_split(hub.SOURCES["dbpedia"], "train", 5)[0]  # seeded


def test_five_datasets_defaults_to_the_papers_sample_sizes(fake_hub, monkeypatch):
    asked = []
    real = hub.load_split
    monkeypatch.setattr(hub, "load_split", lambda src, split, n: asked.append(n) or real(src, split, n))
    stream = build_stream("five-datasets", "task", {"tokenizer": tokenizer_maker("bert"), "max_seq_len": 16, "five_order": 4})
    assert asked == [115_000, 7_600] * 5
    assert [t.name for t in stream.tasks][0] == "five-datasets[agnews]" and stream.layout.n_outputs == 38


def test_five_datasets_without_a_network_is_bad_input(monkeypatch):
    import datasets

    def offline(name, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BadInput) as e:
        build_stream("five-datasets", "class", {"tokenizer": tokenizer_maker("bert")})
    assert "cannot load 'Yelp/yelp_review_full' (train)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BadInput, match="allowed: class .* or task"):
        build_stream("five-datasets", "domain", {"tokenizer": tokenizer_maker("bert")})
