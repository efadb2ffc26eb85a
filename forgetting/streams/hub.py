"""``five-datasets``: the text-classification stream of de Masson d'Autume et al. 2019, from the hub.

AG News (4 topics), Yelp (5 star ratings), Amazon (5 star ratings), DBpedia (14 classes) and
Yahoo! Answers (10 topics), read with ``datasets.load_dataset`` (a network, or a filled
Hugging Face cache, is needed). As in the paper, 115,000 training and 7,600 test examples are
sampled from each (``--text-train-per-task``, ``--text-test-per-task``), and the datasets come
in one of the paper's four orders (``--five-order``). Yelp and Amazon share their five rating
classes: in the ``class`` scenario that makes the paper's 33 outputs; ``task`` gives each
dataset its own head; ``domain`` does not apply (the label spaces differ in size).

Amazon: the paper used Zhang et al.'s Amazon Review Full, which the hub holds under no official
name; this reads the English part of the Multilingual Amazon Reviews Corpus (same 1-5 stars,
5,000 test reviews, so its test part is smaller than 7,600).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput, first_line
from ..options import Option
from .text import RawTask, text_stream

OPTIONS = [
    Option("five_order", int, 1, "five-datasets: the dataset order of de Masson d'Autume et al. 2019 "
           "(1: yelp agnews dbpedia amazon yahoo; 2: dbpedia yahoo agnews amazon yelp; "
           "3: yelp yahoo amazon dbpedia agnews; 4: agnews yelp amazon yahoo dbpedia)", choices=(1, 2, 3, 4)),
]

PAPER_TRAIN, PAPER_TEST = 115_000, 7_600
SAMPLE_SEED = 0
STARS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    text_fields: tuple[str, ...]  # joined with a space
    label_field: str
    group: str  # labels are named group/class: Yelp and Amazon share the group "rating"
    classes: tuple[str, ...]


SOURCES = {
    "agnews": HubSource("fancyzhx/ag_news", ("text",), "label", "news", ("World", "Sports", "Business", "Sci/Tech")),
    "yelp": HubSource("Yelp/yelp_review_full", ("text",), "label", "rating", tuple(STARS)),
    "amazon": HubSource("SetFit/amazon_reviews_multi_en", ("text",), "label", "rating", tuple(STARS)),
    "dbpedia": HubSource("fancyzhx/dbpedia_14", ("title", "content"), "label", "dbpedia", (
        "Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation", "Building",
        "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork")),
    "yahoo": HubSource("community-datasets/yahoo_answers_topics", ("question_title", "question_content",
                       "best_answer"), "topic", "yahoo", (
        "Society & Culture", "Science & Mathematics", "Health", "Education & Reference", "Computers & Internet",
        "Sports", "Business & Finance", "Entertainment & Music", "Family & Relationships", "Politics & Government")),
}
ORDERS = {
    1: ("yelp", "agnews", "dbpedia", "amazon", "yahoo"),
    2: ("dbpedia", "yahoo", "agnews", "amazon", "yelp"),
    3: ("yelp", "yahoo", "amazon", "dbpedia", "agnews"),
    4: ("agnews", "yelp", "amazon", "yahoo", "dbpedia"),
}


def load_split(src: HubSource, split: str, n: int) -> tuple[list[str], list[str]]:
    """``n`` examples of one split (a seeded shuffle, then the first ``n``): texts and group/class labels."""
    import datasets

    try:
        ds = datasets.load_dataset(src.hub_id, split=split)
    except Exception as e:  # no network, an unknown id, a changed schema: one line for the user
        raise BadInput(f"--benchmark five-datasets: cannot load {src.hub_id!r} ({split}) from the Hugging Face hub "
                       f"(it needs a network or a filled cache): {first_line(e)}") from None
    missing = [f for f in (*src.text_fields, src.label_field) if f not in ds.column_names]
    if missing:
        raise BadInput(f"--benchmark five-datasets: {src.hub_id!r} has no column {missing[0]!r}, "
                       f"columns: {', '.join(ds.column_names)}")
    if n < len(ds):
        ds = ds.shuffle(seed=SAMPLE_SEED).select(range(n))
    columns = [ds[f] for f in src.text_fields]
    texts = [" ".join(str(p) for p in parts if p) for parts in zip(*columns)]
    labels = []
    for y in ds[src.label_field]:
        if not 0 <= int(y) < len(src.classes):
            raise BadInput(f"--benchmark five-datasets: {src.hub_id!r} label {y!r} is outside the declared classes, "
                           f"allowed: 0-{len(src.classes) - 1}")
        labels.append(f"{src.group}/{src.classes[int(y)]}")
    return texts, labels


def build(scenario: str, options: dict):
    if scenario == "domain":
        raise BadInput("--scenario: five-datasets has label spaces of different sizes (4, 5, 14, 10), allowed: "
                       "class (the paper's setting) or task")
    order = ORDERS[options.get("five_order", 1)]
    n_train = options.get("text_train_per_task") or PAPER_TRAIN
    n_test = options.get("text_test_per_task") or PAPER_TEST
    raw = []
    for name in order:
        src = SOURCES[name]
        x_tr, y_tr = load_split(src, "train", n_train)
        x_te, y_te = load_split(src, "test", n_test)
        raw.append(RawTask(name, x_tr, y_tr, x_te, y_te, [f"{src.group}/{c}" for c in src.classes]))
    info = {"source": "Hugging Face hub: " + ", ".join(SOURCES[n].hub_id for n in order),
            "split": f"{n_train} train / {n_test} test sampled per dataset, seed {SAMPLE_SEED}"}
    return text_stream("five-datasets", scenario, raw, {**options, "text_train_per_task": n_train,
                                                        "text_test_per_task": n_test}, info)
