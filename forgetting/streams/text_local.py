"""The local text streams of ``--data-dir``: uci-sentiment, ag-news and clinc150.

- ``uci-sentiment`` (Kotzias et al. 2015): amazon, then yelp, then imdb, 1,000 sentences each in
  one binary label space (0 negative, 1 positive): a domain-incremental stream. Each domain is
  split 80/20 into train and test parts, stratified, with a fixed seed.
- ``ag-news`` (Zhang et al. 2015): two tasks of two topics, (World, Sports) then (Business,
  Sci/Tech). ``test.csv`` alone (7,600 articles) is split 80/20 per task; with ``train.csv``
  beside it, that is the training set and ``test.csv`` the test set.
- ``clinc150`` (Larson et al. 2019): ten tasks, one per domain of ``domains.json`` in its order,
  each of its 15 intents; the official train and test splits (out-of-scope queries left out).
- ``lm-domains``: three kinds of text that differ, for language models: reviews (uci-sentiment's
  amazon sentences, labels negative/positive), then news (ag-news articles, their four topics), then
  assistant requests (clinc150's queries, labelled by their ten domains), each as its source splits it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..errors import BadInput
from .digest import digests
from .text import RawTask, data_folder, split_train_test, text_stream
from .text_download import ensure

UCI_DOMAINS = [("amazon", "amazon_cells_labelled.txt"), ("yelp", "yelp_labelled.txt"), ("imdb", "imdb_labelled.txt")]
UCI_CLASSES = [0, 1]
AG_TASKS = [(1, 2), (3, 4)]  # class indices of classes.txt (1-based): World, Sports | Business, Sci/Tech
_CSV_QUOTED = re.compile(r'"((?:[^"]|"")*)"')


def read_text(path: Path) -> str:
    """A file's text: UTF-8, else Latin-1 (imdb_labelled.txt is not UTF-8)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_uci(path: Path) -> tuple[list[str], list[int]]:
    """``sentence<TAB>label`` lines with any line endings (the files use CR, and CR LF mixed)."""
    texts, labels = [], []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise BadInput(f"{path}:{lineno}: no tab between sentence and label, allowed: sentence<TAB>0 or 1")
        sentence, label = line.rsplit("\t", 1)
        label = label.strip()
        if label not in ("0", "1"):
            raise BadInput(f"{path}:{lineno}: label {label!r} is outside the declared classes, allowed: 0, 1")
        quoted = _CSV_QUOTED.fullmatch(sentence.strip())
        texts.append(quoted.group(1).replace('""', '"') if quoted else sentence.strip())
        labels.append(int(label))
    return texts, labels


def build_uci(scenario: str, options: dict):
    options = ensure(options, "uci_sentiment", [f for _, f in UCI_DOMAINS], "uci-sentiment")
    folder = data_folder(options, "uci_sentiment", [f for _, f in UCI_DOMAINS], "uci-sentiment")
    raw = []
    for name, filename in UCI_DOMAINS:
        texts, labels = read_uci(folder / filename)
        x_tr, y_tr, x_te, y_te = split_train_test(name, texts, labels)
        raw.append(RawTask(name, x_tr, y_tr, x_te, y_te, list(UCI_CLASSES)))
    info = {"source": str(folder), "split": "each domain split 80/20 stratified, seed 0",
            # causal LMs, completion form: the prompt and the answers' words
            "lm_template": "Review: {text}\nSentiment:", "label_names": {0: "negative", 1: "positive"}}
    return text_stream("uci-sentiment", scenario, raw, options, info)


def read_ag_csv(path: Path, n_classes: int) -> tuple[list[str], list[int]]:
    """``"class","title","description"`` rows; a backslash in the text stands for a line break."""
    texts, labels = [], []
    try:
        rows = list(csv.reader(read_text(path).splitlines()))
    except csv.Error as e:
        raise BadInput(f"{path}: malformed CSV: {e}") from None
    for lineno, row in enumerate(rows, 1):
        if not row:
            continue
        if len(row) != 3:
            raise BadInput(f"{path}:{lineno}: {len(row)} fields, allowed: 3 (class, title, description)")
        if not row[0].strip().isdigit() or not 1 <= int(row[0]) <= n_classes:
            raise BadInput(f"{path}:{lineno}: class {row[0]!r} is outside the declared classes, allowed: 1-{n_classes}")
        texts.append(" ".join(f"{row[1]} {row[2]}".replace("\\", " ").split()))
        labels.append(int(row[0]))
    return texts, labels


def build_ag_news(scenario: str, options: dict):
    options = ensure(options, "ag_news", ["test.csv", "classes.txt"], "ag-news")
    folder = data_folder(options, "ag_news", ["test.csv", "classes.txt"], "ag-news")
    names = [c.strip() for c in read_text(folder / "classes.txt").splitlines() if c.strip()]
    x_all, y_all = read_ag_csv(folder / "test.csv", len(names))
    train = read_ag_csv(folder / "train.csv", len(names)) if (folder / "train.csv").is_file() else None
    raw = []
    for group in AG_TASKS:
        classes = [names[c - 1] for c in group]
        name = "+".join(classes)

        def pick(xs, ys):
            keep = [i for i, y in enumerate(ys) if y in group]
            return [xs[i] for i in keep], [names[ys[i] - 1] for i in keep]

        x, y = pick(x_all, y_all)
        if train is None:
            x_tr, y_tr, x_te, y_te = split_train_test(name, x, y)
        else:
            (x_tr, y_tr), (x_te, y_te) = pick(*train), (x, y)
        raw.append(RawTask(name, x_tr, y_tr, x_te, y_te, classes))
    split = "train.csv / test.csv" if train is not None else "test.csv split 80/20 per task, stratified, seed 0"
    return text_stream("ag-news", scenario, raw, options, {"source": str(folder), "split": split})


def build_clinc(scenario: str, options: dict):
    options = ensure(options, "clinc150", ["data_full.json", "domains.json"], "clinc150")
    folder = data_folder(options, "clinc150", ["data_full.json", "domains.json"], "clinc150")
    return text_stream("clinc150", scenario, build_clinc_raw(options), options,
                       {"source": str(folder), "split": "official train/test, out-of-scope left out"})


def build_clinc_raw(options: dict) -> list[RawTask]:
    """CLINC150's domains as raw tasks (official splits, out-of-scope left out)."""
    folder = data_folder(options, "clinc150", ["data_full.json", "domains.json"], "clinc150")
    try:
        data = json.loads(read_text(folder / "data_full.json"))
        domains = json.loads(read_text(folder / "domains.json"))
    except json.JSONDecodeError as e:
        raise BadInput(f"malformed CLINC150 JSON under {folder}: {e}") from None
    if not isinstance(domains, dict) or not all(k in data for k in ("train", "test")):
        raise BadInput(f"malformed CLINC150 files under {folder}: need domains.json as domain -> intents and "
                       "data_full.json with train and test splits")
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    rows: dict[str, dict[str, tuple[list, list]]] = {d: {"train": ([], []), "test": ([], [])} for d in domains}
    for split in ("train", "test"):
        for i, pair in enumerate(data[split]):
            text, intent = pair
            if intent not in domain_of:
                raise BadInput(f"{folder / 'data_full.json'}: {split}[{i}] intent {intent!r} is outside the declared "
                               "classes of domains.json")
            rows[domain_of[intent]][split][0].append(text)
            rows[domain_of[intent]][split][1].append(intent)
    return [RawTask(d, *rows[d]["train"], *rows[d]["test"], list(intents)) for d, intents in domains.items()]


def build_lm_domains(scenario: str, options: dict):
    """Reviews, then news, then requests: one task per source (the sources' own readers and splits)."""
    uci = data_folder(options, "uci_sentiment", [f for _, f in UCI_DOMAINS], "lm-domains")
    texts, labels = read_uci(uci / UCI_DOMAINS[0][1])
    names = {0: "negative", 1: "positive"}
    x_tr, y_tr, x_te, y_te = split_train_test("reviews", texts, [names[y] for y in labels])
    raw = [RawTask("reviews", x_tr, y_tr, x_te, y_te, ["negative", "positive"])]
    ag = data_folder(options, "ag_news", ["test.csv", "classes.txt"], "lm-domains")
    topics = [c.strip() for c in read_text(ag / "classes.txt").splitlines() if c.strip()]
    x, y = read_ag_csv(ag / "test.csv", len(topics))
    x_tr, y_tr, x_te, y_te = split_train_test("news", x, [topics[c - 1] for c in y])
    raw.append(RawTask("news", x_tr, y_tr, x_te, y_te, topics))
    clinc = build_clinc_raw(options)  # a request's label: its domain (10), so completion has few answers
    raw.append(RawTask("requests", [t for r in clinc for t in r.train_texts], [r.name for r in clinc for _ in r.train_texts],
                       [t for r in clinc for t in r.test_texts], [r.name for r in clinc for _ in r.test_texts],
                       [r.name for r in clinc]))
    info = {"source": f"{uci}, {ag}, clinc150", "split": "reviews and news 80/20 stratified (seed 0); requests: "
            "clinc150's official split"}
    return text_stream("lm-domains", scenario, raw, options, info)


# The files each stream reads, for the run id (``streams.data_fingerprint``: a builder's own first).
_FILES = {build_uci: ("uci_sentiment", [f for _, f in UCI_DOMAINS]),
          build_ag_news: ("ag_news", ["test.csv", "classes.txt", "train.csv"]),
          build_clinc: ("clinc150", ["data_full.json", "domains.json"])}


def _lm_domains_fingerprint(options: dict) -> dict:
    out = {}
    for build in (build_uci, build_ag_news, build_clinc):
        out.update(build.data_fingerprint(options))
    return out


def _fingerprint(folder: str, files: list[str]):
    def data_fingerprint(options: dict) -> dict:
        if options.get("download") and options.get("data_dir") is None:  # where --download puts them
            from .local import download_cache

            options = {**options, "data_dir": str(download_cache())}
        try:
            found = data_folder(options, folder, files[:2] if folder == "ag_news" else files, folder)
        except BadInput:
            return {}  # the builder says what is missing
        return digests(found / f for f in files if (found / f).is_file())
    return data_fingerprint


for _build, (_folder, _files) in _FILES.items():
    _build.data_fingerprint = _fingerprint(_folder, _files)
build_lm_domains.data_fingerprint = _lm_domains_fingerprint
