"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", section 4.2).

depth = 6n + 2: a 3×3 stem conv with 16 filters, three stages ``layer1..layer3`` of n
basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has stride 2),
global average pooling and the linear head ``fc``. ResNet-20/32/56 have n = 3/5/9.

Names as recipes see them: stem ``conv1``/``bn1``; blocks ``layer{s}.{i}`` with
``conv1``, ``bn1``, ``conv2``, ``bn2`` and ``shortcut``. Li et al. 2017 prune only each
block's first conv, selected by ``layer*.*.conv1``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ._common import check_choice, check_input_shape, check_num_classes, init_weights

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016): subsample by ``stride``, append zero channels.

    Parameter-free: ``x[:, :, ::s, ::s]`` followed by ``out_channels - in_channels`` zero
    feature maps after the existing ones.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; any input channels and size (adaptive pooling).

    Args:
        depth: 6n + 2 with n ≥ 1 (20, 32, 56, ...).
        input_shape: (channels, height, width).
        num_classes: outputs of ``fc``.
        shortcut: ``"A"`` (default, the paper's CIFAR choice): identity, subsampled and
            zero-padded where the shape changes, no parameters; ``"B"``: 1×1 conv + BN
            projection (``shortcut.conv``, ``shortcut.bn``) where the shape changes.
    """

    def __init__(
        self, depth: int, input_shape: Sequence[int], num_classes: int, shortcut: str = "A"
    ) -> None:
        super().__init__()
        c, _, _ = check_input_shape(input_shape, "CifarResNet")
        num_classes = check_num_classes(num_classes, "CifarResNet")
        check_choice(shortcut, SHORTCUTS, "shortcut", "CifarResNet")
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ModelError(
                f"The 'depth' parameter of CifarResNet must be 6n + 2 with n >= 1 "
                f"(20, 32, 56, ...). Got {depth!r}."
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.layer1 = _stage(16, 16, n, 1, shortcut)
        self.layer2 = _stage(16, 32, n, 2, shortcut)
        self.layer3 = _stage(32, 64, n, 2, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _stage(
    in_channels: int, out_channels: int, n: int, stride: int, shortcut: str
) -> nn.Sequential:
    blocks = [BasicBlock(in_channels, out_channels, stride, shortcut)]
    blocks += [BasicBlock(out_channels, out_channels, 1, shortcut) for _ in range(n - 1)]
    return nn.Sequential(*blocks)
