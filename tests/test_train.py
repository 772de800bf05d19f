"""fit(): schedules, checkpoints, exact resume, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import make_mlp
from torchshrink.errors import CheckpointError, TrainingError
from torchshrink.prune.magnitude import IterativePruning
from torchshrink.prune.agp import AGP
from torchshrink.train import Callback, TrainConfig, TrainContext, evaluate, fit, load_checkpoint, lr_factor


class Killed(Exception):
    pass


class KillAt(Callback):
    """Simulates the process dying in the middle of an epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, ctx):
        if ctx.step == self.step:
            raise Killed


CFG = TrainConfig(epochs=5, batch_size=40, lr=0.05, weight_decay=1e-4, schedule="cosine")


def _callbacks():
    return [IterativePruning(0.7, iterations=2, epochs_per_iteration=2), AGP({"3": 0.5}, end_epoch=3, frequency=4)]


def test_kill_and_resume_gives_identical_weights(toy_data, tmp_path):
    ref = make_mlp(dropout=0.3)
    ref_hist = fit(ref, toy_data, CFG, test_data=toy_data, callbacks=_callbacks(), seed=7, progress=False,
                   checkpoint=tmp_path / "ref.pt")
    ckpt = tmp_path / "run.pt"
    model = make_mlp(dropout=0.3)
    with pytest.raises(Killed):  # dies in epoch 4 (15 steps per epoch)
        fit(model, toy_data, CFG, test_data=toy_data, callbacks=[*_callbacks(), KillAt(52)], seed=7,
            progress=False, checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 3
    fresh = make_mlp(dropout=0.3)  # a new process rebuilds the model from scratch
    hist = fit(fresh, toy_data, CFG, test_data=toy_data, callbacks=[*_callbacks(), KillAt(-1)], seed=7,
               progress=False, checkpoint=ckpt, resume=True)
    ref_sd, sd = ref.state_dict(), fresh.state_dict()
    assert ref_sd.keys() == sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], sd[k]), k
    assert [h["test_accuracy"] for h in hist] == [h["test_accuracy"] for h in ref_hist]


class Tally(Callback):
    """Callback state that only a correct resume restores: steps seen, sum of epoch losses."""

    def __init__(self) -> None:
        self.steps, self.loss_sum = 0, 0.0

    def on_step_end(self, ctx: TrainContext) -> None:
        self.steps += 1

    def on_epoch_end(self, ctx: TrainContext) -> None:
        self.loss_sum += ctx.logs["train_loss"]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "loss_sum": self.loss_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.loss_sum = state["steps"], state["loss_sum"]


def _same(a: Any, b: Any) -> bool:
    """Exact equality of nested checkpoint contents (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def test_resumed_checkpoint_equals_uninterrupted_one(toy_data: TensorDataset, tmp_path: Path) -> None:
    """Model, optimizer, schedule, callback state, RNG and history all match bit for bit."""
    def run(path: Path, kill: int, resume: bool = False) -> tuple[Tally, list[dict[str, float]]]:
        tally = Tally()
        hist = fit(make_mlp(dropout=0.3), toy_data, CFG, test_data=toy_data, seed=7, progress=False,
                   callbacks=[*_callbacks(), tally, KillAt(kill)], checkpoint=path, resume=resume)
        return tally, [{k: v for k, v in h.items() if k != "seconds"} for h in hist]

    ref_tally, ref_hist = run(tmp_path / "ref.pt", -1)
    with pytest.raises(Killed):  # mid-epoch 4
        run(tmp_path / "run.pt", 52)
    tally, hist = run(tmp_path / "run.pt", -1, resume=True)
    assert ref_tally.steps == 75 and (tally.steps, tally.loss_sum) == (ref_tally.steps, ref_tally.loss_sum)
    assert hist == ref_hist
    ref, got = load_checkpoint(tmp_path / "ref.pt"), load_checkpoint(tmp_path / "run.pt")
    for state in (ref, got):
        state["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in state["history"]]
    for key in ref:
        assert _same(ref[key], got[key]), key
    assert list(ref) == list(got)


def test_resume_of_a_finished_run_returns_at_once(toy_data, tmp_path):
    model = make_mlp()
    fit(model, toy_data, TrainConfig(epochs=2, batch_size=100), progress=False, checkpoint=tmp_path / "c.pt")
    again = make_mlp(seed=3)
    hist = fit(again, toy_data, TrainConfig(epochs=2, batch_size=100), progress=False,
               checkpoint=tmp_path / "c.pt", resume=True)
    assert len(hist) == 2
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_with_other_settings_is_refused(toy_data, tmp_path):
    fit(make_mlp(), toy_data, TrainConfig(epochs=1, batch_size=100), progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="other settings"):
        fit(make_mlp(), toy_data, TrainConfig(epochs=1, batch_size=100), seed=5, progress=False,
            checkpoint=tmp_path / "c.pt", resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)


def test_checkpoint_write_is_atomic(toy_data, tmp_path):
    fit(make_mlp(), toy_data, TrainConfig(epochs=2, batch_size=100), progress=False, checkpoint=tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp files left behind


def test_training_learns_and_history_is_complete(toy_data):
    model = make_mlp()
    before = evaluate(model, toy_data)["accuracy"]
    hist = fit(model, toy_data, TrainConfig(epochs=5, batch_size=32, lr=0.05), test_data=toy_data, progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    assert hist[-1]["test_accuracy"] > max(before, 0.8)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_other_optimizers(toy_data, opt):
    hist = fit(make_mlp(), toy_data, TrainConfig(epochs=2, optimizer=opt, lr=1e-2), test_data=toy_data,
               progress=False)
    assert hist[-1]["test_accuracy"] > 0.5


def test_lr_schedules():
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(0, cos, 10) == 1.0
    assert lr_factor(50, cos, 10) == pytest.approx(0.5)
    assert lr_factor(100, cos, 10) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert [lr_factor(e * 10, step, 10) for e in (0, 2, 3, 6, 9)] == [1, 1, 0.5, 0.25, 0.125]
    ms = TrainConfig(epochs=10, schedule="multistep", milestones=[2, 5], gamma=0.1)
    assert [lr_factor(e * 10, ms, 10) for e in (1, 2, 5)] == pytest.approx([1, 0.1, 0.01])
    warm = TrainConfig(epochs=10, schedule="constant", warmup_epochs=2)
    assert lr_factor(0, warm, 10) == pytest.approx(0.05)
    assert lr_factor(25, warm, 10) == 1.0


def test_divergence_is_reported(toy_data):
    model = make_mlp()
    with torch.no_grad():
        model[0].weight.fill_(math.inf)
    with pytest.raises(TrainingError, match="lower the learning rate"):
        fit(model, toy_data, TrainConfig(epochs=1), progress=False)
