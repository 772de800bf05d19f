"""Tests of torchshrink.report: JSON, terminal tables, plots."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink import measure, report
from torchshrink.errors import TorchshrinkError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def full_report() -> dict:
    return {
        "baseline": {"accuracy": 0.9820, "params": 266_610},
        "result": {"accuracy": 0.9841, "nonzero_params": 22_218},
        "size": {"dense_bytes": 1_070_000, "file_bytes": 26_750},
        "layers": [
            {"name": "fc1", "shape": [300, 784], "params": 235_500, "nonzeros": 18_840,
             "bits_per_weight": 5.0, "sparsity": 0.92, "macs_dense": 235_200, "macs_effective": 18_816},
            {"name": "fc2", "shape": [100, 300], "params": 30_100, "nonzeros": 2_709,
             "bits_per_weight": 5.0, "sparsity": 0.91, "macs_dense": 30_000, "macs_effective": 2_700},
            {"name": "fc3", "shape": [10, 100], "params": 1_010, "nonzeros": 263,
             "bits_per_weight": 5.0, "sparsity": 0.74, "macs_dense": 1_000, "macs_effective": 260},
        ],
        "latency": {
            "baseline": {"batch_1": {"median_ms": 0.2}, "batch_64": {"median_ms": 1.0}},
            "result": {"batch_1": {"median_ms": 0.1}, "batch_64": {"median_ms": 2.0}},
        },
        "recipe": {"name": "han2015-lenet300"},
        "history": [
            {"stage": "prune", "accuracy": 0.97, "nonzero_params": 22_218},
            {"stage": "quantize", "accuracy": 0.9841, "bits": 5},
        ],
        "schedule": {"steps": [0, 100, 200, 300], "sparsity": [0.0, 0.5, 0.8, 0.9]},
        "pruning_curve": [{"kept": 1.0, "accuracy": 0.982}, {"kept": 0.1, "accuracy": 0.98},
                          {"kept": 0.03, "accuracy": 0.9}],
        "sensitivity": {"fc1": [[0.0, 0.982], [0.5, 0.981], [0.9, 0.97]],
                        "fc3": [[0.0, 0.982], [0.5, 0.95], [0.9, 0.6]]},
    }


def render(rep: dict) -> str:
    buf = StringIO()
    report.print_report(rep, Console(file=buf, width=200, color_system=None))
    return buf.getvalue()


def test_json_round_trip_converts_scalars(tmp_path: Path) -> None:
    rep = full_report()
    rep["result"]["accuracy"] = np.float32(0.5)
    rep["result"]["nonzero_params"] = np.int64(7)
    rep["size"]["file_bytes"] = torch.tensor(123)
    rep["extra"] = {"t": torch.tensor([1.5, 2.5]), "tup": (1, 2), "none": None, 3: True}
    path = report.write_json(rep, tmp_path / "out" / "report.json")
    back = report.read_json(path)
    assert back["result"] == {"accuracy": 0.5, "nonzero_params": 7}
    assert type(back["result"]["nonzero_params"]) is int
    assert back["size"]["file_bytes"] == 123
    assert back["extra"] == {"t": [1.5, 2.5], "tup": [1, 2], "none": None, "3": True}
    assert back["layers"] == full_report()["layers"]
    assert path.read_text().startswith("{\n  ")  # pretty
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left


def test_json_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    report.write_json({"a": 1}, path)
    report.write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 2}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), np.float64("nan")])
def test_json_rejects_non_finite(tmp_path: Path, bad: float) -> None:
    rep = full_report()
    rep["layers"][1]["sparsity"] = bad
    with pytest.raises(TorchshrinkError, match=r"report\.layers\[1\]\.sparsity"):
        report.write_json(rep, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_json_rejects_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(TorchshrinkError, match="type object"):
        report.write_json({"x": object()}, tmp_path / "r.json")


def test_print_report_key_figures() -> None:
    out = render(full_report())
    for figure in [
        "fc1", "300×784", "235,500", "18,840", "8.0%", "235.20K → 18.82K", "26.0%",
        "98.20%", "98.41%", "+0.21 pts",
        "266,610", "22,218", "12.0× fewer",
        "1,070,000 B (1.07 MB)", "26,750 B (26.75 kB)", "40.0× smaller",
        "latency batch 1", "2.00× faster", "latency batch 64", "2.00× slower",
        "han2015-lenet300", "quantize",
    ]:
        assert figure in out, figure
    assert out.index("batch 1 ") < out.index("batch 64")


def test_print_report_tolerates_missing_keys() -> None:
    rep = {"baseline": {"accuracy": 0.5}, "size": {"dense_bytes": 400, "file_bytes": None}}
    out = render(rep)
    assert "50.00%" in out and "400 B" in out
    assert "Layers" not in out


def test_print_report_from_measured_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    rep = {"layers": [s.to_dict() for s in measure.layer_stats(model, (4,))]}
    out = render(rep)
    assert "12 → 12" in out and "100.0%" in out and "32" in out


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_each_plot_writes_png(tmp_path: Path) -> None:
    rep = full_report()
    paths = [
        report.plot_sparsity(rep["layers"], tmp_path / "a.png"),
        report.plot_accuracy_vs_kept(rep["pruning_curve"], tmp_path / "b.png", 0.982),
        report.plot_accuracy_vs_kept([(0.5, 0.9), (1.0, 0.95)], tmp_path / "b2.png"),
        report.plot_schedule(rep["schedule"]["steps"], rep["schedule"]["sparsity"], tmp_path / "c.png"),
        report.plot_sensitivity(rep["sensitivity"], tmp_path / "d.png", baseline_accuracy=0.982),
    ]
    for p in paths:
        assert_png(p)


def test_write_plots_uses_available_data(tmp_path: Path) -> None:
    paths = report.write_plots(full_report(), tmp_path / "plots")
    assert [p.name for p in paths] == [
        "sparsity.png", "accuracy_vs_kept.png", "schedule.png", "sensitivity.png"
    ]
    for p in paths:
        assert_png(p)
    assert report.write_plots({"baseline": {"accuracy": 0.9}}, tmp_path / "none") == []


def test_plot_schedule_rejects_mismatch(tmp_path: Path) -> None:
    with pytest.raises(TorchshrinkError, match="equally long"):
        report.plot_schedule([0, 1, 2], [0.0, 0.5], tmp_path / "s.png")


def test_plot_sparsity_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(TorchshrinkError, match="at least one layer"):
        report.plot_sparsity([], tmp_path / "s.png")


def test_storage_table_shows_bits_before_and_after_huffman() -> None:
    rep = full_report()
    rep["size"]["tensors"] = [{
        "name": "fc1.weight", "codec": "shared(5b)/sparse(7b)+huffman(gaps,codes)", "bytes": 1796,
        "bits_per_weight": 0.75, "index_role": "gaps", "weight_role": "codes",
        "gaps": {"bytes": 931, "huffman": True, "entries": 1348, "fixed_bits": 7, "bits_per_entry": 5.05},
        "codes": {"bytes": 737, "huffman": True, "entries": 1348, "fixed_bits": 5, "bits_per_entry": 4.25},
    }]
    text = render(rep)
    assert "Storage" in text and "7 → 5.05" in text and "5 → 4.25" in text and "1,348" in text
