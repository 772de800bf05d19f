"""Safe results: atomic writes, one run per output folder, no partial results after a failure."""

from __future__ import annotations

import io
import os

import pytest
import torch
from rich.console import Console

from torchshrink.errors import TorchshrinkError, TrainingError
from torchshrink.files import LOCK_NAME, OutputFolder, atomic_write, remove_temps, temp_path
from torchshrink.models import build_model
from torchshrink.pipeline import run_recipe
from torchshrink.recipe import parse_recipe
from torchshrink.weights import save_weights


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "a" / "x.bin"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two" and sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_an_interrupted_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "x.bin"
    atomic_write(path, b"old")

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and not temp_path(path).exists()


def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(tmp_path) -> None:
    with OutputFolder(tmp_path / "out"):
        with pytest.raises(TorchshrinkError, match=rf"in use by another torchshrink run \(pid {os.getpid()}\)"):
            with OutputFolder(tmp_path / "out"):
                pass
    with OutputFolder(tmp_path / "out"):  # free again once the first run ends
        pass


def test_out_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(TorchshrinkError, match="is an existing file, not a folder"):
        with OutputFolder(tmp_path / "f"):
            pass


def test_a_new_run_clears_stale_temporaries_and_old_results(tmp_path) -> None:
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints" / ".stage1.pt.tmp123", out / ".model.tsk.tmp9"]
    for p in [*stale, out / "model.tsk", out / "report.json", out / "checkpoints" / "baseline.pt"]:
        p.write_bytes(b"x")
    with OutputFolder(out):
        assert not any(p.exists() for p in stale)
        assert not (out / "model.tsk").exists() and not (out / "report.json").exists()
        assert (out / "checkpoints" / "baseline.pt").exists()  # --resume needs it
    assert remove_temps(out) == 0


def test_a_failed_run_leaves_no_results_and_no_folder_it_made(tmp_path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with OutputFolder(out):
            (out / "model.tsk").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError):
        with OutputFolder(kept):
            (kept / "model.tsk").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert sorted(p.name for p in kept.iterdir()) == [LOCK_NAME]  # a folder the user made stays


def test_a_baseline_with_overflowing_outputs_is_named_and_nothing_is_saved(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3e38)
    save_weights(model, tmp_path / "huge.safetensors")
    recipe = parse_recipe({"baseline": {"load": str(tmp_path / "huge.safetensors")},
                           "stages": [{"technique": "magnitude", "sparsity": 0.5, "finetune": {"epochs": 0}}],
                           "measure": {"latency": False}})
    with pytest.raises(TrainingError, match="the baseline gives NaN or infinite outputs on the test set"):
        run_recipe(recipe, tmp_path / "out", progress=False, console=quiet())
    assert not (tmp_path / "out").exists()
