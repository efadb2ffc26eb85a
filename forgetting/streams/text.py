"""Text streams: labelled texts per task, tokenised by the model's own tokenizer, padded per batch.

A source (``text_local``, ``files``, ``hub``) reads its texts into ``RawTask``s; ``text_stream``
checks them, samples and splits them, lays out the outputs for the scenario, gets the
tokenizer from where the model comes from (``--model bert:SOURCE``, or counted on the training
texts for ``--model bert``), tokenises every split once with a batched ``datasets`` map whose
result is cached on disk, and gathers batches into dicts of padded tensors with
``DataCollatorWithPadding`` (each batch padded to its own longest text, not to the maximum).
Test splits are ordered by length, so that evaluation batches carry little padding.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import BadInput
from ..options import Option, defaults
from .base import HeadLayout, Task, TaskStream, layout_for
from .splits import shuffled_indices, stratified_indices

OPTIONS = [
    Option("max_seq_len", int, 128, "text streams: longest text in tokens, [CLS] and [SEP] included; longer texts "
           "are truncated", minimum=4, maximum=8192),
    Option("text_train_per_task", int, 0, "text streams: training examples per task, a stratified sample with a "
           "fixed seed (0: all; five-datasets: 115000, as in de Masson d'Autume et al. 2019)", minimum=0),
    Option("text_test_per_task", int, 0, "text streams: test examples per task, sampled likewise (0: all; "
           "five-datasets: 7600)", minimum=0),
]

SPLIT_SEED = 0
TEST_FRACTION = 0.2
CACHE_VERSION = 1  # bump when the encoding below changes, so old cache files are not reused


@dataclass(frozen=True)
class TokenizerMaker:
    """What a text model hands a text stream (``run.prepare`` makes it from the model): ``make(training texts)
    -> (tokenizer, source)``, called as the maker itself. A model whose objective is not classification
    (the causal LMs) also gives ``encode(name, scenario, raw_tasks, options, info) -> TaskStream``, which
    encodes the raw tasks for that objective instead of as classes, with its own task ``options``; its tasks
    then need no labels."""

    make: Callable
    encode: Callable | None = None
    options: dict = field(default_factory=dict)

    def __call__(self, texts):
        return self.make(texts)


def encodes_own_tasks(options: dict) -> bool:
    """Whether the stream's tokenizer maker encodes the tasks for an objective of its own (no labels needed)."""
    maker = options.get("tokenizer")
    return isinstance(maker, TokenizerMaker) and maker.encode is not None


def require_own_encoding(option: str, pairs: str, options: dict) -> None:
    """Prompt/response ``pairs`` (tasks, rows) are encoded by a causal LM's objective: refuse them for any other model."""
    if not encodes_own_tasks(options):
        raise BadInput(f"{option}: prompt/response {pairs} need a causal LM, allowed: --model gpt2 or "
                       "causal:PATH_OR_HUB_ID")


@dataclass
class RawTask:
    """One task's labelled texts as a source gives them; ``classes`` are its labels in output order."""

    name: str
    train_texts: list[str]
    train_labels: list[Any]
    test_texts: list[str]
    test_labels: list[Any]
    classes: list[Any]
    eval_only: bool = False  # measured, never trained: no training examples (it comes after the learned tasks)


@dataclass
class TextStream(TaskStream):
    """A task stream of texts, with the tokenizer its inputs were encoded with (the model's own)."""

    tokenizer: Any = None


class TextData:
    """Tokenised examples of one split of one task; a batch is a dict of tensors padded to its longest text."""

    def __init__(self, encoded, targets: Tensor, tokenizer):
        from transformers import DataCollatorWithPadding

        if len(encoded) != len(targets):
            raise ValueError(f"{len(encoded)} encoded texts but {len(targets)} targets")
        self.encoded = encoded  # a datasets.Dataset: input_ids, attention_mask (, token_type_ids)
        self.targets = targets.long()
        self.collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def gather(self, index: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        rows = self.encoded[index.tolist()]
        features = [dict(zip(rows.keys(), values)) for values in zip(*rows.values())]
        return dict(self.collator(features)), self.targets[index]

    def with_labels(self):
        """The tokenised split with a ``labels`` column (output indices), for the Hugging Face Trainer."""
        with _no_progress_bars():
            return self.encoded.flatten_indices().add_column("labels", self.targets.tolist())


# --- sampling and splitting -----------------------------------------------------------------
def _split(texts: list, labels: list, size: int, seed: int):
    """(kept texts, kept labels, other texts, other labels): ``size`` kept, stratified by label where possible
    (scikit-learn's ``train_test_split`` with ``train_size=size``, written out in ``splits``: its import costs a
    run seconds)."""
    try:
        keep, other = stratified_indices(labels, size, seed)
    except ValueError:  # a class too small to stratify: a plain random split
        keep, other = shuffled_indices(len(labels), size, seed)
    return [texts[i] for i in keep], [labels[i] for i in keep], [texts[i] for i in other], [labels[i] for i in other]


def split_train_test(name: str, texts: list, labels: list, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED):
    """A task's rows split into train and test parts, stratified, fixed by ``seed``."""
    if len(texts) < 2:
        raise BadInput(f"task {name!r} has {len(texts)} example(s): too few to split into train and test parts")
    n_test = max(1, round(len(texts) * test_fraction))
    return _split(texts, labels, len(texts) - n_test, seed)


def sample(texts: list, labels: list, n: int, seed: int = SPLIT_SEED):
    """``n`` of the examples (all when ``n`` is 0 or not smaller), stratified, fixed by ``seed``."""
    if n <= 0 or n >= len(texts):
        return list(texts), list(labels)
    a, ya, _, _ = _split(texts, labels, n, seed)
    return a, ya


# --- tokenisation ---------------------------------------------------------------------------
@contextlib.contextmanager
def _no_progress_bars():
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer encodes (vocabulary, normaliser, templates)."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set by the last call, not part of the tokenizer: left out
        state.pop("padding", None)
        return Hasher.hash([type(tokenizer).__name__, json.dumps(state, sort_keys=True)])
    return Hasher.hash([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()), tokenizer.init_kwargs])


def _encode(batch: dict, tokenizer, max_len: int) -> dict:
    return tokenizer(batch["text"], truncation=True, max_length=max_len)


def tokenise(texts: Sequence[str], tokenizer, max_len: int, cache_dir: str | Path | None = None):
    """The texts encoded (unpadded, truncated to ``max_len``) by a batched ``datasets`` map.

    The result is cached as an Arrow file named by a hash of the texts, the tokenizer and
    ``max_len`` (under ``cache_dir``, by default the ``datasets`` cache): a second run on the
    same data reads it back instead of tokenising again. ``datasets.disable_caching()`` turns
    the cache off.
    """
    import datasets
    from datasets.fingerprint import Hasher

    ds = datasets.Dataset.from_dict({"text": list(texts)})
    kwargs: dict[str, Any] = {}
    if datasets.is_caching_enabled():
        key = Hasher.hash([CACHE_VERSION, tokenizer_fingerprint(tokenizer), max_len, list(texts)])
        folder = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "forgetting_text"
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = dict(cache_file_name=str(folder / f"tokens-{key}.arrow"), load_from_cache_file=True,
                      new_fingerprint=key)
    with _no_progress_bars():
        return ds.map(_encode, batched=True, remove_columns=["text"],
                      fn_kwargs={"tokenizer": tokenizer, "max_len": max_len}, **kwargs)


def by_length(data: TextData) -> TextData:
    """The same examples ordered by length, so that evaluation batches carry little padding."""
    lengths = [len(ids) for ids in data.encoded["input_ids"]]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return TextData(data.encoded.select(order), data.targets[order], data.collator.tokenizer)


# --- the stream -----------------------------------------------------------------------------
def text_layout(scenario: str, classes: list[list[Any]]) -> tuple[HeadLayout, list[dict[Any, int]]]:
    """The layout, and per task a map from its labels to output indices.

    ``task``: a head per task; ``domain``: one shared head, a label's output its position in
    its task's class list; ``class``: one output per distinct label over all tasks (tasks that
    share a label, such as Yelp and Amazon star ratings, share its output).
    """
    if scenario == "class":
        union: list[Any] = []
        for cs in classes:
            union += [c for c in cs if c not in union]
        outs = [[union.index(c) for c in cs] for cs in classes]
        layout = HeadLayout("class", outs, len(union))
    else:
        layout = layout_for(scenario, len(classes), [len(cs) for cs in classes])
    maps = [dict(zip(cs, layout.task_outputs[t])) for t, cs in enumerate(classes)]
    return layout, maps


def _targets(task: RawTask, split: str, labels: list, to_output: dict) -> Tensor:
    for label in labels:
        if label not in to_output:
            raise BadInput(f"task {task.name!r}: {split} label {label!r} is outside the task's declared classes, "
                           f"allowed: {', '.join(map(str, task.classes))}")
    return torch.as_tensor([to_output[label] for label in labels], dtype=torch.long)


def text_stream(name: str, scenario: str, raw: list[RawTask], options: dict, info: dict | None = None,
                cache_dir: str | Path | None = None) -> TextStream:
    """The stream of ``raw`` tasks, tokenised by ``options['tokenizer']``: a function from the training
    texts to ``(tokenizer, source)`` that ``run.prepare`` makes from the model, so the data is encoded by
    the model's own tokenizer without the stream knowing models."""
    make_tokenizer = options.get("tokenizer")
    if make_tokenizer is None:
        raise BadInput(f"{name} is a text stream: it needs a model with a tokenizer (e.g. --model bert)")
    opts = {**defaults(OPTIONS), **options}
    for t in raw:
        if not t.classes:
            raise BadInput(f"task {t.name!r} of {name} has no classes")
        t.train_texts, t.train_labels = sample(t.train_texts, t.train_labels, opts["text_train_per_task"])
        t.test_texts, t.test_labels = sample(t.test_texts, t.test_labels, opts["text_test_per_task"])
        for split, texts in (("training", t.train_texts), ("test", t.test_texts)):
            if not texts and not (split == "training" and t.eval_only):
                raise BadInput(f"task {t.name!r} of {name} has no {split} examples")
    if encodes_own_tasks(opts):  # a causal LM's maker: language-modelling tasks (objectives/causal_lm/data.py)
        return make_tokenizer.encode(name, scenario, raw, opts, info)
    layout, maps = text_layout(scenario, [t.classes for t in raw])
    targets = [(_targets(t, "training", t.train_labels, m), _targets(t, "test", t.test_labels, m))
               for t, m in zip(raw, maps)]
    max_len = opts["max_seq_len"]
    tokenizer, source = make_tokenizer([x for t in raw for x in t.train_texts])
    tasks = []
    for i, (t, (y_train, y_test)) in enumerate(zip(raw, targets)):
        train = TextData(tokenise(t.train_texts, tokenizer, max_len, cache_dir), y_train, tokenizer)
        test = by_length(TextData(tokenise(t.test_texts, tokenizer, max_len, cache_dir), y_test, tokenizer))
        tasks.append(Task(i, f"{name}[{t.name}]", train, test, list(t.classes), list(layout.task_outputs[i])))
    info = {**(info or {}), "max_seq_len": max_len, "tokenizer_source": source}
    return TextStream(name, scenario, tasks, layout, "text", (), info=info, tokenizer=tokenizer)


def data_folder(options: dict, folder: str, required: Sequence[str], what: str) -> Path:
    """``DATA_DIR/folder`` (or ``DATA_DIR`` itself) holding the ``required`` files; BadInput otherwise."""
    data_dir = options.get("data_dir")
    if data_dir is None:
        raise BadInput(f"--data-dir: {what} needs a data directory holding {folder}/")
    root = Path(data_dir)
    for candidate in (root / folder, root):
        if all((candidate / f).is_file() for f in required):
            return candidate
    raise BadInput(f"--data-dir: no {folder}/ with {', '.join(required)} under {str(root)!r}")
