"""GPU check: one table with every attention path's parity, speed and MFU, and start-up times.

    python -m bench.gpu_check                      # on a CUDA host, unattended, under 5 minutes
    python -m bench.gpu_check --device cuda:1      # another GPU (name and ceiling from it)
    python -m bench.gpu_check --device cpu --small --seconds 0.5   # smoke run of the script

A random model with jina-reranker-v2's shapes (saved in the jina naming, and in the stock naming
for transformers) is scored by the native engine with each attention path the host offers
(flash-attn varlen if it imports, PyTorch varlen, padded SDPA, per-sequence SDPA) in each
half-precision dtype. Per row: the largest raw-logit difference against the fp32 engine and
against padded SDPA in the same dtype (the kernel's own error; the row fails past the
tolerance), then pairs/s and model FLOPs utilisation for 128-token, RAG-mixed and 1024-token
pairs. Logits, not sigmoid scores, are compared: a random model's logits saturate the sigmoid,
which would hide differences. A second table does the same for the decoder path: a random
model with Qwen3-Reranker-0.6B's shapes, scored with its recipe by the native packed decoder
(causal attention per path) against stock AutoModelForCausalLM in fp32, on RAG-mixed prompts.
The exit status is 1 when any row fails. Needs no network; CI runs only the CPU smoke run.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.engine.decoder import DecoderReranker
from app.engine.loading import load_model
from app.engine.modeling import AttentionPath, CrossEncoder
from app.engine.native import NativeScorer, attention_candidates, import_kernel
from app.engine.tokenize import Pair, PairEncoder
from app.testmodel import (
    JINA_V2_SHAPE,
    QWEN3_06B_SHAPE,
    write_decoder_test_model,
    write_jina_checkpoint,
    write_test_model,
)
from bench.engine import QWEN3_SHAPE, Shape, flops_per_pair, form_batches, matmul_rate
from bench.workload import make_pairs

# Dense (no sparsity) bf16 tensor-core peaks, keyed by the words torch.cuda.get_device_name()
# returns ("NVIDIA H100 80GB HBM3" is the SXM part; "NVIDIA A100-SXM4-80GB"). The entry with
# the most matching words wins, so "L4" never matches "L40S" and "H100 NVL" beats "H100".
PEAK_BF16: dict[tuple[str, ...], float] = {
    ("H100", "HBM3"): 989e12, ("H100", "SXM"): 989e12, ("H100", "SXM5"): 989e12,
    ("H100", "PCIE"): 756e12, ("H100", "NVL"): 835e12, ("H100",): 756e12,
    ("H200",): 989e12, ("H200", "NVL"): 835e12,
    ("A100",): 312e12, ("A10",): 125e12, ("L40S",): 362e12, ("L40",): 181e12, ("L4",): 121e12,
}
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.05, "float16": 0.01}
"""Largest raw-logit difference a path may have against padded SDPA in its own dtype, per unit
of (1 + |logit|): a few units in the last place of the dtype through 12 layers."""
MIXES = ("short (128)", "RAG mixed", "long (1024)")


def peak_for(name: str) -> tuple[str, float] | None:
    """(matched entry, FLOP/s) for a CUDA device name; None when the GPU is not listed."""
    words = set(name.upper().replace("-", " ").split())
    matches = [key for key in PEAK_BF16 if set(key) <= words]
    if not matches:
        return None
    key = max(matches, key=lambda k: (len(k), sum(map(len, k))))
    return " ".join(key), PEAK_BF16[key]


@dataclass
class Mix:
    pairs: list[Pair]
    batches: list[list[Pair]]
    tokens: int
    flops: float


def build_models(root: Path, small: bool) -> tuple[Path, Path]:
    size = dict(hidden=64, layers=2, heads=4) if small else JINA_V2_SHAPE
    stock = write_test_model(root / "stock", "xlm-roberta", max_length=1024, **size)
    return stock, write_jina_checkpoint(stock, root / "jina")


def parity_pairs(model: Path, n: int) -> list[Pair]:
    loaded = load_model(str(model), device="cpu", dtype="float32")
    rng = random.Random(0)
    out: list[Pair] = []
    for query, doc in make_pairs(n, seed=5, long_tail=0.2):
        out.extend(loaded.encoder.encode(query, [doc]).pairs[: rng.randint(1, 2)])
    out.append(loaded.encoder.encode("q", [""]).pairs[0])  # the shortest input there is
    return out


def score_all(scorer: object, pairs: list[Pair], budget: int = 16384) -> np.ndarray:
    """Logits in input order, computed over scheduler-like batches."""
    index = {id(p): i for i, p in enumerate(pairs)}
    out = np.empty(len(pairs), dtype=np.float32)
    for batch in form_batches(pairs, budget, pads=False, lookahead=64):
        logits = scorer.score([p.ids for p in batch], [p.split for p in batch])  # type: ignore[attr-defined]
        for pair, logit in zip(batch, logits, strict=True):
            out[index[id(pair)]] = logit
    return out


def random_pair(cls_id: int, sep_id: int, rng: random.Random, length: int) -> Pair:
    body = rng.choices(range(5, 400), k=length - 2)
    return Pair(np.array([cls_id, *body, sep_id], dtype=np.int32), 10, 0)


def make_mixes(scorer_model: Path, small: bool) -> dict[str, Mix]:
    """The three length mixes, batched and with their token and FLOP sums precomputed."""
    enc = load_model(str(scorer_model), device="cpu", dtype="float32").encoder
    assert isinstance(enc, PairEncoder)
    rng = random.Random(1)
    hidden, layers = (64, 2) if small else (768, 12)
    shape = Shape(hidden=hidden, layers=layers, inter=4 * hidden, q_width=hidden,
                  kv_width=hidden, causal=False)
    raw = {
        MIXES[0]: [random_pair(enc.cls_id, enc.sep_id, rng, 128) for _ in range(512)],
        MIXES[1]: [p for q, d in make_pairs(256, seed=2) for p in enc.encode(q, [d]).pairs],
        MIXES[2]: [random_pair(enc.cls_id, enc.sep_id, rng, 1024) for _ in range(64)],
    }
    return {
        label: Mix(pairs, form_batches(pairs, 32768, pads=False, lookahead=len(pairs)),
                   sum(len(p.ids) for p in pairs),
                   sum(flops_per_pair(len(p.ids), shape) for p in pairs))
        for label, pairs in raw.items()
    }


def speed(scorer: NativeScorer, mix: Mix, device: str, seconds: float) -> tuple[float, float]:
    """(pairs/s, FLOP/s) of whole passes over the mix for about `seconds`."""
    first = mix.batches[0]
    scorer.score([p.ids for p in first], [p.split for p in first])  # warm-up
    _sync(device)
    passes, t0 = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - t0 < seconds:
        for batch in mix.batches:
            scorer.score([p.ids for p in batch], [p.split for p in batch])
        passes += 1
    _sync(device)
    elapsed = time.perf_counter() - t0
    return passes * len(mix.pairs) / elapsed, passes * mix.flops / elapsed


def usable(path: AttentionPath) -> bool:
    try:
        import_kernel(path)
    except Exception:
        return False
    return True


def run(device: str, small: bool, seconds: float) -> bool:
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stock, jina = build_models(Path(tmp), small)
        t_build = time.perf_counter() - t0
        pairs = parity_pairs(jina, 8 if small else 24)
        mixes = make_mixes(jina, small)
        t0 = time.perf_counter()
        fp32 = load_model(str(jina), device=device, dtype="float32")
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = score_all(fp32.scorers[0], pairs)
        t_first = time.perf_counter() - t0
        stock_ref = score_all(load_model(str(stock), device=device, dtype="float32",
                                         backend="transformers").scorers[0], pairs)
        del fp32
        if cuda:
            name = torch.cuda.get_device_name(device)
            found = peak_for(name)
            measured = _cuda_rate(device)
        else:
            name, found, measured = "cpu", None, matmul_rate(torch.bfloat16, 1.0)
        ceiling = found[1] if found else measured
        source = f"datasheet entry '{found[0]}'" if found else "measured matmul"
        print(f"# gpu_check: torch {torch.__version__}, {device} ({name}); MFU ceiling"
              f" {ceiling / 1e12:.1f} TFLOP/s bf16 ({source}; measured matmul"
              f" {measured / 1e12:.1f}); {len(pairs)} parity pairs of"
              f" {min(len(p.ids) for p in pairs)}-{max(len(p.ids) for p in pairs)} tokens")
        print(f"fp32 engine vs stock transformers fp32: max |logit difference|"
              f" {np.abs(ref - stock_ref).max():.2e}\n")
        ok = path_rows(jina, device, pairs, ref, mixes, seconds, ceiling)
        print(f"\nstart-up phases: random checkpoint written {t_build:.1f} s; fp32"
              f" model loaded onto {device} (attention self-check included) {t_load:.1f} s;"
              f" first batches (kernel selection) {t_first:.1f} s")
        ok &= decoder_rows(Path(tmp), device, small, seconds, ceiling)
    return ok


def decoder_rows(root: Path, device: str, small: bool, seconds: float, ceiling: float) -> bool:
    """The decoder table: Qwen3-Reranker-shaped model, each attention path, causal."""
    size = dict(hidden=64, layers=2, heads=4, kv_heads=2) if small else QWEN3_06B_SHAPE
    model = write_decoder_test_model(root / "Qwen3-Reranker-shaped", "qwen3", max_length=8192,
                                     **size)
    shape = Shape(hidden=64, layers=2, inter=128, q_width=64, kv_width=32, causal=True) if small \
        else QWEN3_SHAPE
    encoder = load_model(str(model), device="cpu", dtype="float32").encoder
    pairs = [p for q, d in make_pairs(16 if small else 48, seed=6, long_tail=0.1)
             for p in encoder.encode(q, [d]).pairs]
    mix = Mix(pairs, form_batches(pairs, 16384, pads=False, lookahead=len(pairs)),
              sum(len(p.ids) for p in pairs), sum(flops_per_pair(len(p.ids), shape) for p in pairs))
    ref = score_all(load_model(str(model), device=device, dtype="float32").scorers[0], pairs)
    stock = score_all(load_model(str(model), device=device, dtype="float32",
                                 backend="transformers").scorers[0], pairs)
    print(f"\n# decoder (qwen3-reranker recipe, {'tiny' if small else 'Qwen3-Reranker-0.6B'}"
          f" shapes): {len(pairs)} prompts of {min(len(p.ids) for p in pairs)}-"
          f"{max(len(p.ids) for p in pairs)} tokens; native fp32 vs stock AutoModelForCausalLM"
          f" fp32: max |logit difference| {np.abs(ref - stock).max():.2e}\n")
    ok = bool(np.abs(ref - stock).max() <= TOLERANCE["float32"])
    return path_rows(model, device, pairs, ref, {"RAG mixed": mix}, seconds, ceiling) and ok


def path_rows(model: Path, device: str, pairs: list[Pair], ref: np.ndarray,
              mixes: dict[str, Mix], seconds: float, ceiling: float) -> bool:
    """One table row per half-precision dtype and attention path of the native engine: its
    logits against fp32 (`ref`) and against padded SDPA in its own dtype (a row fails past
    the tolerance), then pairs/s and MFU per mix. False when any row failed."""
    cuda = device.startswith("cuda")
    print("| dtype | attention | max Δlogit vs fp32 | vs padded, same dtype | pairs/s "
          + " | ".join(mixes) + " | MFU " + " | ".join(mixes) + " | |")
    print("|---|---|---|---|" + "---|" * (2 * len(mixes)) + "---|")
    ok = True
    for dtype in ["bfloat16", "float16"] if cuda else ["bfloat16"]:
        scorer = load_model(str(model), device=device, dtype=dtype).scorers[0]
        assert isinstance(scorer, NativeScorer)
        net = scorer.model
        if isinstance(net, CrossEncoder):
            causal, head_dim = False, net.cfg.hidden_size // net.cfg.num_heads
        else:
            assert isinstance(net, DecoderReranker)
            causal, head_dim = True, net.cfg.head_dim
        paths = [p for p in attention_candidates(device, getattr(torch, dtype), causal=causal,
                                                 head_dim=head_dim) if usable(p)]
        if not cuda:
            paths.append("sdpa-padded")
        scorer.attention = "sdpa-padded"
        padded = score_all(scorer, pairs)
        for path in paths:
            scorer.attention = path
            try:
                got = score_all(scorer, pairs)
                rates = [speed(scorer, mix, device, seconds) for mix in mixes.values()]
            except Exception as exc:  # a path that cannot run here is a failed row
                print(f"| {dtype} | {path} | error: {type(exc).__name__}: {exc} |"
                      + " |" * (1 + 2 * len(mixes)) + " FAIL |")
                ok = False
                continue
            own = float(np.max(np.abs(got - padded) / (1 + np.abs(padded))))
            passed = own <= TOLERANCE[dtype]
            ok &= passed
            print(f"| {dtype} | {path} | {np.abs(got - ref).max():.2e} | {own:.2e} | "
                  + " | ".join(f"{r[0]:.0f}" for r in rates) + " | "
                  + " | ".join(f"{100 * r[1] / ceiling:.0f}%" for r in rates)
                  + f" | {'ok' if passed else 'FAIL'} |")
    return ok


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _cuda_rate(device: str) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize(device)
    return 2 * 8192**3 * 20 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="per mix and attention path (the default keeps it under 5 min)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    ok = run(args.device, args.small, args.seconds)
    print(f"total {time.perf_counter() - t0:.0f} s: {'all rows ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
