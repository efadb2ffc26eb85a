"""``python -m forgetting.run``: one experiment, base task then fine-tuning, ending in a forgetting table.

The work is split by job: ``cli`` (flags, ``--config``, the report, ``main``), ``preparing`` (device,
determinism, the stream, model and methods built and checked before any file is written), ``running``
(claim, recorder, resume, ``run_experiment``) and ``api`` (``experiment``, the notebook call). This module
is the command's entry point and keeps their names, and, called, is the notebook API:
``forgetting.run(method="kl", kl_lambda=0.5)``.
"""

from __future__ import annotations

import sys

from .api import experiment
from .cli import (TOP_LEVEL, _preparse, build_parser, config_from_args, format_report, gather_from_args, main,
                  read_config_file, setup_logging)
from .preparing import (build_stream_for, check_two_classes, determinism_settings, deterministic_algorithms, prepare,
                        resolve_device, seed_everything, warn_one_class_tasks)
from .running import Recorder, ensure_writable, ray_node, run_experiment

__all__ = ["Recorder", "TOP_LEVEL", "build_parser", "build_stream_for", "check_two_classes", "config_from_args", "determinism_settings",
           "deterministic_algorithms", "ensure_writable", "experiment", "format_report", "gather_from_args", "main",
           "prepare", "ray_node", "read_config_file", "resolve_device", "run_experiment", "seed_everything",
           "setup_logging", "warn_one_class_tasks", "_preparse"]


class _CallableModule(type(sys)):
    """``forgetting.run`` is this module (``python -m forgetting.run``) and, called, the notebook API."""

    def __call__(self, benchmark: str = "split-digits", method: str = "kl", **options):
        return experiment(benchmark, method, **options)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
