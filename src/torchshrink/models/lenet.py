"""The LeNets of Han et al. 2015 ("Learning both Weights and Connections").

- :class:`LeNet300100`: the fully connected LeNet-300-100 (266,610 parameters on 28×28).
- :class:`LeNet5`: Caffe's LeNet-5 variant "20-50-500" (431,080 parameters on 28×28).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_input_shape, check_num_classes, init_weights


class LeNet300100(nn.Module):
    """LeNet-300-100: flatten → ``fc1`` → ReLU → ``fc2`` → ReLU → ``fc3``.

    Dropout belongs to the layer whose *input* it drops, because Han et al. 2015 (eq. 2)
    rescale each layer's dropout rate by sqrt(kept connections of that layer): ``drop1``
    sits right before ``fc2`` and ``drop2`` right before ``fc3``. Both modules always
    exist (``p = dropout``, an identity when ``dropout == 0``) so a pruning schedule can
    always find and rescale them.

    Args:
        input_shape: (channels, height, width); fc1 takes channels·height·width inputs.
        num_classes: outputs of ``fc3``.
        hidden: widths of ``fc1`` and ``fc2`` (two positive ints).
        dropout: dropout rate in [0, 1) on the inputs of ``fc2`` and ``fc3``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = check_input_shape(input_shape, "LeNet300100")
        num_classes = check_num_classes(num_classes, "LeNet300100")
        h1, h2 = _check_hidden(hidden)
        dropout = _check_dropout(dropout)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c * h * w, h1)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(h1, h2)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(h2, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(self.drop1(x)))
        return self.fc3(self.drop2(x))


class LeNet5(nn.Module):
    """Caffe's LeNet-5 ("20-50-500"), as pruned by Han et al. 2015.

    ``conv1`` (20 filters 5×5) → max-pool 2 → ``conv2`` (50 filters 5×5) → max-pool 2 →
    ``fc1`` (500) → ReLU → ``fc2``. As in Caffe's ``lenet_train_test.prototxt`` the convs
    have no nonlinearity; pooling floors odd sizes (PyTorch's rule, Caffe rounds up; the
    two agree on 28×28 and 8×8).

    The convs' padding is chosen for the input: 0 when both spatial sizes are ≥ 16 (28×28
    gives a 4×4×50 = 800-input ``fc1``, the paper's 431k parameters), else 2, which keeps
    the size through each conv so small inputs such as the 8×8 digits work (inputs ≥ 4).
    ``fc1``'s input size follows from the arithmetic.

    Args:
        input_shape: (channels, height, width).
        num_classes: outputs of ``fc2``.
        padding: conv padding; ``None`` chooses 0 or 2 as above.
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, padding: int | None = None
    ) -> None:
        super().__init__()
        c, h, w = check_input_shape(input_shape, "LeNet5")
        num_classes = check_num_classes(num_classes, "LeNet5")
        self.padding = _lenet5_padding(h, w, padding)
        p = self.padding
        oh, ow = _lenet5_out(h, p), _lenet5_out(w, p)
        if oh < 1 or ow < 1:
            raise ModelError(
                f"LeNet5 cannot run on a {h}x{w} input with padding={p}: the feature map "
                "vanishes; use inputs of at least 4x4 (padding 2) or 16x16 (padding 0)."
            )
        self.conv1 = nn.Conv2d(c, 20, 5, padding=p)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=p)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * oh * ow, 500)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu1(self.fc1(self.flatten(x))))


def _lenet5_out(size: int, padding: int) -> int:
    """Spatial size after conv5 → pool2 → conv5 → pool2 (floor pooling)."""
    for _ in range(2):
        size = size + 2 * padding - 4
        if size < 1:
            return 0
        size //= 2
    return size


def _lenet5_padding(h: int, w: int, padding: int | None) -> int:
    if padding is None:
        return 0 if min(h, w) >= 16 else 2
    if not isinstance(padding, int) or isinstance(padding, bool) or not 0 <= padding <= 2:
        raise ModelError(
            f"The 'padding' parameter of LeNet5 must be None or an int in [0, 2]. Got {padding!r}."
        )
    return padding


def _check_hidden(hidden: Sequence[int]) -> tuple[int, int]:
    ok = (
        isinstance(hidden, (tuple, list))
        and len(hidden) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hidden)
    )
    if not ok:
        raise ModelError(
            f"The 'hidden' parameter of LeNet300100 must be two positive ints (widths of fc1 "
            f"and fc2). Got {hidden!r}."
        )
    return int(hidden[0]), int(hidden[1])


def _check_dropout(dropout: float) -> float:
    if (
        not isinstance(dropout, (int, float))
        or isinstance(dropout, bool)
        or not 0.0 <= dropout < 1.0
    ):
        raise ModelError(
            f"The 'dropout' parameter of LeNet300100 must be a float in [0, 1). Got {dropout!r}."
        )
    return float(dropout)
