"""Time and memory of a 50-example-per-task sample from a large ``--text-file`` (issue #28).

    python benchmarks/text_file_sample.py write /tmp/big.csv --mb 1000   # the file, once
    HF_DATASETS_CACHE=/tmp/hf-cache /usr/bin/time -v python benchmarks/text_file_sample.py read /tmp/big.csv

``write``: a CSV of about ``--mb`` MB, three tasks, two labels, texts of 300-700 characters.
``read``: builds the text-file stream (``class``, BERT's tokenizer) with 50 training and 50 test examples
per task, as a run does, and prints the seconds it took; ``/usr/bin/time -v`` gives the peak RSS. The first
read of a file converts it to the ``datasets`` Arrow cache (in ``HF_DATASETS_CACHE``); a second one reuses it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write(path: Path, mb: int) -> None:
    rng = random.Random(0)
    words = [w * k for w in ("lovely", "dull", "match", "goal", "story", "acting", "price", "market") for k in (1, 2)]
    with path.open("w", encoding="utf-8") as f:
        f.write("task,text,label\n")
        i = 0
        while f.tell() < mb * 1_000_000:
            text = " ".join(rng.choice(words) for _ in range(rng.randrange(50, 90)))
            f.write(f'{["news", "reviews", "sport"][i % 3]},"{text}",{i % 2}\n')
            i += 1
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB, {i} rows")


def read(path: Path) -> None:
    from forgetting.registry import tokenizer_maker
    from forgetting.streams import build_stream

    start = time.perf_counter()
    stream = build_stream("text-file", "class", {"text_file": str(path), "tokenizer": tokenizer_maker("bert"),
                                                 "text_train_per_task": 50, "text_test_per_task": 50})
    took = time.perf_counter() - start
    print(f"{[(t.name, len(t.train), len(t.test)) for t in stream.tasks]}: {took:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", choices=["write", "read"])
    p.add_argument("path", type=Path)
    p.add_argument("--mb", type=int, default=1000)
    a = p.parse_args()
    write(a.path, a.mb) if a.job == "write" else read(a.path)


if __name__ == "__main__":
    main()
