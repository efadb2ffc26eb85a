"""Optional parts of the install: a feature that needs one says which extra to install, in one line."""

from __future__ import annotations

from importlib.util import find_spec

from .errors import BadInput

EXTRAS = {  # extra -> the top-level modules it brings
    "text": ("transformers", "datasets", "tokenizers"),
    "vision": ("torchvision",),
    "avalanche": ("avalanche", "torchvision", "quadprog"),
    "ray": ("ray",),
    "slurm": ("submitit",),
    "search": ("optuna",),
    "lm": ("transformers", "tokenizers", "peft", "trl"),
    "track": ("tensorboard", "mlflow", "wandb"),
}


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """BadInput naming the extra when one of its modules (or of ``modules``, the ones ``what`` needs) is
    missing (checked without importing them)."""
    missing = [m for m in (modules or EXTRAS[extra]) if find_spec(m) is None]
    if missing:
        raise BadInput(f"{what} needs the [{extra}] extra ({', '.join(missing)} not installed): "
                       f"pip install 'forgetting[{extra}]'")
