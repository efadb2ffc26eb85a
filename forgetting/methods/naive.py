"""``naive``: plain fine-tuning, the lower bound every method is measured against."""

from .base import Naive as Method

__all__ = ["Method"]
