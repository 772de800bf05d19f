"""The command line end to end: run (report contract), resume after SIGKILL, errors, tools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchshrink.format import load as load_tsk

TINY = """
name: tiny
seed: 1
data: {name: digits}
model: {name: lenet300, args: {hidden: [64, 32], dropout: 0.2}}
baseline:
  train: {epochs: 4, batch_size: 32, lr: 0.05}
stages:
  - technique: magnitude
    sparsity: {fc1: 0.8, fc2: 0.8, fc3: 0.5}
    iterations: 2
    finetune: {epochs: 4, batch_size: 32, lr: 0.01, schedule: constant, weight_decay: 0.0005}
  - technique: agp
    sparsity: {fc1: 0.9}
    end_epoch: 2
    frequency: 5
    finetune: {epochs: 3, batch_size: 32, lr: 0.005}
measure: {repeats: 5, batches: [1, 8]}
"""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchshrink.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def tiny(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tsk(path, dense=True).state_dict()


def test_run_writes_the_report_contract(tiny, tmp_path):
    out = tmp_path / "out"
    proc = cli("run", str(tiny), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "report.json").read_text())
    assert 0.5 < rep["baseline"]["accuracy"] <= 1 and 0.5 < rep["result"]["accuracy"] <= 1
    assert rep["baseline"]["params"] == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    assert rep["size"]["dense_bytes"] > 4 * rep["baseline"]["params"]
    assert rep["size"]["file_bytes"] == (out / "model.tsk").stat().st_size
    assert rep["size"]["ratio"] == pytest.approx(rep["size"]["dense_bytes"] / rep["size"]["file_bytes"])
    assert rep["size"]["roundtrip_exact"] is True
    names = [layer["name"] for layer in rep["layers"]]
    assert names == ["fc1", "fc2", "fc3"]
    fc1 = rep["layers"][0]
    assert fc1["shape"] == [64, 64] and fc1["params"] == 64 * 64 + 64 and 0 < fc1["bits_per_weight"] < 32
    assert fc1["nonzeros"] <= round(0.1 * 64 * 64) + 64  # AGP took fc1 to 90 %
    w = load_tsk(out / "model.tsk", dense=True).state_dict()
    nonzero = sum(int(t.count_nonzero()) for t in w.values())
    assert rep["result"]["nonzero_params"] == nonzero
    for who in ("baseline", "result"):
        for b in ("batch_1", "batch_8"):
            assert rep["latency"][who][b]["median_ms"] > 0
    assert rep["recipe"]["name"] == "tiny" and rep["recipe"]["stages"][1]["technique"] == "agp"
    assert rep["schedule"]["steps"] and rep["pruning_curve"]
    for png in ("sparsity.png", "schedule.png", "accuracy_vs_kept.png"):
        assert (out / png).stat().st_size > 1000
    assert "accuracy" in proc.stdout and "fewer" in proc.stdout


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    ref = tmp_path / "ref"
    assert cli("run", str(tiny), "--out", str(ref), "--no-progress").returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "torchshrink.cli", "run", str(tiny), "--out", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "stage1-magnitude.pt"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the run finished before it could be killed"
    resumed = cli("run", str(tiny), "--out", str(out), "--no-progress", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(ref / "model.tsk"), _weights(out / "model.tsk")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_missing_data_is_one_clear_line(tmp_path):
    proc = cli("run", "han2015_lenet300", "--out", str(tmp_path / "o"), "--set", f"data.root={tmp_path}")
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and "download" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_recipe_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: {train: {epochs: 1}}\nstages: [{technique: magnitude, sparsity: 0.5, itertions: 2}]\n")
    proc = cli("run", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "unknown key 'stages[0].itertions'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("sets", "message"), [
    (["stages.0.sparsity={fcc1: 0.9}"], "'sparsity' has the key 'fcc1', which matches no layer; layers are: fc1, fc2, fc3"),
    (["stages.0={technique: kmeans, bits: {'9': 2}, finetune: {epochs: 0}}"],
     "'bits' has the key '9', which matches no layer; layers are: fc1, fc2, fc3"),
])
def test_a_per_layer_key_that_matches_no_layer_is_one_clear_line(tmp_path, sets, message):
    args = [a for s in ["baseline.train.epochs=1", *sets] for a in ("--set", s)]
    proc = cli("run", "default", "--out", str(tmp_path / "o"), "--no-progress", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "o" / "model.tsk").exists()


def test_sensitivity_inspect_and_eval(tiny, tmp_path):
    out = tmp_path / "sens"
    proc = cli("sensitivity", str(tiny), "--out", str(out), "--sparsities", "0,0.5,0.9", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((out / "sensitivity.json").read_text())
    assert set(doc["curves"]) == {"fc1", "fc2", "fc3"}
    for curve in doc["curves"].values():
        assert [p["sparsity"] for p in curve] == [0, 0.5, 0.9]
        assert curve[0]["accuracy"] == pytest.approx(doc["baseline_accuracy"])
    assert (out / "sensitivity.png").stat().st_size > 1000

    run_out = tmp_path / "run"
    assert cli("run", str(tiny), "--out", str(run_out), "--no-progress").returncode == 0
    model_file = run_out / "model.tsk"
    ins = cli("inspect", str(model_file))
    assert ins.returncode == 0 and "fc1.weight" in ins.stdout and "sparse" in ins.stdout
    ev = cli("eval", str(model_file))
    assert ev.returncode == 0
    rep = json.loads((run_out / "report.json").read_text())
    assert f"accuracy {rep['result']['accuracy']:.4f}" in ev.stdout


def test_help_everywhere():
    for cmd in ([], ["run"], ["recipes"], ["sensitivity"], ["inspect"], ["eval"]):
        proc = cli(*cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_bench_compares_runtime_and_dense(tmp_path):
    from torchshrink.format import save
    from torchshrink.models import build_model
    from torchshrink.prune import magnitude
    from torchshrink.quantize import kmeans

    torch.manual_seed(0)
    model = build_model("lenet300", (1, 8, 8), 10)
    magnitude(model, 0.9)
    kmeans(model, 5)
    save(model, tmp_path / "m.tsk")
    proc = cli("bench", str(tmp_path / "m.tsk"), "--batch", "1,4", "--repeats", "3", "--data", "digits", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [r["batch"] for r in res["rows"]] == [1, 4]
    assert all(r["dense_ms"] > 0 and r["compressed_ms"] > 0 for r in res["rows"])
    assert res["prediction_agreement"] == 1.0
    assert 0 < res["weight_bytes"]["compressed"] < res["weight_bytes"]["dense"]
    bad = cli("bench", str(tmp_path / "m.tsk"), "--batch", "0")
    assert bad.returncode == 2 and "whole numbers" in bad.stderr
