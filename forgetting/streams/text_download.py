"""``--download`` of the local text streams (uci-sentiment, ag-news, clinc150) from the Hugging Face hub.

Each fetch writes the files in the layout ``text_local`` reads (``uci_sentiment/*.txt``,
``ag_news/test.csv`` + ``classes.txt``, ``clinc150/data_full.json`` + ``domains.json``) into the
data directory, or the download cache (``streams.local.download_cache``, where MNIST and CIFAR go)
when none is given; from then on they are local files like any others, content-hashed into the run
id. A failed fetch removes what it wrote and says why in one line (``streams.local.downloading``).

Sources (the nearest hub copies of the originals; ids, configs, columns and label encodings checked
against the hub's dataset cards and the loading scripts they replaced, see docs/DATA.md):

- uci-sentiment: the three ``*_labelled.txt`` files of the UCI archive, byte for byte, from a hub
  dataset repository that holds them as uploaded (``UCI_REPO``), through ``huggingface_hub``;
- ag-news: ``AG_NEWS`` (Zhang et al. 2015; the hub's canonical ``ag_news``, now under its owner's
  name), its test split, through ``datasets``: columns ``text`` (title and description joined by a
  space: written as the description, with an empty title, which the reader joins back the same way)
  and ``label`` (0-3: World, Sports, Business, Sci/Tech, the CSV's class 1-4 minus one);
- clinc150: ``CLINC`` config ``plus`` (Larson et al. 2019; the hub's ``clinc_oos``) through
  ``datasets``: columns ``text`` and ``intent`` (a class label whose names include ``oos``), splits
  train, validation, test; out-of-scope queries left out (as the stream does); the grouping of its
  150 intents into 10 domains is not on the hub and ships with this package
  (``clinc150_domains.json``, from the original repository's domains.json).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from ..errors import BadInput
from ..extras import require
from .local import data_root, downloading

UCI_REPO = "IsaacDev/sentiment-labelled-sentences"
AG_NEWS = "fancyzhx/ag_news"
AG_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
CLINC = "clinc/clinc_oos"
SOURCES = {"uci_sentiment": f"hf://datasets/{UCI_REPO}", "ag_news": f"hf://datasets/{AG_NEWS} (test split)",
           "clinc150": f"hf://datasets/{CLINC} (config plus)"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


UCI_FILES = ["amazon_cells_labelled.txt", "yelp_labelled.txt", "imdb_labelled.txt"]


def fetch_uci(folder: Path) -> None:
    from huggingface_hub import hf_hub_download

    for name in UCI_FILES:
        got = hf_hub_download(repo_id=UCI_REPO, filename=name, repo_type="dataset")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(got, folder / name)


def fetch_ag_news(folder: Path) -> None:
    import datasets

    test = datasets.load_dataset(AG_NEWS, split="test")
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for row in test:
        writer.writerow([int(row["label"]) + 1, "", str(row["text"]).replace("\n", "\\n")])
    _write(folder / "classes.txt", "\n".join(AG_CLASSES) + "\n")
    _write(folder / "test.csv", out.getvalue())


def fetch_clinc(folder: Path) -> None:
    import datasets

    domains = json.loads((Path(__file__).with_name("clinc150_domains.json")).read_text(encoding="utf-8"))
    splits = datasets.load_dataset(CLINC, "plus")
    data = {}
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        split = splits[theirs]
        names = split.features["intent"].names
        data[ours] = [[row["text"], names[row["intent"]]] for row in split if names[row["intent"]] != "oos"]
    _write(folder / "domains.json", json.dumps(domains, indent=1))
    _write(folder / "data_full.json", json.dumps(data))


FETCH = {"uci_sentiment": fetch_uci, "ag_news": fetch_ag_news, "clinc150": fetch_clinc}


def ensure(options: dict, folder: str, required: list[str], what: str) -> dict:
    """With ``download`` on: ``required`` under the data directory (or the download cache), fetched there
    when missing; the options with ``data_dir`` pointing where they are. Without it: ``options`` as given."""
    if not options.get("download"):
        return options
    root = data_root(options.get("data_dir"), True, what)
    if not any(all((c / f).is_file() for f in required) for c in (root / folder, root)):
        require("text", f"--download of {what}")
        with downloading(root, what):
            try:
                FETCH[folder](root / folder)
            except BadInput:
                raise
            except Exception as e:  # the hub unreachable, a dataset renamed: one line, nothing left behind
                raise RuntimeError(f"{SOURCES[folder]}: {type(e).__name__}: {e}") from None
    return {**options, "data_dir": str(root)}
