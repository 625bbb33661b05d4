"""GPU check: parity of every attention path, then throughput and MFU at three length mixes.

    python -m bench.gpu_check                # on a CUDA host, unattended, well under 5 minutes
    python -m bench.gpu_check --device cpu --small --seconds 1   # smoke run of the script itself

1. Parity: a random model with jina-reranker-v2's shapes, saved in the jina naming, scored by
   the native engine with each attention path the host offers (flash-attn varlen if installed,
   PyTorch varlen, padded SDPA, per-sequence SDPA) in bf16 and fp16, against the fp32 engine
   and against stock transformers in fp32 (padded SDPA, stock naming of the same weights).
2. Throughput in bf16 with the default path: pairs/s, tokens/s and model FLOPs utilisation for
   short (128-token), RAG-mixed (bench.workload) and long (1024-token) pairs.
Prints one markdown table per part. Needs no network; CI never runs it on a GPU.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from app.engine.loading import load_model
from app.engine.modeling import AttentionPath
from app.engine.native import NativeScorer, pick_attention
from app.engine.tokenize import Pair
from app.testmodel import JINA_V2_SHAPE, write_jina_checkpoint, write_test_model
from bench.engine import flops_per_pair, form_batches, matmul_rate
from bench.workload import make_pairs

# Dense bf16 tensor-core peaks (no sparsity), for MFU; other GPUs use the measured matmul rate.
PEAK_BF16 = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12,
             "A100": 312e12, "L4": 121e12, "L40S": 362e12}


def build_models(root: Path, small: bool) -> tuple[Path, Path]:
    size = dict(hidden=64, layers=2, heads=4) if small else JINA_V2_SHAPE
    stock = write_test_model(root / "stock", "xlm-roberta", max_length=1024, **size)
    return stock, write_jina_checkpoint(stock, root / "jina")


def parity_pairs(encoder_model: Path, n: int) -> list[Pair]:
    loaded = load_model(str(encoder_model), device="cpu", dtype="float32")
    rng = random.Random(0)
    out: list[Pair] = []
    for query, doc in make_pairs(n, seed=5, long_tail=0.2):
        pairs = loaded.encoder.encode(query, [doc]).pairs
        out.extend(pairs[: rng.randint(1, 2)])
    out.append(loaded.encoder.encode("q", [""]).pairs[0])  # the shortest input there is
    return out


def score_all(scorer: object, pairs: list[Pair], budget: int = 16384) -> np.ndarray:
    """Scores in input order, computed over scheduler-like batches."""
    index = {id(p): i for i, p in enumerate(pairs)}
    out = np.empty(len(pairs), dtype=np.float32)
    for batch in form_batches(pairs, budget, pads=False, lookahead=64):
        logits = scorer.score([p.ids for p in batch], [p.split for p in batch])  # type: ignore[attr-defined]
        for pair, logit in zip(batch, logits, strict=True):
            out[index[id(pair)]] = logit
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x.astype(np.float64))))


def parity(stock: Path, jina: Path, device: str, small: bool) -> None:
    pairs = parity_pairs(jina, 8 if small else 24)
    ref_native = score_all(load_model(str(jina), device=device, dtype="float32").scorers[0], pairs)
    ref_stock = score_all(
        load_model(str(stock), device=device, dtype="float32", backend="transformers").scorers[0],
        pairs,
    )
    print(f"\n## Parity ({len(pairs)} pairs, lengths {min(len(p.ids) for p in pairs)}-"
          f"{max(len(p.ids) for p in pairs)}; max |score difference|)\n")
    print("| dtype | attention | vs native fp32 | vs transformers fp32 |")
    print("|---|---|---|---|")
    fp32_gap = np.abs(sigmoid(ref_native) - sigmoid(ref_stock)).max()
    print(f"| float32 | {pick_attention(device, torch.float32)} | 0 | {fp32_gap:.2e} |")
    paths: list[AttentionPath] = ["sdpa-padded", "sdpa-per-sequence"]
    if device.startswith("cuda"):
        paths = [p for p in ("flash-attn-varlen", "torch-varlen") if _available(p)] + paths
    dtypes = ["bfloat16", "float16"] if device.startswith("cuda") else ["bfloat16"]
    for dtype in dtypes:
        loaded = load_model(str(jina), device=device, dtype=dtype)
        scorer = loaded.scorers[0]
        assert isinstance(scorer, NativeScorer)
        for path in paths:
            scorer.attention = path
            try:
                got = score_all(scorer, pairs)
            except Exception as exc:  # a path that cannot run here is reported, not fatal
                print(f"| {dtype} | {path} | error: {type(exc).__name__}: {exc} | |")
                continue
            print(f"| {dtype} | {path} | {np.abs(sigmoid(got) - sigmoid(ref_native)).max():.2e} |"
                  f" {np.abs(sigmoid(got) - sigmoid(ref_stock)).max():.2e} |")


def _available(path: str) -> bool:
    import importlib.util

    module = "flash_attn" if path == "flash-attn-varlen" else "torch.nn.attention.varlen"
    return importlib.util.find_spec(module) is not None


def random_pair(cls_id: int, sep_id: int, rng: random.Random, length: int) -> Pair:
    body = rng.choices(range(5, 400), k=length - 2)
    return Pair(np.array([cls_id, *body, sep_id], dtype=np.int32), 10, 0)


def throughput(jina: Path, device: str, seconds: float, small: bool) -> None:
    loaded = load_model(str(jina), device=device, dtype="bfloat16")
    scorer = loaded.scorers[0]
    enc = loaded.encoder
    rng = random.Random(1)
    mixes = {
        "short (128)": [random_pair(enc.cls_id, enc.sep_id, rng, 128) for _ in range(512)],
        "RAG mixed": [p for q, d in make_pairs(256, seed=2) for p in enc.encode(q, [d]).pairs],
        "long (1024)": [random_pair(enc.cls_id, enc.sep_id, rng, 1024) for _ in range(64)],
    }
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if all(w in name for w in k.split())), None)
    else:
        name, peak = "cpu", None
    measured = matmul_rate(torch.bfloat16, 1.0) if not device.startswith("cuda") else _cuda_rate()
    ceiling = peak or measured
    hidden = 64 if small else 768
    layers = 2 if small else 12
    print(f"\n## Throughput, bf16, attention {loaded.attention}, {name}; ceiling"
          f" {ceiling / 1e12:.1f} TFLOP/s ({'datasheet' if peak else 'measured matmul'};"
          f" measured matmul {measured / 1e12:.1f})\n")
    print("| mix | pairs | mean tokens | pairs/s | tokens/s | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for label, pairs in mixes.items():
        batches = form_batches(pairs, 32768, pads=False, lookahead=len(pairs))
        scorer.score([p.ids for p in batches[0]], [p.split for p in batches[0]])
        done_pairs = done_tokens = 0
        flops = 0.0
        _sync(device)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for batch in batches:
                scorer.score([p.ids for p in batch], [p.split for p in batch])
                done_pairs += len(batch)
                done_tokens += sum(len(p.ids) for p in batch)
                flops += sum(flops_per_pair(len(p.ids), hidden, layers, 4 * hidden) for p in batch)
        _sync(device)
        t = time.perf_counter() - t0
        print(f"| {label} | {len(pairs)} | {np.mean([len(p.ids) for p in pairs]):.0f} |"
              f" {done_pairs / t:.0f} | {done_tokens / t:.0f} | {flops / t / 1e12:.2f} |"
              f" {100 * flops / t / ceiling:.0f}% |")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cuda_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput mix")
    args = parser.parse_args()
    t0 = time.perf_counter()
    device = args.device
    print(f"# gpu_check: torch {torch.__version__}, device {device}"
          f" ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}),"
          f" default attention {pick_attention(device, torch.bfloat16)}")
    with tempfile.TemporaryDirectory() as tmp:
        stock, jina = build_models(Path(tmp), args.small)
        parity(stock, jina, device, args.small)
        throughput(jina, device, args.seconds, args.small)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
