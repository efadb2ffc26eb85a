"""forgetting: a continual-learning experiment harness for measuring and holding back forgetting."""

__all__ = ["kl_penalty", "train_epoch_kl_reg"]
__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use, so that reading results (forgetting.plot) does not pay for torch.
    if name in __all__:
        from . import penalty

        return getattr(penalty, name)
    raise AttributeError(f"module 'forgetting' has no attribute {name!r}")
