"""A one-off grid from the command line: ``forgetting-sweep --grid kl_lambda=0,0.5,1 --seeds 0-2 -- RUN OPTIONS``.

The options after ``--`` are ``forgetting-run``'s; each point of the grid (the product of every
``--grid``) and each seed is that command line with the point's flags added, parsed and resolved
by ``forgetting.run`` itself, so a grid run has the run id of the same run started by hand.
"""

from __future__ import annotations

import itertools
from typing import Sequence

from .config import RunConfig
from .errors import BadInput

# given to the sweep (before --), not to each run: they are the sweep's, the same for every run
SWEEP_OWNED = ("--results-dir", "--data-dir", "--device", "--log-to", "--force", "--resume", "--quiet")


def split_run_args(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """The sweep's own arguments, and the run options after the first ``--`` (None when there is none)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def parse_seeds(text: str) -> list[int]:
    """``0-2`` -> [0, 1, 2]; ``0,3,7`` -> [0, 3, 7]; ranges and lists mix (``0-2,5``)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            values = range(int(lo), int(hi) + 1) if sep else [int(lo)]
            if sep and int(hi) < int(lo):
                raise ValueError
            seeds += [s for s in values if s not in seeds]
    except ValueError:
        raise BadInput(f"--seeds: bad value {text!r}, allowed: seeds as 0-2 (a range), 0,3,7 (a list) or both") from None
    if not seeds or min(seeds) < 0:
        raise BadInput(f"--seeds: bad value {text!r}, allowed: seeds at least 0")
    return seeds


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``kl_lambda=0,0.5,1`` (or ``--kl-lambda=...``) -> ('--kl-lambda', ['0', '0.5', '1'])."""
    name, sep, values = text.partition("=")
    name = name.strip().lstrip("-")
    items = [v.strip() for v in values.split(",")]
    if not sep or not name or not all(items):
        raise BadInput(f"--grid: bad value {text!r}, allowed: OPTION=V1,V2,... such as kl_lambda=0,0.5,1")
    return "--" + name.replace("_", "-"), items


def grid_configs(axes: Sequence[str], seeds: str | None, run_args: Sequence[str], *, results_dir: str | None,
                 data_dir: str | None, device: str) -> list[RunConfig]:
    """One resolved config per grid point x seed, in order; BadInput names the first bad value. ``results_dir``
    None: each config's default, ``results/<its budget>`` (the sweep then picks one for all)."""
    from .cli import TOP_LEVEL, _preparse, build_parser, config_from_args, read_config_file

    for arg in run_args:
        if arg.split("=")[0] in SWEEP_OWNED:
            raise BadInput(f"{arg.split('=')[0]} after --: give it to the sweep, before --")
        if arg == "--seed" or arg.startswith("--seed="):
            if seeds is not None:
                raise BadInput("--seed after -- and --seeds: give the seeds once, with --seeds")
    parsed = [parse_axis(a) for a in axes]
    flags = [flag for flag, _ in parsed]
    for flag in flags:
        if flags.count(flag) > 1:
            raise BadInput(f"--grid: {flag} is given twice")
        if flag == "--seed":
            raise BadInput("--grid: give seeds with --seeds (e.g. --seeds 0-2)")
    seed_list = parse_seeds(seeds) if seeds is not None else [None]
    configs: list[RunConfig] = []
    for point in itertools.product(*(values for _, values in parsed)):
        for seed in seed_list:
            argv = [*run_args, *(x for flag, v in zip(flags, point) for x in (flag, v)),
                    *(["--seed", str(seed)] if seed is not None else []),
                    *(["--results-dir", results_dir] if results_dir is not None else []), "--device", device, "--quiet",
                    *(["--data-dir", data_dir] if data_dir else [])]
            chosen = _preparse(argv)  # as forgetting.run's main: a user's components declare their flags
            from_file = read_config_file(chosen.config) if chosen.config else {}
            for key in ("benchmark", "model", "method"):
                if getattr(chosen, key) is None:
                    setattr(chosen, key, from_file.get(key, TOP_LEVEL[key]))
            ns, unknown = build_parser(chosen).parse_known_args(argv)
            if unknown:
                raise BadInput(f"{' '.join(unknown)}: not an option of forgetting-run (see its --help)")
            config = config_from_args(ns)
            config.progress = False
            configs.append(config)
    return configs
