"""Fuzzing the .tsk reader: any corruption either loads the original tensors or raises
TskFormatError -- never another exception, never a hang."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from torchshrink.errors import TskFormatError
from torchshrink.format import read_tsk, save
from torchshrink.core.transform import WeightTransform, attach, effective_state_dict


class _Shared(WeightTransform):
    """A tiny weight-sharing transform with a packed form (4-entry codebook)."""

    def __init__(self, indices: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.tensor([0.0, -0.5, 0.25, 1.0]))
        self.register_buffer("indices", indices.to(torch.uint8))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.indices.long()]

    def pack(self, latent: torch.Tensor) -> dict:
        return {"form": "shared", "shape": list(self.indices.shape), "codebook": self.codebook.numpy(),
                "indices": self.indices.numpy()}


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 6), nn.Linear(6, 3))
    with torch.no_grad():
        net[2].weight[net[2].weight.abs() < 0.3] = 0.0
    idx = torch.randint(0, 4, (3, 6), generator=torch.Generator().manual_seed(1))
    idx[idx == 3] = 0
    attach(net[3], _Shared(idx))
    return net


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "orig.tsk"
    model = _model()
    info = save(model, path, codecs={"0.weight": "dense", "2.weight": "sparse"}, huffman=True)
    assert "huffman" in info.codecs["2.weight"] and info.codecs["3.weight"].startswith("shared(")
    return path.read_bytes(), effective_state_dict(model), path.parent


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(raw)
    (header_len,) = struct.unpack("<Q", raw[:8])
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "header_byte", "header_digit", "length"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[data.draw(st.integers(0, len(buf) - 1)):]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(buf)))
        buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "header_byte":
        buf[data.draw(st.integers(8, 8 + header_len - 1))] = data.draw(st.integers(0, 255))
    elif kind == "header_digit":
        digits = [m.start() for m in re.finditer(rb"[0-9]", raw[8 : 8 + header_len])]
        buf[8 + data.draw(st.sampled_from(digits))] = ord(str(data.draw(st.integers(0, 9))))
    else:
        new_len = data.draw(st.one_of(st.integers(0, len(buf)), st.integers(0, 2**64 - 1)))
        buf[:8] = struct.pack("<Q", new_len)
    return bytes(buf)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_corrupted_files_load_exactly_or_raise_tsk_format_error(original, data) -> None:
    raw, state, folder = original
    mutated = _mutate(raw, data)
    path = folder / "mutated.tsk"
    path.write_bytes(mutated)
    try:
        loaded = read_tsk(path).state_dict()
    except TskFormatError:
        return
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
        if v.is_floating_point():  # the sign of zero too: a flip must not pass unnoticed
            assert np.array_equal(torch.signbit(loaded[k]).numpy(), torch.signbit(v).numpy()) or k == "2.weight"
