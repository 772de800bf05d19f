"""surgery.cut: each layer type keeps exactly the listed indices (checked against slicing the dense op)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.surgery.cut import cut_channels, cut_in, cut_out, cut_param

ATOL = 1e-5
KEEP = [0, 2, 3, 6]


def _zeroed(x: torch.Tensor, keep: list[int], dim: int = 1) -> torch.Tensor:
    """``x`` with every channel not in ``keep`` set to zero (what removing an input channel means)."""
    mask = torch.zeros(x.shape[dim], dtype=torch.bool)
    mask[keep] = True
    shape = [1] * x.ndim
    shape[dim] = -1
    return x * mask.reshape(shape)


@pytest.mark.parametrize("cls, x", [(nn.Conv1d, torch.randn(2, 8, 9)), (nn.Conv2d, torch.randn(2, 8, 7, 7)),
                                    (nn.Conv3d, torch.randn(1, 8, 4, 4, 4))])
def test_conv_out_and_in_match_sliced_reference(cls: type, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    conv = cls(8, 8, 3, padding=1)
    ref = conv(x)
    out = cls(8, 8, 3, padding=1)
    out.load_state_dict(conv.state_dict())
    cut_out(out, KEEP)
    assert out.out_channels == 4 and out.weight.shape[0] == 4
    torch.testing.assert_close(out(x), ref[:, KEEP], atol=ATOL, rtol=0)
    cut_in(conv, KEEP)
    assert conv.in_channels == 4
    torch.manual_seed(0)
    full = cls(8, 8, 3, padding=1)  # the same weights as conv before the cut
    torch.testing.assert_close(conv(x[:, KEEP]), full(_zeroed(x, KEEP)), atol=ATOL, rtol=0)


def test_conv_transpose_out_and_in() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    conv = nn.ConvTranspose2d(8, 8, 3, stride=2)
    ref_out, ref_in = conv(x)[:, KEEP], conv(_zeroed(x, KEEP))
    a = nn.ConvTranspose2d(8, 8, 3, stride=2)
    a.load_state_dict(conv.state_dict())
    cut_out(a, KEEP)
    torch.testing.assert_close(a(x), ref_out, atol=ATOL, rtol=0)
    cut_in(conv, KEEP)
    torch.testing.assert_close(conv(x[:, KEEP]), ref_in, atol=ATOL, rtol=0)


def test_linear_and_embedding() -> None:
    torch.manual_seed(0)
    lin, x = nn.Linear(8, 8), torch.randn(3, 8)
    ref_out, ref_in = lin(x)[:, KEEP], lin(_zeroed(x, KEEP))
    a = nn.Linear(8, 8)
    a.load_state_dict(lin.state_dict())
    cut_out(a, KEEP)
    torch.testing.assert_close(a(x), ref_out, atol=ATOL, rtol=0)
    cut_in(lin, KEEP)
    torch.testing.assert_close(lin(x[:, KEEP]), ref_in, atol=ATOL, rtol=0)
    emb, idx = nn.Embedding(5, 8), torch.tensor([[0, 4, 2]])
    ref = emb(idx)[..., KEEP]
    cut_out(emb, KEEP)
    assert emb.embedding_dim == 4
    torch.testing.assert_close(emb(idx), ref, atol=0, rtol=0)


@pytest.mark.parametrize("layer, x", [
    (nn.BatchNorm2d(8), torch.randn(4, 8, 3, 3)),
    (nn.BatchNorm1d(8), torch.randn(4, 8)),
    (nn.InstanceNorm2d(8, affine=True, track_running_stats=True), torch.randn(2, 8, 3, 3)),
    (nn.PReLU(8), torch.randn(2, 8, 3)),
])
def test_per_channel_layers_match_sliced_reference(layer: nn.Module, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
        for name in ("running_mean", "running_var"):
            if getattr(layer, name, None) is not None:
                getattr(layer, name).uniform_(0.5, 1.5)
    layer.eval()
    ref = layer(x)[:, KEEP]
    cut_channels(layer, KEEP)
    torch.testing.assert_close(layer(x[:, KEEP]), ref, atol=ATOL, rtol=0)


def test_layer_norm_and_group_norm() -> None:
    torch.manual_seed(0)
    ln, x = nn.LayerNorm(8), torch.randn(2, 3, 8)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
    w, b = ln.weight.detach().clone(), ln.bias.detach().clone()
    cut_channels(ln, KEEP)
    assert ln.normalized_shape == (4,)
    torch.testing.assert_close(ln(x[..., KEEP]), F.layer_norm(x[..., KEEP], (4,), w[KEEP], b[KEEP]), atol=ATOL, rtol=0)
    gn, x = nn.GroupNorm(2, 8), torch.randn(2, 8, 3, 3)
    keep = [0, 3, 4, 7]  # two per group
    w, b = gn.weight.detach().clone(), gn.bias.detach().clone()
    cut_channels(gn, keep)
    assert gn.num_channels == 4 and gn.num_groups == 2
    torch.testing.assert_close(gn(x[:, keep]), F.group_norm(x[:, keep], 2, w[keep], b[keep]), atol=ATOL, rtol=0)
    with pytest.raises(ModelError, match="same number of channels"):
        cut_channels(nn.GroupNorm(2, 8), [0, 1, 2, 4])


def test_depthwise_conv_drops_groups() -> None:
    torch.manual_seed(0)
    dw, x = nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.randn(2, 8, 5, 5)
    ref = dw(x)[:, KEEP]
    cut_channels(dw, KEEP)
    assert dw.groups == 4 and dw.in_channels == dw.out_channels == 4
    torch.testing.assert_close(dw(x[:, KEEP]), ref, atol=ATOL, rtol=0)


def test_grouped_conv_keeps_groups_and_balance() -> None:
    torch.manual_seed(0)
    conv, x = nn.Conv2d(8, 8, 3, padding=1, groups=2), torch.randn(2, 8, 5, 5)
    keep = [1, 2, 4, 7]  # two kept in each group of four
    ref = conv(_zeroed(x, keep))[:, keep]
    cut_channels(conv, keep)
    assert conv.groups == 2 and conv.weight.shape == (4, 2, 3, 3)
    torch.testing.assert_close(conv(x[:, keep]), ref, atol=ATOL, rtol=0)
    with pytest.raises(ModelError, match="same number of channels"):
        cut_channels(nn.Conv2d(8, 8, 3, groups=2), [0, 1, 2, 4])


def test_param_cut_and_meta_device() -> None:
    m = nn.Module()
    m.scale = nn.Parameter(torch.arange(8.0).reshape(8, 1, 1))
    cut_param(m, "scale", 0, KEEP)
    assert m.scale.flatten().tolist() == [float(k) for k in KEEP] and isinstance(m.scale, nn.Parameter)
    with torch.device("meta"):
        conv = nn.Conv2d(8, 16, 3)
    cut_out(conv, KEEP)
    cut_in(conv, [1, 2])
    assert conv.weight.shape == (4, 2, 3, 3) and conv.weight.is_meta


def test_bad_keep_lists_are_clear_errors() -> None:
    with pytest.raises(ModelError, match=r"keep must be distinct sorted indices in \[0, 8\)"):
        cut_out(nn.Linear(4, 8), [0, 9], "fc")
    with pytest.raises(ModelError, match="keep must be distinct"):
        cut_in(nn.Linear(8, 4), [], "fc")
    with pytest.raises(ModelError, match="cannot cut the output channels of ReLU"):
        cut_out(nn.ReLU(), [0])
    with pytest.raises(ModelError, match="does not have"):
        cut_param(nn.Linear(2, 2), "nope.weight", 0, [0])
