"""A plain multi-layer perceptron, the network of Kim & Smaragdis 2016 ("Bitwise Neural Networks").

The paper's MNIST networks have 3 hidden layers of 1024 (or 2047) units. Here every
hidden layer is ``fc_i`` → ``bn_i`` (batch norm, optional) → ``act_i`` → ``drop_i``, after a
``flatten`` and an ``inp`` identity (where the bitwise technique puts its input
binarizer); the last layer ``fc_{L+1}`` gives the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_choice, check_input_shape, check_num_classes, init_weights

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "hardtanh": nn.Hardtanh}


class MLP(nn.Module):
    """flatten → inp → [fc_i → bn_i → act_i → drop_i] × len(hidden) → fc_out; ``forward`` runs the children in order.

    Args:
        input_shape: (channels, height, width); ``fc1`` takes channels·height·width inputs.
        num_classes: outputs of the last layer.
        hidden: widths of the hidden layers (positive ints, at least one).
        batchnorm: a BatchNorm1d after each hidden Linear.
        activation: ``"tanh"`` (the paper's real-valued network), ``"relu"`` or ``"hardtanh"``.
        dropout: dropout rate in [0, 1) after each hidden activation.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (1024, 1024, 1024),
                 batchnorm: bool = True, activation: str = "tanh", dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = check_input_shape(input_shape, "MLP")
        num_classes = check_num_classes(num_classes, "MLP")
        if not (isinstance(hidden, (list, tuple)) and hidden
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in hidden)):
            raise ModelError(f"The 'hidden' parameter of MLP must be a list of positive ints. Got {hidden!r}.")
        check_choice(activation, list(_ACTIVATIONS), "activation", "MLP")
        if not isinstance(batchnorm, bool):
            raise ModelError(f"The 'batchnorm' parameter of MLP must be true or false. Got {batchnorm!r}.")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ModelError(f"The 'dropout' parameter of MLP must be a float in [0, 1). Got {dropout!r}.")
        self.flatten = nn.Flatten()
        self.inp = nn.Identity()
        width = c * h * w
        for i, n in enumerate(hidden, start=1):
            setattr(self, f"fc{i}", nn.Linear(width, n))
            setattr(self, f"bn{i}", nn.BatchNorm1d(n) if batchnorm else nn.Identity())
            setattr(self, f"act{i}", _ACTIVATIONS[activation]())
            setattr(self, f"drop{i}", nn.Dropout(dropout))
            width = n
        setattr(self, f"fc{len(hidden) + 1}", nn.Linear(width, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.children():
            x = m(x)
        return x
