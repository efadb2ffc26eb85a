"""A multilayer perceptron: the model of the split-MNIST literature (784-400-400-10)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from ..options import Option

INPUTS = "tensor"

OPTIONS = [
    Option("hidden", int, [400, 400], "hidden layer sizes of the MLP", minimum=1, nargs="+"),
    Option("dropout", float, 0.2, "dropout probability after each hidden layer of the MLP", minimum=0.0, maximum=0.95),
]


class MLP(nn.Module):
    """Flatten, then Linear-ReLU-Dropout blocks, then one output layer holding every head."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden: Sequence[int] = (400, 400), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(math.prod(input_shape))
        for h in hidden:
            # dropout 0 is the identity (torch returns its input): nn.Identity skips the call, same numbers
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build(stream, options: dict, source: str | None = None) -> MLP:
    if source is not None:
        raise ValueError(f"the MLP takes no checkpoint source, got {source!r}")
    if stream.input_kind != "tensor":
        raise ValueError(f"the MLP needs tensor inputs, stream {stream.name!r} gives {stream.input_kind}")
    return MLP(stream.input_shape, stream.layout.n_outputs, options["hidden"], options["dropout"])
