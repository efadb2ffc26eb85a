"""Where a pretrained model comes from: a checkpoint directory or a hub id, checked the same way for
``--model bert:SOURCE`` and ``--model causal:SOURCE``, and loaded without transformers' progress bars."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from ..errors import BadInput

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def resolve_source(source: str, kind: str, example: str, scratch: str) -> str:
    """A checkpoint directory (checked for config.json) or a hub id; BadInput for anything else.

    ``kind`` is the model's name in ``--model KIND:SOURCE``, ``example`` a hub id of its family and
    ``scratch`` the model from scratch the message offers instead (``--model bert for a BERT from scratch``).
    """
    where = f"--model {kind}:{source}"
    if not source:
        raise BadInput(f"{where}: empty checkpoint source, allowed: a checkpoint directory or a hub id such as "
                       f"{example} (or {scratch})")
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"{where}: {str(path)!r} is a file, allowed: a checkpoint directory holding config.json, "
                           "the weights and the tokenizer files (what save_pretrained writes)")
        if not (path / "config.json").is_file():
            raise BadInput(f"{where}: no config.json in {str(path)!r}, allowed: a checkpoint directory holding "
                           "config.json, the weights and the tokenizer files (what save_pretrained writes)")
        return str(path)
    if HUB_ID.fullmatch(source) and ".." not in source:
        return source
    raise BadInput(f"{where}: no such directory, and not a hub id, allowed: a checkpoint directory or a hub id "
                   "(NAME or OWNER/NAME)")


def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged or foreign checkpoint raises: transformers' own kinds, and safetensors' error for
    a truncated or garbled weights file (it is not an OSError)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, SafetensorError)


# The files a tokenizer is saved as (any one suffices for AutoTokenizer): fast, then slow formats.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def check_tokenizer_files(resolved: str, where: str) -> None:
    """BadInput naming what is missing when a checkpoint directory holds no tokenizer (a model saved alone)."""
    path = Path(resolved)
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(f"{where}: no tokenizer files in {resolved!r} (none of {', '.join(TOKENIZER_FILES)}), "
                       "allowed: a checkpoint directory with its tokenizer saved beside the model "
                       "(tokenizer.save_pretrained(DIR))")


@contextlib.contextmanager
def quiet_loading():
    """No weight-loading progress bar from transformers (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
