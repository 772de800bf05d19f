"""The CIFAR VGG-16 of Li et al. 2017 ("Pruning Filters for Efficient ConvNets", Table 2).

13 conv3×3 layers (no bias), each followed by BatchNorm and ReLU, five 2×2 max-pools,
then a classifier 512 → 512 (BatchNorm, ReLU) → num_classes. About 15.0M parameters on
CIFAR-10, as in the paper's 1.5×10^7.

Names as recipes see them: ``features.conv1`` .. ``features.conv13`` (with ``bn{i}``,
``relu{i}``, ``pool{j}``) and ``classifier.fc1``, ``classifier.bn1``,
``classifier.relu1``, ``classifier.fc2``. ``features.*`` selects the 13 convs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ._common import check_input_shape, check_num_classes, init_weights

#: Output channels of each conv; "M" is a 2×2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG16(nn.Module):
    """CIFAR VGG-16 with batch norm (Li et al. 2017).

    A max-pool that would shrink the feature map below 1×1 is left out (only trailing
    pools can be: on 32×32 all five stay, on 28×28 the fifth goes, on the 8×8 digits the
    last two), so small inputs work. ``classifier.fc1`` takes 512·h·w inputs, h×w being
    the final map (1×1 on 32×32 and on any smaller input).

    Args:
        input_shape: (channels, height, width).
        num_classes: outputs of ``classifier.fc2``.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        c, h, w = check_input_shape(input_shape, "VGG16")
        num_classes = check_num_classes(num_classes, "VGG16")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        conv = pool = 0
        for v in VGG16_CONFIG:
            if v == "M":
                if h < 2 or w < 2:
                    continue  # would shrink the map below 1x1: dropped (see docstring)
                pool += 1
                layers[f"pool{pool}"] = nn.MaxPool2d(2)
                h, w = h // 2, w // 2
            else:
                conv += 1
                layers[f"conv{conv}"] = nn.Conv2d(c, int(v), 3, padding=1, bias=False)
                layers[f"bn{conv}"] = nn.BatchNorm2d(int(v))
                layers[f"relu{conv}"] = nn.ReLU()
                c = int(v)
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c * h * w, 512),
                bn1=nn.BatchNorm1d(512),
                relu1=nn.ReLU(),
                fc2=nn.Linear(512, num_classes),
            )
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
