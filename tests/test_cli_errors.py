"""Bad input on the command line: one line ``error: ...`` on stderr, exit code 2, no traceback.

Every case runs the CLI in a subprocess and fails before any training. Where the test
machine cannot produce a condition for real (tests run as root here, and root can read a
chmod 000 file and write into a chmod 555 folder), the child process is started through
``python -c`` with the one call that would fail patched to fail the same way.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import resign
from torch import nn

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
QUICK = ["--set", "baseline.train.epochs=1", "--no-progress"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torchshrink.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def cli_patched(patch: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI in a child that first runs ``patch`` (Python source)."""
    code = f"{patch}\nimport sys\nsys.argv = ['torchshrink', *{list(args)!r}]\nfrom torchshrink.cli import main\nmain()"
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The single ``error: ...`` line of a refused command, after checking the exit code."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def model_file(path: Path, shape=(1, 8, 8), classes: int = 10, shared: bool = False) -> Path:
    """An untrained lenet300 .tsk file: small, or full-size pruned + k-means shared (runtime modules)."""
    from torchshrink.format import save
    from torchshrink.models import build_model
    from torchshrink.prune import magnitude
    from torchshrink.quantize import kmeans

    torch.manual_seed(0)
    model = build_model("lenet300", shape, classes, **({} if shared else {"hidden": [32, 16]}))
    if shared:
        magnitude(model, 0.9)
        kmeans(model, 4)
    save(model, path)
    return path


# --- 1. recipe files that are not UTF-8 text, or cannot be read ------------------------


@pytest.mark.parametrize(("content", "byte"), [
    (b"\xff\xfe\x00\x01binary\x00\x9c", "0xff"),
    ("name: caf\u00e9\nbaseline: {train: {epochs: 1}}\n".encode("latin-1"), "0xe9"),
], ids=["binary", "latin-1"])
def test_recipe_that_is_not_utf8(tmp_path, content, byte):
    p = tmp_path / "r.yaml"
    p.write_bytes(content)
    one_error_line(cli("run", str(p), "--out", str(tmp_path / "o")), "r.yaml", "not UTF-8", byte)


def test_unreadable_recipe_file(tmp_path):
    p = tmp_path / "secret.yaml"
    p.write_text("baseline: {train: {epochs: 1}}\n")
    p.chmod(0)
    # Root reads a chmod 000 file anyway: then make open() fail as it would for anyone else.
    patch = ("import builtins\n_open = builtins.open\n"
             "def _deny(file, *a, **k):\n"
             "    if str(file).endswith('secret.yaml'):\n"
             "        raise PermissionError(13, 'Permission denied', str(file))\n"
             "    return _open(file, *a, **k)\n"
             "builtins.open = _deny\n") if IS_ROOT else ""
    try:
        proc = cli_patched(patch, "run", str(p), "--out", str(tmp_path / "o"))
    finally:
        p.chmod(0o644)
    one_error_line(proc, "cannot read recipe file", "secret.yaml", "Permission denied")


# --- 2. "billion laughs": nested aliases that expand to billions of values -------------


def billion_laughs() -> str:
    rows = ['  args:', '    hidden: [&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefgh":
        rows.append(f"      , &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    rows.append("      , [" + ",".join([f"*{prev}"] * 9) + "]]")
    return "baseline: {train: {epochs: 1}}\nmodel:\n  name: lenet300\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("how", ["file", "self-reference"])
def test_billion_laughs_is_refused_at_once(tmp_path, how):
    p = tmp_path / "r.yaml"
    if how == "file":
        p.write_text(billion_laughs())
        assert len(p.read_bytes()) < 500
        needle = "100,000 values"
    else:
        p.write_text("baseline: {train: {epochs: 1}}\nmodel: {name: lenet300, args: {hidden: &a [1, *a]}}\n")
        needle = "levels deep"
    start = time.monotonic()
    proc = cli("run", str(p), "--out", str(tmp_path / "o"))
    one_error_line(proc, needle)
    assert time.monotonic() - start < 30


# --- 3. nesting deeper than the YAML parser's recursion -------------------------------


def test_deeply_nested_yaml(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 50_000)
    one_error_line(cli("run", str(p), "--out", str(tmp_path / "o")), "deep.yaml", "nests", "too deeply")


# --- 4. seeds outside 0 .. 2**63 - 1 ----------------------------------------------------


@pytest.mark.parametrize("where", ["option", "recipe", "negative option"])
def test_seed_out_of_range(tmp_path, where):
    seed = "-1" if where.startswith("negative") else "99999999999999999999999"
    p = tmp_path / "r.yaml"
    if where.endswith("option"):
        p.write_text("baseline: {train: {epochs: 1}}\n")
        proc = cli("run", str(p), "--out", str(tmp_path / "o"), "--seed", seed)
        one_error_line(proc, "--seed")
    else:
        p.write_text(f"seed: {seed}\nbaseline: {{train: {{epochs: 1}}}}\n")
        proc = cli("run", str(p), "--out", str(tmp_path / "o"))
        one_error_line(proc, "seed:")
    assert ("9223372036854775807" if seed != "-1" else "0") in proc.stderr


# --- 5. learning rates that overflow the optimizer -------------------------------------


def test_learning_rate_out_of_range(tmp_path):
    # 1e308 used to reach SGD, where casting it to float32 raised "value cannot be converted".
    proc = cli("run", "default", "--out", str(tmp_path / "o"), *QUICK, "--set", "baseline.train.lr=1e308")
    one_error_line(proc, "baseline.train.lr", "less than or equal to 1000")


@pytest.mark.parametrize("values", [{"lr": 1e308}, {"lr": math.inf}, {"lr": math.nan}, {"weight_decay": 1e308},
                                    {"grad_clip": math.inf}])
def test_train_config_bounds(values):
    from pydantic import ValidationError

    from torchshrink.train import TrainConfig

    with pytest.raises(ValidationError):
        TrainConfig(**values)
    TrainConfig(lr=1e3, weight_decay=1e3)  # the bounds themselves are allowed


# --- 6. --out that cannot be a folder ---------------------------------------------------


@pytest.mark.parametrize(("command", "case"), [("run", "existing file"), ("run", "under a file"), ("run", "unwritable"),
                                               ("sensitivity", "under a file")])
def test_out_folder_that_cannot_be_used(tmp_path, command, case):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    patch = ""
    if case == "existing file":
        out, needles = blocker, ("is an existing file",)
    elif case == "under a file":
        out, needles = blocker / "sub" / "dir", ("cannot be created", "is a file")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out, needles = locked / "o", ("not writable", str(locked))
        if IS_ROOT:  # root may write anywhere: make the permission check see what a user would
            patch = ("import os\n_access = os.access\n"
                     f"os.access = lambda p, m, *a, **k: str(p) != {str(locked)!r} and _access(p, m, *a, **k)\n")
    try:
        proc = cli_patched(patch, command, "default", "--out", str(out), *QUICK)
    finally:
        if case == "unwritable":
            locked.chmod(0o755)
    one_error_line(proc, "output folder", str(out), *needles)
    assert not (tmp_path / "locked" / "o").exists()


# --- 7. bench: files without a usable input shape, absurd batch sizes ------------------


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda spec: spec.pop("input_shape"), "got 'nothing'"),
    (lambda spec: spec.update(input_shape=5), "got 5"),
], ids=["missing", "a number"])
def test_bench_file_without_input_shape(tmp_path, edit, needle):
    f = model_file(tmp_path / "m.tsk")
    resign(f, lambda doc, blobs: edit(doc["architecture"]["zoo_spec"]))
    one_error_line(cli("bench", str(f), "--repeats", "3"), "m.tsk", "input_shape", needle)


def test_bench_batch_out_of_range(tmp_path):
    f = model_file(tmp_path / "m.tsk")
    one_error_line(cli("bench", str(f), "--batch", "1,1e12", "--repeats", "3"), "--batch", "at most 65,536")


@pytest.mark.parametrize(("batch", "needle"), [("1e12", "at most 65,536"), ("1e400", "whole numbers"),
                                               ("nan", "whole numbers"), ("0", "whole numbers")])
def test_batch_sizes_are_checked(batch, needle):
    from torchshrink.cli import MAX_BATCH, _floats
    from torchshrink.errors import TorchshrinkError

    with pytest.raises(TorchshrinkError, match=needle):
        _floats(batch, "batch", whole=True, high=MAX_BATCH)
    assert _floats("1,65536", "batch", whole=True, high=MAX_BATCH) == [1, 65536]


# --- 8. eval of a file whose layers load as runtime modules ----------------------------


def test_eval_of_runtime_module_file(tmp_path):
    from torchshrink.format import load

    f = model_file(tmp_path / "dc.tsk", shared=True)
    fast = load(f)
    assert not any(True for _ in fast.parameters())  # what made evaluate's next() raise StopIteration
    proc = cli("eval", str(f), "--limit", "50")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "accuracy" in proc.stdout and "digits" in proc.stdout


def test_evaluate_without_parameters_or_buffers_runs_on_the_cpu():
    from torch.utils.data import TensorDataset

    from torchshrink.train import evaluate

    x = torch.eye(10)
    res = evaluate(nn.Flatten(), TensorDataset(x, torch.arange(10)))
    assert res["accuracy"] == 1.0


# --- 9. eval on a data set of another image shape ---------------------------------------


@pytest.mark.parametrize(("shape", "classes", "data", "needles"), [
    ((1, 28, 28), 10, None, ("takes 1x28x28 inputs", "fashion_mnist and mnist", "--data")),
    ((1, 28, 28), 10, "digits", ("takes 1x28x28 inputs", "digits images are 1x8x8")),
    ((1, 5, 5), 10, None, ("takes 1x5x5 inputs", "no known data set", "digits 1x8x8", "cifar10 3x32x32")),
    ((1, 8, 8), 5, None, ("predicts 5 classes", "digits has 10")),
], ids=["two fit", "digits for mnist", "none fits", "classes"])
def test_eval_data_of_another_shape(tmp_path, shape, classes, data, needles):
    f = model_file(tmp_path / "m.tsk", shape, classes)
    args = ["--data", data] if data else []
    one_error_line(cli("eval", str(f), *args, "--root", str(tmp_path)), "m.tsk", *needles)


def test_eval_picks_the_data_set_of_the_recorded_shape(tmp_path):
    f = model_file(tmp_path / "c.tsk", (3, 32, 32))  # cifar10's shape; its files are not in tmp_path
    one_error_line(cli("eval", str(f), "--root", str(tmp_path)), "cifar10 not found", "--download")


# --- 10. bad options: one line, not typer's usage box -----------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--bogus"], "No such option: --bogus"),
    (["run", "--out"], "'--out' requires an argument"),
    (["run", "--seed", "abc"], "Invalid value for '--seed'"),
    (["frob"], "No such command 'frob'"),
    (["eval"], "Missing argument"),
    (["bench", "x.tsk", "--repeats", "1"], "Invalid value for '--repeats'"),
    (["eval", "x.tsk", "--limit", "0"], "Invalid value for '--limit'"),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_bad_options_are_one_line(args, needle):
    line = one_error_line(cli(*args), needle)
    assert "╭" not in line and "Usage" not in line


def test_help_still_works():
    for cmd in ([], ["run"], ["eval"], ["bench"]):
        proc = cli(*cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    bare = cli()  # no_args_is_help: the help, as before, with typer's exit code for it
    assert bare.returncode == 2 and "Usage" in bare.stdout and "Traceback" not in bare.stderr


# --- 11. missing data says how to allow the download, from a recipe and from the CLI ----


def test_missing_data_names_every_way_to_download(tmp_path):
    proc = cli("run", "default", "--out", str(tmp_path / "o"), *QUICK,
               "--set", "data.name=mnist", "--set", f"data.root={tmp_path}")
    one_error_line(proc, "mnist not found", "data.download: true", "--set data.download=true", "download=True")


# --- the last resort in main(): OSError, MemoryError, RecursionError from user input ---


@pytest.mark.parametrize(("exc", "needles"), [
    ("OSError(5, 'Input/output error', sys.argv[2])", ("Input/output error", "m.tsk")),
    ("MemoryError()", ("ran out of memory", "torchshrink inspect", "MemoryError")),
    ("RecursionError('maximum recursion depth exceeded')", ("nested too deeply", "RecursionError")),
], ids=["OSError", "MemoryError", "RecursionError"])
def test_last_resort_errors_are_one_line(tmp_path, exc, needles):
    # inspect's file reader, replaced by one that fails (keeps torch out of the child: fast)
    patch = f"import sys, torchshrink.cli as c\ndef _fail(file):\n    raise {exc}\nc._file_rows = _fail\n"
    one_error_line(cli_patched(patch, "inspect", str(tmp_path / "m.tsk")), *needles)


def test_an_oserror_without_a_path_is_not_hidden(tmp_path):
    patch = ("import torchshrink.cli as c\n"
             "def _fail(file):\n    raise OSError('a bug, not bad input')\nc._file_rows = _fail\n")
    proc = cli_patched(patch, "inspect", str(tmp_path / "m.tsk"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "a bug, not bad input" in proc.stderr
