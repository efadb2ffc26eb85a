"""ResNet-18 for image streams: the reduced one of GEM / Mammoth for 32x32 inputs, or torchvision's.

``reduced`` (default) is the network of Lopez-Paz & Ranzato (2017, GEM) and Buzzega et al.
(2020, Mammoth): a 3x3 stride-1 stem without max-pooling, four stages of two BasicBlocks with
``resnet_width`` x (1, 2, 4, 8) channels (GEM: 20; Mammoth: 64), global average pooling and one
linear layer holding every head. ``torchvision`` is ``torchvision.models.resnet18`` (7x7 stem and
max-pooling, 64 channels), for larger images. Both use BatchNorm; the frozen teacher is a copy in
eval mode, so its running statistics never move. ``features`` and ``head`` are the feature
extractor and the classifier (iCaRL's nearest-mean classifier needs the split).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..extras import require
from ..options import Option

INPUTS = "tensor"

OPTIONS = [
    Option("resnet_variant", str, "reduced", "reduced: GEM/Mammoth's ResNet-18 for 32x32 images; torchvision: "
           "torchvision's ResNet-18 for larger ones", choices=("reduced", "torchvision")),
    Option("resnet_width", int, 20, "channels of the reduced ResNet-18's first stage (GEM: 20, Mammoth: 64)", minimum=1),
]


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, plus the input (projected by a 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """GEM / Mammoth's ResNet-18 (``width`` channels in the first stage; GEM's "reduced" one has 20)."""

    def __init__(self, in_channels: int, n_outputs: int, width: int = 20, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        layers: list[nn.Module] = [conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU()]
        c_in = width
        for stage, n in enumerate(blocks):
            c_out = width * 2 ** stage
            for b in range(n):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]  # = avg_pool2d(out, 4) on 32x32 inputs
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class TorchvisionResNet18(nn.Module):
    """torchvision's ResNet-18 (random initialisation), split into ``features`` and ``head``."""

    def __init__(self, in_channels: int, n_outputs: int):
        super().__init__()
        require("vision", "--resnet-variant torchvision")
        from torchvision.models import resnet18

        net = resnet18(num_classes=n_outputs)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.head = net.fc
        net.fc = nn.Identity()
        self.features = net

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build(stream, options: dict, source: str | None = None) -> nn.Module:
    if source is not None:
        raise ValueError(f"resnet18 takes no checkpoint source, got {source!r}")
    if stream.input_kind != "tensor" or len(stream.input_shape) != 3:
        raise ValueError(f"resnet18 needs image inputs (channels, height, width), stream {stream.name!r} gives "
                         f"{stream.input_kind} of shape {tuple(stream.input_shape)}")
    channels = stream.input_shape[0]
    if options["resnet_variant"] == "torchvision":
        if options["resnet_width"] != 20:
            raise ValueError("--resnet-width applies to --resnet-variant reduced only (torchvision's has 64 channels)")
        return TorchvisionResNet18(channels, stream.layout.n_outputs)
    return ReducedResNet18(channels, stream.layout.n_outputs, options["resnet_width"])
