"""A technique and a form defined in this file alone run recipe -> save -> load -> runtime.

Nothing under ``src/`` knows the toy: a 1-bit sign code with one scale per layer
(BinaryConnect-style ``w ↦ α·sign(w)``, α = mean|w|), stored as bit-packed signs plus the
scale, and run by a runtime module of its own. That it works end to end is the proof that
the registries (TECHNIQUES, FORMS) are the only seams a new technique needs.
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.core.select import select_layers
from torchshrink.core.technique import LayerStage, Step, Technique
from torchshrink.core.transform import WeightTransform, attach, original
from torchshrink.data import load_data
from torchshrink.errors import TskFormatError
from torchshrink.format import load, read_tsk
from torchshrink.format.streams import FLOAT_CODECS, INT_CODECS, Encoded, float_stream, int_stream
from torchshrink.forms import FORMS, Form
from torchshrink.pipeline import run_recipe
from torchshrink.recipe import parse_recipe
from torchshrink.techniques import TECHNIQUES


class SignScale(WeightTransform):
    """``w ↦ α·sign(w)`` with α = mean|w| (fixed at attach time); sign(0) = +1."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("alpha", w.detach().abs().mean().reshape(1).float())
        self.register_buffer("positive", w.detach() >= 0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.where(self.positive, self.alpha, -self.alpha).to(w.dtype)

    def pack(self, w_in: torch.Tensor) -> dict[str, Any]:
        assert w_in.shape == self.positive.shape
        return {"form": "sign1", "shape": list(self.positive.shape),
                "positive": self.positive.numpy().astype(np.uint8), "alpha": self.alpha.numpy()}


class SignSpec(LayerStage):
    technique: Literal["sign1"]


def apply_sign(ctx: Any, spec: SignSpec, finetune: Any) -> Step:
    for _, layer in select_layers(ctx.model, spec.layers, spec.exclude):
        attach(layer, SignScale(layer.weight))
        original(layer).requires_grad_(False)
    return Step()


class SignLinear(nn.Module):
    """Runs ``y = α · (x @ S^T) + b`` with ``S`` the ±1 matrix: one multiplication per output."""

    def __init__(self, layer: nn.Linear, packed: dict[str, Any]) -> None:
        super().__init__()
        self.register_buffer("signs", torch.from_numpy(np.where(packed["positive"], 1.0, -1.0).astype(np.float32)))
        self.alpha = float(packed["alpha"][0])
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.alpha * (x @ self.signs.T)
        return y if self.bias is None else y + self.bias


class Sign1(Form):
    name = "sign1"
    packs = "sign1"
    selected_by = ("bitpack",)
    ROLES = {"positive": INT_CODECS, "alpha": FLOAT_CODECS}

    def encode(self, value: dict, plan: Any, opts: Any) -> Encoded:
        return Encoded("sign1", "sign(1b)", {}, [int_stream("positive", value["positive"], 1, False),
                                                   float_stream("alpha", value["alpha"])])

    def decode(self, read: Any, rec: dict) -> dict:
        return {"form": "sign1", "shape": rec["shape"], "positive": read("positive", rec["shape"]),
                "alpha": read("alpha", [1])}

    def unpack(self, packed: dict) -> np.ndarray:
        a = np.float32(packed["alpha"][0])
        return np.where(np.asarray(packed["positive"]).astype(bool), a, -a).astype(np.float32)

    def runtime(self, layer: nn.Module, packed: dict) -> nn.Module | None:
        return SignLinear(layer, packed) if isinstance(layer, nn.Linear) else None


@pytest.fixture
def sign_plugin(monkeypatch):
    monkeypatch.setitem(TECHNIQUES, "sign1", Technique("sign1", SignSpec, apply_sign))
    monkeypatch.setitem(FORMS, "sign1", Sign1())


def recipe(stage: dict) -> Any:
    return parse_recipe({"name": "toy", "baseline": {"train": {"epochs": 3}}, "stages": [stage],
                         "measure": {"latency": False}})


def test_toy_technique_runs_recipe_save_load_runtime(sign_plugin, tmp_path) -> None:
    res = run_recipe(recipe({"technique": "sign1", "layers": ["fc2"], "finetune": {"epochs": 1}}), tmp_path,
                     progress=False, console=Console(file=io.StringIO()))
    f = read_tsk(tmp_path / "model.tsk")
    rec = f.record("fc2.weight")
    assert rec["form"] == "sign1" and rec["codec"] == "sign(1b)"
    assert f.nbytes("fc2.weight") == math.ceil(100 * 300 / 8) + 4  # one bit per weight + one fp32 scale
    signs = np.where(f.packed("fc2.weight")["positive"], 1.0, -1.0)
    assert np.array_equal(np.abs(f.array("fc2.weight")) > 0, np.ones_like(signs, bool))
    assert len(np.unique(np.abs(f.array("fc2.weight")))) == 1
    assert res.report["size"]["roundtrip_exact"] is True
    assert res.report["runtime"]["compressed_layers"] == 0  # SignLinear reports no weight_bytes
    fast, plain = load(f), load(f, dense=True)
    assert isinstance(fast.fc2, SignLinear) and isinstance(plain.fc2, nn.Linear)
    x = load_data("digits").test.tensors[0]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)
    layer = next(row for row in res.report["layers"] if row["name"] == "fc2")
    assert layer["form"] == "sign1" and layer["bits_per_weight"] == pytest.approx(8 * f.nbytes("fc2.weight") / 30000)


def test_a_file_with_an_unregistered_form_is_refused(sign_plugin, tmp_path, monkeypatch) -> None:
    run_recipe(recipe({"technique": "sign1", "layers": ["fc3"], "finetune": {"epochs": 0}}), tmp_path,
               progress=False, console=Console(file=io.StringIO()))
    monkeypatch.delitem(FORMS, "sign1")
    with pytest.raises(TskFormatError, match="unknown form 'sign1'"):
        read_tsk(tmp_path / "model.tsk")


def test_unregistered_technique_is_a_recipe_error_listing_the_known_ones() -> None:
    from torchshrink.errors import RecipeError

    with pytest.raises(RecipeError, match="stages\\[0\\].technique: .*'sign1'.*does not match.*'magnitude'"):
        recipe({"technique": "sign1"})
