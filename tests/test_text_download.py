"""--download of the text streams from a fresh clone: the hub calls replaced by fakes that serve data in the
hub's shapes (as tests/test_download.py does for MNIST), the files written where MNIST's go, content-hashed
into the run id, a run on what arrived; a failed fetch is one line and leaves nothing."""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("datasets")
import datasets  # noqa: E402
import huggingface_hub  # noqa: E402

from forgetting.errors import BadInput  # noqa: E402
from forgetting.registry import make_config, tokenizer_maker  # noqa: E402
from forgetting.streams import build_stream, data_fingerprint  # noqa: E402
from forgetting.streams.digest import digests  # noqa: E402

UCI = {"amazon_cells_labelled.txt": "good phone\t1\rbad battery\t0\r" * 10,
       "yelp_labelled.txt": "great food\t1\rcold soup\t0\r" * 10,
       "imdb_labelled.txt": "fine film  \t1\nboring plot  \t0\n" * 10}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The hub: hf_hub_download serves the UCI files, load_dataset AG News and CLINC150 in their hub shapes."""
    state = {"fail": False, "calls": []}

    def hf_hub_download(repo_id, filename, repo_type=None, **kw):
        state["calls"].append((repo_id, filename))
        if state["fail"]:
            raise OSError("connection reset")
        if (repo_id, repo_type) != ("IsaacDev/sentiment-labelled-sentences", "dataset") or filename not in UCI:
            raise huggingface_hub.errors.RepositoryNotFoundError(f"{repo_type} {repo_id}/{filename} not on this hub")
        path = tmp_path / "hub" / filename
        path.parent.mkdir(exist_ok=True)
        path.write_text(UCI[filename])
        return str(path)

    def load_dataset(name, config=None, split=None, **kw):
        state["calls"].append((name, config, split))
        if state["fail"]:
            raise ConnectionError("the hub is unreachable")
        if (name, config) not in (("fancyzhx/ag_news", None), ("clinc/clinc_oos", "plus")):  # the ids checked
            raise datasets.exceptions.DatasetNotFoundError(f"{name} (config {config}) is not on this hub")
        if name == "fancyzhx/ag_news":  # text: the CSV's title and description joined by a space (its script)
            texts = [f"Title {i}  about {t} story\\body" for i in range(10) for t in ("war", "goals", "stocks", "chips")]
            feats = datasets.Features({"text": datasets.Value("string"),
                                       "label": datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])})
            return datasets.Dataset.from_dict({"text": texts, "label": [0, 1, 2, 3] * 10}, features=feats)
        from forgetting.streams import text_download

        domains = json.loads((pathlib.Path(text_download.__file__).with_name("clinc150_domains.json")).read_text())
        names = [i for intents in domains.values() for i in intents] + ["oos"]
        feats = datasets.Features({"text": datasets.Value("string"), "intent": datasets.ClassLabel(names=names)})
        split_of = lambda k: datasets.Dataset.from_dict(  # noqa: E731  k examples of each intent, oos included
            {"text": [f"q{i}" for i in range(k * len(names))], "intent": [i % len(names) for i in range(k * len(names))]},
            features=feats)
        return datasets.DatasetDict({"train": split_of(2), "validation": split_of(1), "test": split_of(1)})

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return state


def test_uci_download_writes_the_files_into_the_cache_and_hashes_them(hub, tmp_path):
    stream = build_stream("uci-sentiment", "domain", {"download": True, "data_dir": None, "tokenizer": tokenizer_maker("bert")})
    folder = tmp_path / "cache" / "forgetting" / "uci_sentiment"
    assert sorted(p.name for p in folder.iterdir()) == sorted(UCI)
    assert all((folder / n).read_bytes() == text.encode() for n, text in UCI.items())  # byte for byte
    assert [t.name for t in stream.tasks] == ["uci-sentiment[amazon]", "uci-sentiment[yelp]", "uci-sentiment[imdb]"]
    assert sum(len(t.train) + len(t.test) for t in stream.tasks) == 60
    fingerprint = data_fingerprint("uci-sentiment", {"download": True, "data_dir": None})
    assert fingerprint == digests(folder / n for n in ("amazon_cells_labelled.txt", "yelp_labelled.txt",
                                                         "imdb_labelled.txt"))
    calls = len(hub["calls"])
    build_stream("uci-sentiment", "domain", {"download": True, "data_dir": None, "tokenizer": tokenizer_maker("bert")})
    assert len(hub["calls"]) == calls  # there already: nothing fetched again


def test_ag_news_and_clinc_download_in_the_local_layout(hub, tmp_path):
    data = tmp_path / "data"
    ag = build_stream("ag-news", "class", {"download": True, "data_dir": str(data), "tokenizer": tokenizer_maker("bert")})
    assert (data / "ag_news" / "classes.txt").read_text().split("\n")[:4] == ["World", "Sports", "Business", "Sci/Tech"]
    assert [t.name for t in ag.tasks] == ["ag-news[World+Sports]", "ag-news[Business+Sci/Tech]"]
    assert sum(len(t.train) + len(t.test) for t in ag.tasks) == 40
    from forgetting.streams.text_local import read_ag_csv

    texts, labels = read_ag_csv(data / "ag_news" / "test.csv", 4)  # the local reader sees the hub's rows
    hub_rows = [(f"Title {i}  about {t} story\\body", k + 1) for i in range(10) for k, t in
                enumerate(("war", "goals", "stocks", "chips"))]
    assert list(zip(texts, labels)) == [(" ".join(t.replace("\\", " ").split()), k) for t, k in hub_rows]
    assert ("fancyzhx/ag_news", None, "test") in hub["calls"] and ("clinc/clinc_oos", "plus", None) not in hub["calls"]
    clinc = build_stream("clinc150", "class", {"download": True, "data_dir": str(data), "tokenizer": tokenizer_maker("bert")})
    assert ("clinc/clinc_oos", "plus", None) in hub["calls"]
    full = json.loads((data / "clinc150" / "data_full.json").read_text())
    assert set(full) == {"train", "val", "test"} and all(i != "oos" for _, i in full["train"])
    assert len(full["train"]) == 2 * 150 and len(clinc.tasks) == len(json.loads((data / "clinc150" / "domains.json").read_text()))


def test_a_failed_text_download_is_one_line_and_leaves_nothing(hub, tmp_path):
    hub["fail"] = True
    data = tmp_path / "data"
    with pytest.raises(BadInput, match="--download: could not fetch ag-news") as e:
        build_stream("ag-news", "domain", {"download": True, "data_dir": str(data), "tokenizer": tokenizer_maker("bert")})
    assert "\n" not in str(e.value) and "hub is unreachable" in str(e.value)
    assert not data.exists()


def test_a_run_with_download_on_a_public_clone(hub, tmp_path):
    from forgetting.run import run_experiment

    config = make_config(benchmark="uci-sentiment", model="bert", method="kl", epochs=1, batch_size=16,
                         model_options={"bert_layers": 1, "bert_hidden": 16, "bert_heads": 2},
                         stream_options={"download": True, "max_seq_len": 16}, device="cpu", progress=False,
                         results_dir=str(tmp_path / "results"), data_dir=None)
    run_dir, rows, status = run_experiment(config)
    assert status == "complete" and set(rows["eval_task"]) == {0, 1, 2}


def test_a_sweep_names_what_it_skipped_and_the_command_that_fetches_it(hub, tmp_path, monkeypatch):
    """The suite skips uci-sentiment (no data); its summary says so and gives the one command that gets it;
    that command (--download) fetches the data, and the runs' ids hash the files fetched."""
    from conftest import run_cli  # noqa: F401  (the project's path set-up)
    from forgetting import sweep
    from forgetting.streams import default_data_dir  # noqa: F401

    empty = tmp_path / "data"  # a data directory without uci_sentiment/ (the default one, as on a public clone)
    empty.mkdir()
    monkeypatch.setenv("FORGETTING_DATA_DIR", str(empty))
    suite = tmp_path / "s.toml"
    suite.write_text('''
[defaults]
epochs = 1
seeds = [0]
[[experiment]]
name = "digits"
benchmark = "split-digits"
scenarios = ["domain"]
model_options = { hidden = [16] }
[[experiment.method]]
name = "naive"
[[experiment]]
name = "sentiment"
benchmark = "uci-sentiment"
scenarios = ["domain"]
model = "bert"
model_options = { bert_layers = 1, bert_hidden = 16, bert_heads = 2 }
stream_options = { max_seq_len = 16 }
if_data_missing = "skip"
[[experiment.method]]
name = "naive"
''')
    import contextlib
    import io

    err = io.StringIO()
    out = io.StringIO()
    args = [str(suite), "--results-dir", str(tmp_path / "r"), "--workers", "1", "--no-report", "--quiet"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        assert sweep.main(args) == 0
    assert "skipped 1 experiment whose data is missing: 'sentiment' (uci-sentiment)" in out.getvalue()
    assert f"python -m forgetting.sweep {suite} --download" in out.getvalue()
    listed = io.StringIO()
    with contextlib.redirect_stdout(listed), contextlib.redirect_stderr(io.StringIO()):
        assert sweep.main([*args, "--download", "--list"]) == 0
    assert len(listed.getvalue().splitlines()) == 2 and (empty / "uci_sentiment" / "yelp_labelled.txt").is_file()
    planned = sweep.plan([str(suite)], str(tmp_path / "r"), str(empty), "cpu", download=True)
    sentiment = next(p for p in planned if p.config.benchmark == "uci-sentiment")
    assert sentiment.config.data_fingerprint  # the fetched files' digests are in the run id
