"""--download from a fresh clone: no data directory yet, torchvision's own download code fetching (the
network call replaced by files written in the real format), then a run on what arrived; a failed download."""

from __future__ import annotations

import gzip
from urllib.error import URLError

import numpy as np
import pytest

from forgetting.errors import BadInput
from forgetting.registry import make_config
from forgetting.run import main as run_main
from forgetting.run import prepare, run_experiment
from forgetting.streams.mnist import load_arrays

N = {"train": 40, "t10k": 20}


def idx(magic: int, array: np.ndarray) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def arrays(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel says which image it is (so a mixed-up reader shows), labels 0-9 in turn."""
    n = N[prefix]
    offset = 0 if prefix == "train" else 100
    x = ((np.arange(n)[:, None, None] * 3 + offset + np.arange(28 * 28).reshape(28, 28)) % 256).astype(np.uint8)
    return x, (np.arange(n) % 10).astype(np.uint8)


def served(filename: str) -> bytes:
    """What the MNIST mirror would send for ``filename`` (e.g. ``t10k-labels-idx1-ubyte.gz``)."""
    prefix, kind = filename.split("-")[0], filename.split("-")[1]
    x, y = arrays(prefix)
    return gzip.compress(idx(0x0803, x) if kind == "images" else idx(0x0801, y))


@pytest.fixture
def network(monkeypatch):
    """torchvision's MNIST.download runs as written; only its fetch-and-extract call is replaced: ``ok`` writes
    the archive and extracts it with torchvision's own extract_archive, ``fail`` writes half an archive and
    raises as a dropped connection does."""
    import torchvision.datasets.mnist as tv_mnist
    from torchvision.datasets.utils import extract_archive

    state = {"mode": "ok", "calls": []}

    def fetch(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        state["calls"].append(url)
        archive = f"{download_root}/{filename}"
        data = served(filename)
        if state["mode"] == "fail":
            with open(archive, "wb") as f:
                f.write(data[: len(data) // 2])
            raise URLError("connection reset")
        with open(archive, "wb") as f:
            f.write(data)
        extract_archive(archive, extract_root or download_root)

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fetch)
    return state


def test_download_into_a_missing_data_dir_fetches_the_files_and_runs(network, tmp_path):
    data = tmp_path / "clone" / "data"  # neither folder exists yet
    cfg = make_config(benchmark="split-mnist", download=True, data_dir=str(data), epochs=1, hidden=[16],
                      batch_size=8, results_dir=str(tmp_path / "results"), progress=False, device="cpu")
    run_dir, rows, status = run_experiment(cfg)
    assert status == "complete" and sorted(rows["eval_task"].unique()) == [0, 1, 2, 3, 4]
    assert len(network["calls"]) == 4 and all("mnist" in u.lower() for u in network["calls"])
    assert sorted(p.name for p in (data / "MNIST" / "raw").iterdir() if not p.name.endswith(".gz")) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    # what was fetched is what the stream reads, pixel for pixel; the next run needs no network
    x_tr, x_te, y_tr, y_te, info = load_arrays(str(data))
    assert info["split"] == "official train/test"
    for (x, y), prefix in (((x_tr, y_tr), "train"), ((x_te, y_te), "t10k")):
        want_x, want_y = arrays(prefix)
        assert np.array_equal(x, want_x.astype(np.float32) / 255.0) and np.array_equal(y, want_y)
    network["mode"] = "fail"
    _, stream, _, _ = prepare(make_config(benchmark="split-mnist", download=True, data_dir=str(data), device="cpu"))
    assert len(stream) == 5 and len(network["calls"]) == 4  # the files are there: nothing fetched again


def test_a_failed_download_is_one_line_and_leaves_nothing(network, tmp_path, capsys):
    network["mode"] = "fail"
    data, results = tmp_path / "clone" / "data", tmp_path / "results"
    code = run_main(["--benchmark", "split-mnist", "--download", "--data-dir", str(data),
                     "--results-dir", str(results), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--download: could not fetch MNIST into" in err and str(data) in err and "connection reset" in err
    assert network["calls"]  # it did try
    assert not (tmp_path / "clone").exists() and not results.exists()  # no half archive read as data next time


def test_a_failed_download_keeps_what_was_there(network, tmp_path):
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    (data / "notes" / "readme.txt").write_text("mine")
    network["mode"] = "fail"
    with pytest.raises(BadInput, match="could not fetch MNIST"):
        load_arrays(str(data), download=True)
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == ["notes", "notes/readme.txt"]


def test_a_failed_cifar_download_says_why_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def fetch(url, download_root, filename=None, md5=None, **kwargs):
        (tmp_path / "clone" / "data" / filename).write_bytes(b"\x1f\x8b half an archive")
        raise URLError("connection reset")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fetch)
    data = tmp_path / "clone" / "data"
    data.mkdir(parents=True)  # torchvision writes into it; this test made it, so it stays
    with pytest.raises(BadInput, match=r"--download: could not fetch CIFAR10 into .*connection reset"):
        prepare(make_config(benchmark="split-cifar10", download=True, data_dir=str(data), device="cpu"))
    assert list(data.iterdir()) == []
