"""torchshrink.data: digits split, IDX and CIFAR readers, every documented error, downloads.

The MNIST/CIFAR tests write tiny files in the official formats into tmp_path; downloads
are served by a fake ``urlopen``, so nothing here touches the network.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

import torchshrink.data.download as dl
from torchshrink.data import DataBundle, cifar, idx, list_datasets, load_data
from torchshrink.data.digits import stratified_split
from torchshrink.errors import DataError

# ---------------------------------------------------------------- helpers: IDX files


def idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def mnist_arrays(n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_idx_set(directory, arrays, gz: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


# ---------------------------------------------------------------- helpers: CIFAR files


def py2_pickle(obj: object) -> bytes:
    """Protocol 2 laid out like the official Python 2 files: STRING opcodes, numpy.core names."""

    def enc(v: object) -> bytes:
        if isinstance(v, str):
            v = v.encode("latin1")
        if isinstance(v, bytes):
            short = len(v) < 256
            return (b"U" + bytes([len(v)]) if short else b"T" + struct.pack("<i", len(v))) + v
        if isinstance(v, int):
            return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)
        if isinstance(v, list):
            return b"](" + b"".join(map(enc, v)) + b"e"
        if isinstance(v, dict):
            return b"}q\x00(" + b"".join(enc(k) + enc(x) for k, x in v.items()) + b"u"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        dtype = b"cnumpy\ndtype\n" + enc("u1") + enc(0) + enc(1) + b"\x87R"
        minus_one = b"J" + struct.pack("<i", -1)
        dtype += b"(" + enc(3) + enc("|") + b"NNN" + minus_one + minus_one + enc(0) + b"tb"
        shape = enc(v.shape[0]) + enc(v.shape[1]) + b"\x86"
        array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        array += enc(0) + b"\x85" + enc("b") + b"\x87R"  # _reconstruct(ndarray, (0,), "b")
        state = enc(1) + shape + dtype + b"\x89" + enc(v.tobytes())  # version, shape, dtype, F
        return array + b"(" + state + b"tb"

    return b"\x80\x02" + enc(obj) + b"."


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_files(n_per_batch: int = 2) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    meta = {"label_names": CLASSES, "num_vis": 3072, "num_cases_per_batch": 10000}
    files = {"batches.meta": meta}
    for name in (*cifar.TRAIN_FILES, cifar.TEST_FILE):
        files[name] = {
            "batch_label": f"{name} of 5",
            "labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n_per_batch)],
        }
    return files


def write_cifar(directory, files, style: str = "py3") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        data = py2_pickle(obj) if style == "py2" else pickle.dumps(obj, protocol=4)
        (directory / name).write_bytes(data)


def cifar_reference(files, names) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([files[n]["data"] for n in names]).reshape(-1, 3, 32, 32) / 255.0
    mean = np.array(cifar.MEAN).reshape(1, 3, 1, 1)
    std = np.array(cifar.STD).reshape(1, 3, 1, 1)
    return (x - mean) / std, np.concatenate([files[n]["labels"] for n in names])


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def fake_urlopen(served: dict[str, bytes], calls: list[str]):
    """An urlopen that serves ``served[basename]`` and fails like a network for the rest."""

    def urlopen(url: str, timeout: float | None = None) -> FakeResponse:
        calls.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in served:
            raise urllib.error.URLError("Name or service not known")
        return FakeResponse(served[name])

    return urlopen


# ---------------------------------------------------------------- registry and arguments


def test_list_datasets():
    assert list_datasets() == ["cifar10", "digits", "fashion_mnist", "mnist"]


def test_unknown_name_lists_allowed_names():
    with pytest.raises(DataError, match="'imagenet'.*cifar10, digits, fashion_mnist, mnist"):
        load_data("imagenet")


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 2.5}, {"split_seed": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(DataError, match=f"The '{next(iter(kwargs))}' parameter of load_data must be an int"):
        load_data("digits", **kwargs)


# ---------------------------------------------------------------- digits


def test_digits_matches_sklearn_with_train_statistics():
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    bundle = load_data("digits", split_seed=3)
    assert isinstance(bundle, DataBundle)
    assert (bundle.name, bundle.input_shape, bundle.num_classes) == ("digits", (1, 8, 8), 10)
    assert bundle.classes == tuple("0123456789")
    with pytest.raises(dataclasses.FrozenInstanceError):
        bundle.name = "other"  # type: ignore[misc]
    train_idx, test_idx = stratified_split(labels, 0.25, 3)
    pixels = images / 16.0
    mean, std = pixels[train_idx].mean(), pixels[train_idx].std()
    for ds, ix in ((bundle.train, train_idx), (bundle.test, test_idx)):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        expected = ((pixels[ix] - mean) / std).reshape(-1, 1, 8, 8)
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), labels[ix])
    x_train = bundle.train.tensors[0]
    assert abs(x_train.mean().item()) < 1e-5
    assert abs(x_train.std(correction=0).item() - 1.0) < 1e-5


def test_digits_split_is_stratified_and_partitions_the_data():
    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    train_idx, test_idx = stratified_split(labels, 0.25, 0)
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(len(labels)))
    counts = np.bincount(labels[test_idx], minlength=10)
    assert np.all(np.abs(counts - np.bincount(labels) / 4) <= 0.5)
    bundle = load_data("digits")
    assert (len(bundle.train), len(bundle.test)) == (1347, 450)


def test_digits_split_depends_only_on_split_seed():
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_data("digits")
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_data("digits")
    c = load_data("digits", split_seed=1)
    for ta, tb in zip(a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_limit_keeps_the_first_samples():
    full, small = load_data("digits"), load_data("digits", limit=10)
    assert (len(small.train), len(small.test)) == (10, 10)
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:10])
    assert torch.equal(small.test.tensors[1], full.test.tensors[1][:10])


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("subdir", ["", "mnist", "mnist/raw", "MNIST/raw"])
def test_mnist_reads_idx_files(tmp_path, subdir, gz):
    arrays = mnist_arrays()
    write_idx_set(tmp_path / subdir, arrays, gz)
    bundle = load_data("mnist", tmp_path)
    assert (bundle.name, bundle.input_shape, bundle.num_classes) == ("mnist", (1, 28, 28), 10)
    for ds, prefix in ((bundle.train, "train"), (bundle.test, "t10k")):
        x, y = ds.tensors
        expected = (arrays[f"{prefix}-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(y.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


def test_fashion_mnist_normalization_classes_and_limit(tmp_path):
    arrays = mnist_arrays()
    write_idx_set(tmp_path / "FashionMNIST" / "raw", arrays, gz=True)
    bundle = load_data("fashion_mnist", tmp_path, limit=2)
    assert bundle.classes[0] == "T-shirt/top" and bundle.classes[9] == "Ankle boot"
    assert (len(bundle.train), len(bundle.test)) == (2, 2)
    expected = (arrays["train-images-idx3-ubyte"][:2, None] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(bundle.train.tensors[0].numpy(), expected, rtol=0, atol=1e-6)


def test_missing_idx_files_error_names_files_directories_and_urls(tmp_path):
    arrays = mnist_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    write_idx_set(tmp_path, arrays, gz=False)
    with pytest.raises(DataError) as info:
        load_data("mnist", tmp_path)
    message = str(info.value)
    for name in idx.FILES:
        assert name in message
        assert f"https://ossci-datasets.s3.amazonaws.com/mnist/{name}.gz" in message
    assert str(tmp_path / "mnist" / "raw") in message and "download=True" in message


def _bad_magic(b): return b"\x01" + b[1:]
def _bad_type(b): return b[:2] + b"\x07" + b[3:]
def _truncated(b): return b[:-10]
def _trailing(b): return b + b"\x00"
def _huge_dims(b): return b[:4] + struct.pack(">I", 2**31) + b[8:]  # 2^31 images, 5 present
def _cut_gzip(b): return gzip.compress(b)[:-20]
def _labels_as_images(b): return idx_bytes(np.zeros(5, np.uint8))
def _wrong_size(b): return idx_bytes(np.zeros((5, 27, 28), np.uint8))
def _int_pixels(b): return idx_bytes(np.zeros((5, 28, 28), ">i4"), 0x0C)


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (_bad_magic, "bad magic number 0x01000803"),
        (_bad_type, "bad magic number"),
        (_truncated, "truncated: shape \\(5, 28, 28\\) needs 3920 data bytes, found 3910"),
        (_trailing, "trailing bytes"),
        (_huge_dims, "truncated"),
        (_cut_gzip, "Compressed file ended"),
        (_labels_as_images, "must hold uint8 images of 28x28"),
        (_wrong_size, "must hold uint8 images of 28x28"),
        (_int_pixels, "must hold uint8 images"),
    ],
)
def test_malformed_idx_file_is_a_data_error_naming_the_file(tmp_path, corrupt, problem):
    write_idx_set(tmp_path, mnist_arrays(), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=f"train-images-idx3-ubyte.*{problem}"):
        load_data("mnist", tmp_path)


def test_idx_label_errors(tmp_path):
    arrays = mnist_arrays()
    arrays["train-labels-idx1-ubyte"] = np.array([0, 1, 2, 3, 10], np.uint8)
    write_idx_set(tmp_path, arrays, gz=True)
    with pytest.raises(DataError, match="contains label 10; labels must be in \\[0, 10\\)"):
        load_data("mnist", tmp_path)
    arrays["train-labels-idx1-ubyte"] = np.array([0, 1, 2, 3], np.uint8)
    write_idx_set(tmp_path, arrays, gz=True)
    with pytest.raises(DataError, match="has 5 images but .* has 4 labels"):
        load_data("mnist", tmp_path)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("style", ["py2", "py3"])
@pytest.mark.parametrize("in_subdir", [True, False])
def test_cifar10_reads_batches(tmp_path, style, in_subdir):
    files = cifar_files()
    write_cifar(tmp_path / cifar.BATCH_DIR if in_subdir else tmp_path, files, style)
    bundle = load_data("cifar10", tmp_path)
    assert (bundle.name, bundle.input_shape, bundle.num_classes) == ("cifar10", (3, 32, 32), 10)
    assert bundle.classes == tuple(CLASSES)
    for ds, names in ((bundle.train, cifar.TRAIN_FILES), (bundle.test, [cifar.TEST_FILE])):
        x, y = ds.tensors
        expected_x, expected_y = cifar_reference(files, names)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        np.testing.assert_allclose(x.numpy(), expected_x, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), expected_y)


def test_cifar10_limit_reads_only_needed_batches(tmp_path):
    files = cifar_files()
    write_cifar(tmp_path, files)
    (tmp_path / "data_batch_5").write_bytes(b"never read")
    bundle = load_data("cifar10", tmp_path, limit=3)
    expected_x, _ = cifar_reference(files, cifar.TRAIN_FILES[:2])
    np.testing.assert_allclose(bundle.train.tensors[0].numpy(), expected_x[:3], rtol=0, atol=1e-5)
    assert len(bundle.test) == 2


def test_missing_cifar_files_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_data("cifar10", tmp_path)
    message = str(info.value)
    assert all(name in message for name in cifar.FILES)
    assert str(tmp_path / cifar.BATCH_DIR) in message and cifar.ARCHIVE_URL in message
    assert "download=True" in message


class _Call:
    """Pickles as a call of ``func(*args)``: what a hostile file would contain."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (lambda m: b"cos\nsystem\n(S'touch " + m + b"'\ntR.", "os.system"),
        (lambda m: pickle.dumps({"x": _Call(eval, f"open({m!r}, 'w')")}, 4), "builtins.eval"),
        (lambda m: pickle.dumps(_Call(np.load, m.decode()), protocol=2), "numpy.load"),
    ],
)
def test_cifar_pickle_with_forbidden_global_is_refused_unexecuted(tmp_path, payload, named):
    write_cifar(tmp_path, cifar_files())
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(payload(str(marker).encode()))
    with pytest.raises(DataError, match=f"Refusing to load {named}"):
        load_data("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar_array_larger_than_its_file_is_refused(tmp_path):
    write_cifar(tmp_path, cifar_files())
    hostile = {"data": _Call(np.ndarray, (1000, 3072), np.dtype("u1")), "labels": [0] * 1000}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(hostile, protocol=2))
    with pytest.raises(DataError, match="test_batch: array 'data' holds more bytes than the file"):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda b: {**b, "data": b["data"].astype(np.float32)}, "unexpected entry 'data'"),
        (lambda b: {**b, "data": b["data"][:, :100]}, "shape \\(N, 3072\\)"),
        (lambda b: {**b, "labels": b["labels"][:1]}, "'labels' must be a list of 2 ints"),
        (lambda b: {**b, "labels": [0, 10]}, "ints in \\[0, 10\\)"),
        (lambda b: [b["labels"]], "must hold a dict"),
    ],
)
def test_cifar_batch_with_wrong_structure(tmp_path, edit, problem):
    files = cifar_files()
    files["test_batch"] = edit(files["test_batch"])
    write_cifar(tmp_path, files)
    with pytest.raises(DataError, match=f"test_batch.*{problem}"):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize(
    "raw", [b"\x80\x02K\x01r\xff\xff\xff\xff.", b"not a pickle at all", b"\x80\x02}(U\x04data"]
)
def test_cifar_garbage_and_memo_bomb(tmp_path, raw):
    write_cifar(tmp_path, cifar_files())
    (tmp_path / "batches.meta").write_bytes(raw)
    with pytest.raises(DataError, match="batches.meta is not a valid CIFAR-10 batch file"):
        load_data("cifar10", tmp_path)


# ---------------------------------------------------------------- downloads (fake network)


def test_fetch_writes_file_when_checksum_matches(tmp_path, monkeypatch):
    payload, calls = b"published bytes", []
    monkeypatch.setattr(dl, "urlopen", fake_urlopen({"f.gz": payload}, calls))
    urls = ["https://down.example/f.gz", "https://mirror.example/f.gz"]
    dest = dl.fetch(urls, tmp_path / "sub" / "f.gz", hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload
    assert calls == urls[:1]
    assert [p.name for p in dest.parent.iterdir()] == ["f.gz"]  # no temporary file left


def test_fetch_rejects_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "urlopen", fake_urlopen({"f.gz": b"tampered"}, []))
    expected = "https://x.example/f.gz \\(MD5 .* differs from the published 0+\\)"
    with pytest.raises(DataError, match=expected):
        dl.fetch(["https://x.example/f.gz"], tmp_path / "f.gz", "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_fetch_network_failure_names_url(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "urlopen", fake_urlopen({}, []))
    with pytest.raises(DataError, match="https://x.example/f.gz \\(.*Name or service not known"):
        dl.fetch(["https://x.example/f.gz"], tmp_path / "f.gz", "0" * 32)


def test_no_download_unless_asked(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dl, "urlopen", fake_urlopen({}, calls))
    with pytest.raises(DataError, match="download=True"):
        load_data("mnist", tmp_path)
    assert calls == []


def test_mnist_download_end_to_end(tmp_path, monkeypatch):
    arrays = mnist_arrays()
    served = {f"{name}.gz": gzip.compress(idx_bytes(a)) for name, a in arrays.items()}
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in served.items()}
    source = dataclasses.replace(idx.SOURCES["mnist"], md5=md5)
    monkeypatch.setitem(idx.SOURCES, "mnist", source)
    calls = []
    monkeypatch.setattr(dl, "urlopen", fake_urlopen(served, calls))
    bundle = load_data("mnist", tmp_path, download=True)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(served)
    assert calls == [source.mirrors[0] + name for name in served]
    np.testing.assert_array_equal(bundle.test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_mnist_download_with_official_checksums_rejects_other_bytes(tmp_path, monkeypatch):
    served = {f"{name}.gz": b"not the real file" for name in idx.FILES}
    monkeypatch.setattr(dl, "urlopen", fake_urlopen(served, []))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*published f68b3c2dcbeaaa9fbd"):
        load_data("mnist", tmp_path, download=True)


def test_cifar10_download_end_to_end(tmp_path, monkeypatch):
    files = cifar_files()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, obj in files.items():
            data = pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"{cifar.BATCH_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buffer.getvalue()
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    monkeypatch.setattr(dl, "urlopen", fake_urlopen({"cifar-10-python.tar.gz": archive}, []))
    bundle = load_data("cifar10", tmp_path, download=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [cifar.BATCH_DIR]  # archive removed
    _, expected_y = cifar_reference(files, cifar.TRAIN_FILES)
    np.testing.assert_array_equal(bundle.train.tensors[1].numpy(), expected_y)
