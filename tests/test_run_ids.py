"""Run ids of today's configs stay what they were before the objective seam (issue #23): the README's commands
and every run of the suites in benchmarks/. The expected values were computed by the code at commit 85563f2."""

from __future__ import annotations

import hashlib

import pytest

from conftest import ROOT
from forgetting.run import TOP_LEVEL, _preparse, build_parser, config_from_args
from forgetting.suite import load_suite

# The README's commands (placeholders such as DIR and $M left out), with their ids at 85563f2.
README = {
    "": "e26977350ca9",
    "--kl-lambda 0.5": "426211dabec5",
    "--benchmark ag-news --scenario class --model bert --bert-layers 2": "f9c709093220",
    "--benchmark uci-sentiment --model gpt2 --max-seq-len 64 --lr 3e-3 --epochs 12 --batch-size 8 "
    "--text-train-per-task 100 --text-test-per-task 100 --method kl --kl-lambda 1": "8245e2406c80",
    "--benchmark uci-sentiment --model gpt2 --lm-task completion": "30d893b1000d",
    "--benchmark uci-sentiment --model gpt2 --lm-task completion --lm-eval-at boundaries": "30d893b1000d",  # default
    "--method avalanche-ewc --av-ewc-lambda 100": "f8bde4beca23",
    "--benchmark split-cifar10 --model resnet18 --method der --scenario class --optimizer sgd --lr 0.03 --augment "
    "--epochs 50": "c14c1806efc0",
}
# Each suite: (number of runs, sha1 of their ids joined by spaces, first 16 hex digits), at 85563f2.
SUITES = {
    # issue #25: its 18 LM runs are lm_domains_study.toml's now (were lm_study.toml's; was 761779573bd49aa5)
    "default.toml": (310, "a1f5ffd95b207706"),
    "lm_study.toml": (18, "7b74afe9c40ae44c"),
    "lm_domains_study.toml": (18, "aa0c12ea376033ca"),  # added by issue #25 (its ids as first computed)
    "lm_completion_study.toml": (9, "f5d45bfbf36d8754"),  # added by issue #25
    "quick.toml": (53, "275b5b79f6088852"),  # issue #25: its 2 LM runs from lm_domains_study.toml (was d41a1b980f4f5547)
    # new with issue #24 (pg runs hash the pg options), ids as first written: 21 runs "75bae32d4e97ece1", then 3 runs
    # of oracle SFT appended (--sft-targets oracle), the 21 unchanged ("9043edb0b605511c"); then, on purpose (issue #24
    # part 3, matched accuracy), every run stops at 95 % new-task accuracy (--stop-at-accuracy 0.95, --eval-every 10)
    # with 10 epochs as the cap and --finetune-lr 1e-3: all 24 ids new
    "rl_razor.toml": (24, "be08f70c3d0c5369"),
    "rl_razor_lm.toml": (9, "2fa16af5a68fd8db"),  # new with issue #24 (the causal-LM study), ids as first written
    "split_cifar100_facil.toml": (18, "a21e90a369304572"),
    "split_cifar_mammoth.toml": (42, "50dd9d983ede00d5"),
}


def run_id(args: str, data_dir) -> str:
    argv = [*args.split(), "--data-dir", str(data_dir)]
    chosen = _preparse(argv)
    for key in ("benchmark", "model", "method"):
        if getattr(chosen, key) is None:
            setattr(chosen, key, TOP_LEVEL[key])
    return config_from_args(build_parser(chosen).parse_args(argv)).run_id


@pytest.mark.parametrize("args", list(README))
def test_the_readme_commands_keep_their_run_ids(args, data_dir):
    assert run_id(args, data_dir) == README[args]


def test_every_suite_run_keeps_its_run_id(data_dir):
    assert sorted(p.name for p in (ROOT / "benchmarks").glob("*.toml")) == sorted(SUITES)
    for name, (count, digest) in SUITES.items():
        ids = [c.run_id for c in load_suite(ROOT / "benchmarks" / name).runs("results", str(data_dir))]
        assert (len(ids), hashlib.sha1(" ".join(ids).encode()).hexdigest()[:16]) == (count, digest), name
