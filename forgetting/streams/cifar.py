"""split-CIFAR-10 (5 tasks of 2 classes) and split-CIFAR-100 (10 or 20 tasks), read through torchvision.

The files are torchvision's (and the CIFAR authors') ``cifar-10-batches-py`` / ``cifar-100-python``
folders under ``--data-dir``, or fetched there with ``--download`` (the archive's md5 is checked
then). Each file is a Python pickle, and unpickling a file runs whatever code it names, so every
file is checked against the official archive's before it is read (``OFFICIAL``: SHA-256 for
CIFAR-10; for CIFAR-100 the md5 sums torchvision publishes, no SHA-256 list of its files being at
hand) and an unknown one is refused; ``--trust-data`` reads a user's own variant (a subset, a
re-export) unchecked. Shapes and labels are checked in any case. Classes go to tasks in their
numeric order, as in Mammoth and FACIL (split-CIFAR-10: airplane/automobile, bird/cat, ...).

Images are kept as uint8 and normalised per batch with the data set's channel means and
standard deviations. ``--augment`` applies the usual train-time augmentation (random 32x32 crop
of the image zero-padded by 4, horizontal flip with probability 1/2, both before normalisation,
as torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip) drawn from torch's global
generator (seeded by the run, saved in checkpoints); the stream then says its inputs are not
deterministic, and the KL teacher cache switches itself off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from ..errors import BadInput
from ..extras import require
from .base import Task, TaskStream, layout_for
from .local import data_root, downloading

MEAN = {"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}
STD = {"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}
PAD = 4
SUBSET_SEED = 0

# The files of the official archives (cifar-10-python.tar.gz, md5 c58f30108f718f92721af3b95e74349a;
# cifar-100-python.tar.gz, md5 eb9058c3a382ffc7106e4002c42a8d85): (algorithm, digest) per file.
OFFICIAL = {
    "cifar10": {
        "data_batch_1": ("sha256", "54636561a3ce25bd3e19253c6b0d8538147b0ae398331ac4a2d86c6d987368cd"),
        "data_batch_2": ("sha256", "766b2cef9fbc745cf056b3152224f7cf77163b330ea9a15f9392beb8b89bc5a8"),
        "data_batch_3": ("sha256", "0f00d98ebfb30b3ec0ad19f9756dc2630b89003e10525f5e148445e82aa6a1f9"),
        "data_batch_4": ("sha256", "3f7bb240661948b8f4d53e36ec720d8306f5668bd0071dcb4e6c947f78e9682b"),
        "data_batch_5": ("sha256", "d91802434d8376bbaeeadf58a737e3a1b12ac839077e931237e0dcd43adcb154"),
        "test_batch": ("sha256", "f53d8d457504f7cff4ea9e021afcf0e0ad8e24a91f3fc42091b8adef61157831"),
        "batches.meta": ("sha256", "f962466ef690d46b226450fb9aadc74ba4bc64a76aa526b5827fe4bc5c7125cb"),
    },
    "cifar100": {  # torchvision.datasets.CIFAR100's md5 sums
        "train": ("md5", "16019d7e3df5f24257cddd939b257f8d"),
        "test": ("md5", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
        "meta": ("md5", "7973b15100ade9c7d40fb424638fde48"),
    },
}
_digests: dict[tuple, str] = {}


def _digest(path: Path, algorithm: str) -> str:
    """The file's digest, kept per process by (path, size, mtime): a sweep builds the stream once per run."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, algorithm)
    if key not in _digests:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def check_official(kind: str, folder: Path, names: list[str]) -> None:
    """BadInput unless each of ``names`` in ``folder`` that exists is the official archive's file (a missing
    one is reported by the reader); checked before any is unpickled."""
    for name in names:
        path = folder / name
        if not path.exists():
            continue
        if not path.is_file():
            raise BadInput(f"--data-dir: {str(path)!r} is not a regular file, allowed: the {kind.upper()} files")
        algorithm, expected = OFFICIAL[kind][name]
        if _digest(path, algorithm) != expected:
            raise BadInput(f"--data-dir: {str(path)!r} is not the official {kind.upper()} file ({algorithm} differs); "
                           "a CIFAR file is a pickle, which can run code when read, so only the official files are "
                           "read: pass --trust-data to read your own variant")


@functools.cache
def readers() -> dict:
    """torchvision's CIFAR readers with the per-file md5 checks off (the download still checks the archive),
    and each data set's number of classes."""
    require("vision", "the split-CIFAR streams (torchvision reads the files)")
    from torchvision.datasets import CIFAR10, CIFAR100

    def local(base):
        return type(f"Local{base.__name__}", (base,), {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        })

    return {"cifar10": (local(CIFAR10), 10), "cifar100": (local(CIFAR100), 100)}


def read_split(kind: str, root, train: bool, download: bool = False,
               trust: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images uint8 [N, 3, 32, 32], labels int64 [N] and class names of one split, or BadInput.

    Unless ``trust``, the files are checked against the official ones before they are unpickled."""
    reader, n_classes = readers()[kind]
    folder = Path(root) / reader.base_folder
    names = [n for n, _ in (reader.train_list if train else reader.test_list)] + [reader.meta["filename"]]
    try:
        if download and not all((folder / n).exists() for n in names):
            import torchvision.datasets.cifar as tv_cifar

            # torchvision's download, which checks the archive's md5; nothing is unpickled before the check below
            tv_cifar.download_and_extract_archive(reader.url, str(root), filename=reader.filename, md5=reader.tgz_md5)
        if not trust:
            check_official(kind, folder, names)
        ds = reader(str(root), train=train, download=False)
    except RuntimeError as e:
        if "not found" in str(e):
            files = ", ".join(n for n, _ in (*reader.train_list, *reader.test_list)) + ", " + reader.meta["filename"]
            raise BadInput(f"--data-dir: no {kind.upper()} files ({files}) in {folder} (or use --download)") from None
        raise BadInput(f"malformed {kind.upper()} files in {folder}: {e}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise BadInput(f"malformed {kind.upper()} files in {folder}: {type(e).__name__}: {e}") from None
    x = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    y = np.asarray(ds.targets, dtype=np.int64)
    if len(x) != len(y):
        raise BadInput(f"malformed {kind.upper()} files in {folder}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        bad = int(y.max() if y.max() >= n_classes else y.min())
        raise BadInput(f"malformed {kind.upper()} labels in {folder}: label {bad} outside 0-{n_classes - 1}")
    return x, y, list(ds.classes)


def random_crop_flip(images: Tensor, pad: int = PAD, generator: torch.Generator | None = None) -> Tensor:
    """Each image [C, H, W] cropped at a random offset from its zero-padded copy, flipped with probability 1/2."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = left[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]


class ImageData:
    """uint8 images held in memory; a batch is normalised (and, for training with ``augment``, augmented)."""

    def __init__(self, images: Tensor, targets: Tensor, mean, std, augment: bool = False):
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = self.images[index]
        if self.augment:
            x = random_crop_flip(x)
        return (x.float() / 255.0 - self.mean) / self.std, self.targets[index]


def _subset(y: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of ``per_class`` examples of each class (all where fewer), drawn with a fixed seed, in file order."""
    rng = np.random.default_rng(SUBSET_SEED)
    keep = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def cifar_stream(name: str, kind: str, scenario: str, options: dict, n_tasks: int) -> TaskStream:
    download = bool(options.get("download", False))
    root = data_root(options.get("data_dir"), download, kind.upper())
    with downloading(root, kind.upper()) if download else contextlib.nullcontext():
        trust = bool(options.get("trust_data", False))
        x_tr, y_tr, classes = read_split(kind, root, train=True, download=download, trust=trust)
    x_te, y_te, _ = read_split(kind, root, train=False, trust=trust)
    if options.get("train_per_class"):
        keep = _subset(y_tr, options["train_per_class"])
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    n_classes = readers()[kind][1]
    per_task = n_classes // n_tasks
    groups = [list(range(t * per_task, (t + 1) * per_task)) for t in range(n_tasks)]
    layout = layout_for(scenario, n_tasks, [per_task] * n_tasks)
    augment = bool(options.get("augment", False))
    images_tr, images_te = torch.from_numpy(x_tr), torch.from_numpy(x_te)
    tasks = []
    for t, group in enumerate(groups):
        outs = layout.task_outputs[t]
        to_output = torch.full((n_classes,), -1, dtype=torch.long)
        to_output[group] = torch.as_tensor(outs)

        def part(images, y, aug):
            keep = torch.from_numpy(np.isin(y, group))
            return ImageData(images[keep], to_output[torch.from_numpy(y)[keep]], MEAN[kind], STD[kind], aug)

        label = "/".join(classes[c] for c in group) if len(group) <= 2 else f"{group[0]}-{group[-1]}"
        tasks.append(Task(t, f"{name}[{label}]", part(images_tr, y_tr, augment), part(images_te, y_te, False),
                          list(group), outs))
    info = {"source": f"torchvision {reader_name(kind)} files in {root / readers()[kind][0].base_folder}",
            "train_images": int(len(y_tr)), "test_images": int(len(y_te)), "augment": augment}
    return TaskStream(name, scenario, tasks, layout, "tensor", (3, 32, 32), deterministic_inputs=not augment, info=info)


def reader_name(kind: str) -> str:
    return {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[kind]


def build_split10(scenario: str, options: dict) -> TaskStream:
    return cifar_stream("split-cifar10", "cifar10", scenario, options, 5)


def build_split100(scenario: str, options: dict) -> TaskStream:
    return cifar_stream("split-cifar100", "cifar100", scenario, options, int(options.get("n_tasks", 10)))
