"""split-CIFAR streams on tiny files in the real on-disk format; --download without a data directory."""

from __future__ import annotations

import gzip
import itertools
import json

import numpy as np
import pytest
import torch

from cifar_files import write_cifar10, write_cifar100
from forgetting.errors import BadInput
from forgetting.methods.kl import Method as KL
from forgetting.registry import make_config
from forgetting.run import prepare, run_experiment
from forgetting.streams import build_stream
from forgetting.streams.cifar import MEAN, STD, random_crop_flip

CIFAR10_MEAN, CIFAR10_STD = np.array(MEAN["cifar10"]), np.array(STD["cifar10"])


def stream10(root, scenario="class", **options):
    """The stream of the tiny files written here: not the official ones, so read with trust_data."""
    return build_stream("split-cifar10", scenario, {"data_dir": str(root), "trust_data": True, **options})


def as_image(row: np.ndarray) -> np.ndarray:
    """One 3072-byte row as [3, 32, 32] by hand: R plane, G plane, B plane, each row-major."""
    return np.stack([row[c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)])


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_cifar10_reads_the_real_format_into_five_tasks(tmp_path, scenario):
    written = write_cifar10(tmp_path)
    stream = stream10(tmp_path, scenario)
    assert len(stream) == 5 and stream.input_shape == (3, 32, 32) and stream.deterministic_inputs
    assert [t.classes for t in stream.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert stream.tasks[0].name == "split-cifar10[airplane/automobile]"
    for t, task in enumerate(stream.tasks):
        for split, data in (("train", task.train), ("test", task.test)):
            x_all, y_all = written[f"x_{split}"], written[f"y_{split}"]
            rows = np.flatnonzero(np.isin(y_all, task.classes))  # file order kept within a task
            x, y = data.gather(torch.arange(len(data)))
            assert len(data) == len(rows)
            expected = np.stack([as_image(x_all[r]) for r in rows]) / 255.0
            expected = (expected - CIFAR10_MEAN[:, None, None]) / CIFAR10_STD[:, None, None]
            assert np.allclose(x.numpy(), expected, atol=1e-5)
            classes = y_all[rows]
            want = {"class": classes, "domain": classes - 2 * t, "task": classes}[scenario]
            assert y.tolist() == want.tolist()
    assert stream.layout.n_outputs == {"class": 10, "task": 10, "domain": 2}[scenario]


@pytest.mark.parametrize("n_tasks", [10, 20])
def test_cifar100_in_10_or_20_tasks(tmp_path, n_tasks):
    written = write_cifar100(tmp_path)
    stream = build_stream("split-cifar100", "class", {"data_dir": str(tmp_path), "n_tasks": n_tasks,
                                                       "trust_data": True})
    per = 100 // n_tasks
    assert len(stream) == n_tasks
    assert [t.classes for t in stream.tasks] == [list(range(k * per, (k + 1) * per)) for k in range(n_tasks)]
    x, y = stream.tasks[1].test.gather(torch.arange(len(stream.tasks[1].test)))
    rows = np.flatnonzero(np.isin(written["y_test"], range(per, 2 * per)))
    assert y.tolist() == written["y_test"][rows].tolist()
    mean, std = np.array(MEAN["cifar100"]), np.array(STD["cifar100"])
    first = (as_image(written["x_test"][rows[0]]) / 255.0 - mean[:, None, None]) / std[:, None, None]
    assert np.allclose(x[0].numpy(), first, atol=1e-5)


def test_cifar100_task_count_is_checked():
    with pytest.raises(BadInput, match="--n-tasks: bad value 7"):
        make_config(benchmark="split-cifar100", n_tasks=7, data_dir="/nonexistent", download=True)


def test_train_per_class_keeps_that_many_per_class(tmp_path):
    write_cifar10(tmp_path, per_class_train=5)
    stream = stream10(tmp_path, train_per_class=2)
    for task in stream.tasks:
        _, y = task.train.gather(torch.arange(len(task.train)))
        assert sorted(y.tolist()) == sorted(task.classes * 2)
        assert len(task.test) == 4  # the test sets are whole


def test_augmentation_is_a_padded_crop_and_flip_of_the_image():
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)  # no zero pixels: padding shows
    out = random_crop_flip(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    seen = set()
    for n in range(len(images)):
        matches = [(i, j, f) for i, j, f in itertools.product(range(9), range(9), (False, True))
                   if torch.equal(out[n], (lambda c: c.flip(-1) if f else c)(padded[n, :, i:i + 32, j:j + 32]))]
        assert len(matches) == 1, f"image {n} is not one crop/flip of its padded copy"
        seen.add(matches[0])
    assert len(seen) > 20 and {f for *_, f in seen} == {False, True}  # offsets and flips vary


def test_augmented_stream_augments_training_data_only_and_turns_the_teacher_cache_off(tmp_path):
    write_cifar10(tmp_path)
    stream = stream10(tmp_path, augment=True)
    plain = stream10(tmp_path)
    assert not stream.deterministic_inputs and plain.deterministic_inputs
    idx = torch.arange(len(stream.tasks[0].train))
    torch.manual_seed(0)
    a, _ = stream.tasks[0].train.gather(idx)
    b, _ = stream.tasks[0].train.gather(idx)
    assert not torch.equal(a, b)  # a new crop and flip at every visit
    assert torch.equal(stream.tasks[0].test.gather(idx[:4])[0], plain.tasks[0].test.gather(idx[:4])[0])
    trainer = type("T", (), {"stream": stream, "previous_model": torch.nn.Linear(1, 1).eval()})()
    assert "augmentation" in KL.cache_blocker(trainer)
    trainer.stream = plain
    assert KL.cache_blocker(trainer) is None


def test_augment_changes_the_run_id_download_does_not(tmp_path):
    base = make_config(benchmark="split-cifar10", data_dir=str(tmp_path))
    assert make_config(benchmark="split-cifar10", data_dir=str(tmp_path), augment=True).run_id != base.run_id
    assert make_config(benchmark="split-cifar10", data_dir=str(tmp_path), download=True).run_id == base.run_id


def test_a_run_on_split_cifar10_files(tmp_path):
    write_cifar10(tmp_path / "data")
    cfg = make_config(benchmark="split-cifar10", scenario="class", method="kl", data_dir=str(tmp_path / "data"),
                      results_dir=str(tmp_path / "r"), epochs=1, hidden=[16], augment=True, progress=False,
                      device="cpu", trust_data=True)
    run_dir, rows, status = run_experiment(cfg)
    assert status == "complete" and len(rows) == 5 + 5 * 5
    config = json.loads((run_dir / "config.json").read_text())
    assert config["stream"]["options"] == {"scenario": "class", "class_outputs": "seen", "augment": True,
                                           "train_per_class": 0}


@pytest.mark.parametrize("damage, named", [
    (lambda f: (f / "test_batch").unlink(), "no CIFAR10 files"),
    (lambda f: (f / "data_batch_3").write_bytes(b"not a pickle"), "malformed CIFAR10"),
    (lambda f: (f / "batches.meta").write_bytes(pickle_of({"names": []})), "malformed CIFAR10"),
])
def test_damaged_files_are_bad_input(tmp_path, damage, named):
    write_cifar10(tmp_path)
    damage(tmp_path / "cifar-10-batches-py")
    with pytest.raises(BadInput, match=named):
        stream10(tmp_path)


def pickle_of(obj) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=2)


def test_label_outside_the_classes_is_bad_input(tmp_path):
    import pickle

    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][0] = 12
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(BadInput, match="label 12 outside 0-9"):
        stream10(tmp_path)


def test_cli_missing_cifar_folder_is_one_line(cli, tmp_path):
    proc = cli("forgetting.run", "--benchmark", "split-cifar10", "--data-dir", str(tmp_path),
               "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cifar-10-batches-py" in proc.stderr
    assert not (tmp_path / "r").exists()


# --- --download without a data directory: into the download cache, not refused first ----------------


@pytest.fixture
def no_shared(monkeypatch):
    """A user without ../shared/data beside the clone (resolve fills that default when it exists: the fake
    downloads below would otherwise write into it, and the refusal would not happen)."""
    import forgetting.streams

    monkeypatch.delenv("FORGETTING_DATA_DIR", raising=False)
    monkeypatch.setattr(forgetting.streams, "default_data_dir", lambda: None)


def test_cifar_download_without_data_dir_goes_to_the_cache(tmp_path, monkeypatch, no_shared):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, download_root, md5))
        write_cifar10(download_root)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    cfg = make_config(benchmark="split-cifar10", download=True, data_dir=None, device="cpu", trust_data=True)
    _, stream, _, _ = prepare(cfg)
    assert len(stream) == 5
    [(url, root, md5)] = calls  # once: the test split finds the files the first call wrote
    assert url.endswith("cifar-10-python.tar.gz") and md5 == tv_cifar.CIFAR10.tgz_md5  # the archive is checked
    assert root == str(tmp_path / "cache" / "forgetting")


def test_mnist_download_without_data_dir_goes_to_the_cache(tmp_path, monkeypatch, no_shared):
    import torchvision.datasets

    def idx(magic, dims, data):
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
        return head + bytes(data)

    class FakeMNIST:
        roots = []

        def __init__(self, root, train=True, download=False):
            FakeMNIST.roots.append(root)
            raw = tmp_path / "cache" / "forgetting" / "MNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            prefix = "train" if train else "t10k"
            n = 20
            (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(0x0803, [n, 28, 28], bytes(n * 784))))
            (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(0x0801, [n], [i % 10 for i in range(n)])))

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    cfg = make_config(benchmark="split-mnist", download=True, data_dir=None, device="cpu")
    _, stream, _, _ = prepare(cfg)
    assert FakeMNIST.roots == [str(tmp_path / "cache" / "forgetting")] * 2
    assert stream.info["split"] == "official train/test" and len(stream) == 5


def test_mnist_without_data_dir_or_download_is_refused(no_shared):
    with pytest.raises(BadInput, match="--data-dir: MNIST streams need a data directory"):
        prepare(make_config(benchmark="split-mnist", data_dir=None, device="cpu"))


def test_augmented_run_resumes_with_the_same_crops(tmp_path, monkeypatch):
    """Augmentation draws from torch's global generator, which task-boundary checkpoints save."""
    from conftest import resumed_equals_whole

    write_cifar10(tmp_path / "data")
    cfg = make_config(benchmark="split-cifar10", method="kl", augment=True, epochs=1, hidden=[16], batch_size=4,
                      data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "cut"), progress=False, device="cpu",
                      trust_data=True)
    resumed_equals_whole(cfg, tmp_path, monkeypatch)


# --- files that are pickles: only the official ones are read without --trust-data ---------------------
class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "pwned"))


def test_an_unknown_cifar_file_is_refused_before_it_is_unpickled(tmp_path, cli):
    """A CIFAR batch file is a pickle: a planted one ran its payload when the stream was built."""
    import pickle

    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(BadInput, match=r"data_batch_1' is not the official CIFAR10 file \(sha256 differs\).*--trust-data"):
        build_stream("split-cifar10", "class", {"data_dir": str(tmp_path)})
    assert not marker.exists()
    proc = cli("forgetting.run", "--benchmark", "split-cifar10", "--data-dir", str(tmp_path),
               "--results-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--trust-data" in proc.stderr and not marker.exists() and not (tmp_path / "r").exists()


def test_the_official_digests_are_what_the_check_compares(tmp_path, monkeypatch):
    """A file whose digest is in the official list is read without --trust-data (the list patched to
    hold the tiny files' digests, as the real files' are)."""
    import hashlib

    from forgetting.streams import cifar

    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    table = {p.name: ("sha256", hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}
    assert set(table) == set(cifar.OFFICIAL["cifar10"])  # every file torchvision reads has its digest
    from torchvision.datasets import CIFAR100

    assert set(cifar.OFFICIAL["cifar100"]) == {n for n, _ in CIFAR100.train_list + CIFAR100.test_list} | {"meta"}
    monkeypatch.setitem(cifar.OFFICIAL, "cifar10", table)
    assert len(build_stream("split-cifar10", "class", {"data_dir": str(tmp_path)})) == 5
