"""compress-hf on a tiny random BERT saved as a sentence-transformers folder (no real model needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchshrink.forms import FORMS
from torchshrink.format.streams import Options
from torchshrink.hf.folder import hide_broken_torchvision, sentence_transformers
from torchshrink.hf.gptq import decoded, gptq, response_error, round_to_grid

hide_broken_torchvision()  # before transformers is first imported (it caches what it found)
pytest.importorskip("sentence_transformers")

WORDS = ("the a cat dog sat on mat ran in park big small red blue house tree river boat sun rain wind "
         "city road car bus train book read write song sing green old new fast slow").split()
SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "the big red house", "a small blue boat on the river",
    "the old train is slow", "a new car is fast", "read a book in the sun", "sing a song in the rain",
    "the wind in the old tree", "a bus on the city road", "write a book on the train", "the green park in the city",
    "a red car on the road", "the dog sat in the boat", "a cat in the house", "the sun on the green tree",
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 random BERT as a sentence-transformers folder (mean pooling, normalized)."""
    st = sentence_transformers()
    import transformers
    from sentence_transformers.sentence_transformer import modules

    path = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    transformers.BertModel(cfg).save_pretrained(str(path))
    model = st.SentenceTransformer(modules=[modules.Transformer(str(path)), modules.Pooling(32, "mean"),
                                            modules.Normalize()], device="cpu")
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calibration.txt"
    p.write_text("\n".join(SENTENCES) + "\n")
    return p


@pytest.fixture(scope="module")
def compressed(tiny_folder, calibration, tmp_path_factory):
    from torchshrink.hf import compress_hf, save_compressed

    result = compress_hf(tiny_folder, 4.0, calibration)
    out = tmp_path_factory.mktemp("out") / "tiny_tsk"
    info = save_compressed(result, out)
    return result, out, info


def test_ratio_is_honoured_in_real_file_bytes(compressed):
    result, out, info = compressed
    assert info.file_bytes == (out / "model.tsk").stat().st_size
    assert result.dense_bytes / info.file_bytes >= 4.0
    assert not (out / "model.safetensors").exists()
    assert {r["form"] for r in info.records if r["name"] in {f"{n}.weight" for n in result.bits}} == {"rowgrid"}


def test_load_gives_the_decoded_weights_exactly(compressed):
    import torchshrink as ts
    from torchshrink.core.transform import effective_state_dict
    from torchshrink.hf.folder import transformer_of

    result, out, _ = compressed
    loaded = ts.load(out)
    assert type(loaded).__name__ == "SentenceTransformer"
    want = effective_state_dict(result.transformer)
    got = transformer_of(loaded).state_dict()
    assert set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name
    for name, bits in result.bits.items():  # each quantized weight takes at most 2**bits values per row
        w = want[f"{name}.weight"]
        assert max(len(torch.unique(row)) for row in w) <= 2 ** bits
    s = SENTENCES[:4]
    assert torch.equal(loaded.encode(s, convert_to_tensor=True), result.st_model.encode(s, convert_to_tensor=True))
    assert type(ts.load(out / "model.tsk")).__name__ == "SentenceTransformer"


def _correlated_layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(48, 48, generator=g)
    x = torch.randn(600, 48, generator=g) @ mix + 0.05 * torch.randn(600, 48, generator=g)
    w = torch.randn(40, 48, generator=g) * 0.1
    return w, x


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_plain_rounding_on_response_error(bits):
    w, x = _correlated_layer()
    h = (x.T @ x).double()
    plain, aware = decoded(round_to_grid(w, bits)), decoded(gptq(w, h, bits))

    def reference(w_hat: torch.Tensor) -> float:  # ||X Wᵀ − X Ŵᵀ||², straight from the definition
        return float(((x.double() @ w.double().T - x.double() @ w_hat.double().T) ** 2).sum())

    assert response_error(w, aware, h) == pytest.approx(reference(aware), rel=1e-6)
    assert reference(aware) < 0.8 * reference(plain)


def test_rowgrid_form_round_trips_and_decodes_as_the_formula():
    w, _ = _correlated_layer(1)
    packed = round_to_grid(w, 3)
    form = FORMS["rowgrid"]
    enc = form.encode(packed, form.plan(packed, Options())[1], Options())
    assert enc.nbytes == form.plan(packed, Options())[0]
    want = packed["offset"].astype(np.float32)[:, None] + packed["scale"].astype(np.float32)[:, None] * \
        packed["indices"].astype(np.float32)
    assert np.array_equal(form.unpack(packed), want)


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from torchshrink import cli

    monkeypatch.setattr(sys, "argv", ["torchshrink", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


def test_cli_errors_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, tiny_folder, calibration):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    not_hf = tmp_path / "not_hf"
    not_hf.mkdir()
    cases = [
        ((str(tmp_path / "missing"), "--calibration", str(calibration)), "is not a folder"),
        ((str(not_hf), "--calibration", str(calibration)), "no config.json"),
        ((str(tiny_folder), "--ratio", "1"), "greater than 1"),
        ((str(tiny_folder), "--calibration", str(empty)), "is empty"),
    ]
    for args, needle in cases:
        code, err = _cli(monkeypatch, capsys, "compress-hf", *args, "--out", str(tmp_path / "o"), "--no-progress")
        assert code == 2, err
        assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_writes_a_folder_that_loads(monkeypatch, capsys, tmp_path, tiny_folder, calibration):
    import torchshrink as ts

    out = tmp_path / "cli_out"
    code, err = _cli(monkeypatch, capsys, "compress-hf", str(tiny_folder), "--ratio", "3",
                     "--calibration", str(calibration), "--out", str(out), "--no-progress")
    assert code == 0, err
    assert (out / "model.tsk").is_file() and (out / "tokenizer.json").is_file() and (out / "modules.json").is_file()
    emb = ts.load(out).encode(SENTENCES[:3], convert_to_tensor=True)
    assert emb.shape == (3, 32) and torch.isfinite(emb).all()
