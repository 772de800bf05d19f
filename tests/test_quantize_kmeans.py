"""Tests of k-means weight sharing (Deep Compression §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_mlp
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.prune import magnitude
from torchshrink.quantize import SharedWeights, compression_rate_kmeans, kmeans
from torchshrink.train import TrainConfig, fit
from torchshrink.core.transform import find, original


def _distinct(t: torch.Tensor) -> int:
    return int(torch.unique(t.detach()).numel())


def test_forward_is_codebook_gather_exactly():
    sw = SharedWeights(torch.tensor([-0.5, 0.25, 1.5]), torch.tensor([[0, 1, 3], [2, 2, 0]]), bits=2)
    out = sw(torch.zeros(2, 3))
    expected = torch.tensor([[0.0, -0.5, 1.5], [0.25, 0.25, 0.0]])
    assert torch.equal(out, expected)


def test_attached_forward_equals_codebook_of_assignment(mlp):
    kmeans(mlp, bits=4)
    layer = mlp[0]
    sw = find(layer, SharedWeights)
    table = torch.cat([torch.zeros(1), sw.codebook.detach()])
    assert torch.equal(layer.weight, table[sw.indices])
    assert sw.codebook.numel() == 15
    # every weight went to its nearest centroid (1-D k-means assignment)
    w = original(layer)
    d = (w.reshape(-1, 1) - sw.codebook.detach().reshape(1, -1)).abs()
    assert torch.equal(d.argmin(1) + 1, sw.indices.reshape(-1))


def test_centroid_gradient_is_sum_of_member_gradients():
    # Deep Compression Eq. 3 by hand: weights [[c1, c0], [c1, 0]] and a loss sum(G * W).
    sw = SharedWeights(torch.tensor([-1.0, 2.0]), torch.tensor([[2, 1], [2, 0]]), bits=2)
    g = torch.tensor([[0.5, -3.0], [0.25, 7.0]])
    (sw(torch.zeros(2, 2)) * g).sum().backward()
    assert torch.equal(sw.codebook.grad, torch.tensor([-3.0, 0.75]))


def test_masked_zeros_stay_zero_after_optimizer_steps(mlp):
    magnitude(mlp, sparsity=0.7)
    pruned = mlp[0].weight == 0
    kmeans(mlp, bits=3)
    opt = torch.optim.SGD([p for p in mlp.parameters() if p.requires_grad], lr=0.5, momentum=0.9, weight_decay=0.1)
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        opt.zero_grad()
        mlp(x).square().sum().backward()
        opt.step()
    w = mlp[0].weight
    assert torch.equal(w[pruned], torch.zeros(int(pruned.sum())))
    assert bool((w[~pruned] != 0).all())
    assert not original(mlp[0]).requires_grad


def test_zero_never_a_centroid_and_chain_order(mlp):
    magnitude(mlp, sparsity=0.5)
    kmeans(mlp, bits=2)
    plist = mlp[0].parametrizations["weight"]
    assert type(plist[0]).__name__ == "Mask" and isinstance(plist[1], SharedWeights)
    sw = plist[1]
    assert bool((sw.codebook != 0).all())
    assert torch.equal(sw.indices == 0, mlp[0].weight == 0)


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_bits_bound_distinct_values(bits, init):
    model = make_mlp(seed=bits)
    magnitude(model, sparsity=0.3)
    kmeans(model, bits=bits, init=init)
    for layer in (model[0], model[3]):
        assert _distinct(layer.weight) <= 2**bits
        assert _distinct(layer.weight) == find(layer, SharedWeights).codebook.numel() + 1


def test_default_bits_by_layer_type_and_patterns():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    kmeans(model)
    assert find(model[0], SharedWeights).bits == 8 and find(model[2], SharedWeights).bits == 5
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    kmeans(model, {"0": 2})
    assert find(model[0], SharedWeights).bits == 2 and find(model[1], SharedWeights).bits == 5


def test_linear_init_matches_kmeans1d_reference():
    from torchshrink.quantize.kmeans1d import kmeans1d

    model = make_mlp(seed=3)
    w = model[3].weight.detach().clone()
    kmeans(model, bits=3, layers="3")
    c, labels, _ = kmeans1d(w.numpy(), 7, init="linear")
    sw = find(model[3], SharedWeights)
    assert torch.equal(sw.codebook.detach(), torch.from_numpy(c.astype(np.float32)))
    assert torch.equal(sw.indices, torch.from_numpy(labels) + 1)


@pytest.mark.parametrize("bits", [2, 8, 9])
def test_pack_reproduces_forward_bit_for_bit(bits):
    model = make_mlp(seed=0)
    magnitude(model, sparsity=0.5)
    kmeans(model, bits=bits)
    sw = find(model[0], SharedWeights)
    with torch.no_grad():
        sw.codebook.add_(0.0123)  # as after fine-tuning
    packed = sw.pack(original(model[0]))
    assert packed["form"] == "shared" and packed["shape"] == [64, 32]
    assert packed["codebook"].dtype == np.float32 and packed["codebook"][0] == 0.0
    assert packed["indices"].dtype == (np.uint8 if bits <= 8 else np.uint16)
    decoded = packed["codebook"][packed["indices"]]
    eff = model[0].weight.detach().numpy()
    assert decoded.dtype == np.float32 and decoded.tobytes() == eff.tobytes()


def test_fine_tuning_with_fit_keeps_distinct_values(toy_data):
    model = make_mlp(seed=0)
    magnitude(model, sparsity=0.5)
    kmeans(model, bits=3)
    before = {i: find(model[i], SharedWeights).codebook.detach().clone() for i in (0, 3)}
    idx = {i: find(model[i], SharedWeights).indices.clone() for i in (0, 3)}
    fit(model, toy_data, TrainConfig(epochs=1, batch_size=100, lr=0.05), progress=False)
    for i in (0, 3):
        sw = find(model[i], SharedWeights)
        assert not torch.equal(sw.codebook.detach(), before[i])  # centroids were trained
        assert torch.equal(sw.indices, idx[i])
        assert _distinct(model[i].weight) <= 8


def test_all_zero_layer_has_empty_codebook():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.zero_()
    kmeans(layer, bits=4)
    sw = find(layer, SharedWeights)
    assert sw.codebook.numel() == 0
    assert torch.equal(layer.weight, torch.zeros(3, 4))


@pytest.mark.parametrize("bits", [0, 17, 2.5, True, "4"])
def test_bad_bits_raise(bits):
    with pytest.raises(ModelError, match="The 'bits' parameter of kmeans must be an int in \\[1, 16\\]. Got .* instead."):
        kmeans(make_mlp(), bits=bits)


def test_bad_bits_in_mapping_raise():
    with pytest.raises(ModelError, match="bits\\[0\\]"):
        kmeans(make_mlp(), {"0": 0})


def test_nan_weights_raise():
    model = make_mlp()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN or infinite"):
        kmeans(model, bits=4)


def test_unknown_init_raises():
    with pytest.raises(ModelError, match="'init' parameter"):
        kmeans(make_mlp(), bits=4, init="kmeans++")


def test_sharing_twice_raises(mlp):
    kmeans(mlp, bits=4)
    with pytest.raises(ModelError, match="already quantized"):
        kmeans(mlp, bits=4)


def test_compression_rate_kmeans_by_hand():
    # 1000 weights, 4-bit indices, 16 centroids: 32000 / (4000 + 512)
    assert compression_rate_kmeans(1000, 4, 16) == pytest.approx(32000 / 4512, rel=1e-12)
    assert compression_rate_kmeans(10**6, 8, 256) == pytest.approx(32e6 / (8e6 + 8192), rel=1e-12)


def test_include_bias_shares_biases_and_round_trips(tmp_path):
    from torchshrink.format import load, save

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 3))
    kmeans(net, 3, include_bias=True)
    for layer in (net[0], net[2]):
        assert len(torch.unique(layer.bias.detach())) <= 2**3 - 1 + 1
        assert not layer.parametrizations.bias.original.requires_grad
    info = save(net, tmp_path / "b.tsk")
    assert info.codecs["0.bias"].startswith("shared")
    x = torch.randn(5, 20)
    plain = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 3))
    assert torch.equal(load(tmp_path / "b.tsk", model=plain, dense=True)(x), net(x))
