"""forgetting: a continual-learning experiment harness for measuring and holding back forgetting."""

from .penalty import kl_penalty, train_epoch_kl_reg

__all__ = ["kl_penalty", "train_epoch_kl_reg"]
__version__ = "0.1.0"
