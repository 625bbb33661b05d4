"""In-process engine benchmark: native vs transformers backend on the same pairs, same batches.

    .venv/bin/python -m bench.engine [--pairs 96] [--rounds 2] [--dtype bfloat16]
    .venv/bin/python -m bench.engine --model qwen3-0.6b --pairs 24
    .venv/bin/python -m bench.engine --last-layer-ablation [--rounds 3]
    .venv/bin/python -m bench.engine --attention-ablation [--rounds 3]
    .venv/bin/python -m bench.engine --linear-ablation [--rounds 3]

Generates (once, cached under --model-dir) a random model with jina-reranker-v2's shapes
(12 layers, hidden 768, 12 heads, vocab 250002, max length 1024), or with `--model qwen3-0.6b`
one with Qwen3-Reranker-0.6B's (28 layers, hidden 1024, 16 query and 8 key/value heads of 128,
vocab 151669; served with its recipe, prompts up to 8192 tokens), tokenizes a fixed-seed
RAG-like mix of pairs (queries 5-25 words, documents 20-400 words, 5% of 1000-3000 words,
windowed like the service does), and runs the backends alternately (A B A B) over batches
formed like the scheduler forms them (length-sorted look-ahead, token budget, padded cost for
the padding backend). Reports pairs/s, tokens/s, and the achieved FLOP rate against this
machine's measured bf16/fp32 matmul rate (the ceiling).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engine.backends import Scorer
from app.engine.loading import load_model
from app.engine.tokenize import Pair
from app.runtime import default_batch_tokens
from bench.workload import make_pairs

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class Shape:
    """What the FLOP count and the matmul ceiling need of a model."""

    hidden: int
    layers: int
    inter: int
    q_width: int
    kv_width: int
    causal: bool


JINA_SHAPE = Shape(hidden=768, layers=12, inter=3072, q_width=768, kv_width=768, causal=False)
QWEN3_SHAPE = Shape(hidden=1024, layers=28, inter=3072, q_width=2048, kv_width=1024,
                    causal=True)
MODELS = {"jina": (Path("/tmp/reranker-bench/jina-shaped"), JINA_SHAPE),
          "qwen3-0.6b": (Path("/tmp/reranker-bench/Qwen3-Reranker-0.6B-shaped"), QWEN3_SHAPE)}


def ensure_model(model_dir: Path, kind: str = "jina") -> Path:
    if not (model_dir / "config.json").exists():
        from app.testmodel import (
            JINA_V2_SHAPE,
            QWEN3_06B_SHAPE,
            write_decoder_test_model,
            write_test_model,
        )

        print(f"writing a full-size random {kind} model to {model_dir} ...", flush=True)
        if kind == "jina":
            write_test_model(model_dir, "xlm-roberta", max_length=1024, **JINA_V2_SHAPE)
        else:
            write_decoder_test_model(model_dir, "qwen3", max_length=40960, **QWEN3_06B_SHAPE)
    return model_dir


def form_batches(pairs: list[Pair], budget: int, pads: bool, lookahead: int) -> list[list[Pair]]:
    """Greedy batches under the token budget over length-sorted look-ahead windows of the
    arrival-ordered stream: what the scheduler sees when `lookahead` pairs are queued."""
    batches: list[list[Pair]] = []
    for start in range(0, len(pairs), lookahead):
        window = sorted(pairs[start : start + lookahead], key=lambda p: len(p.ids))
        batch: list[Pair] = []
        for pair in window:
            size = len(batch) + 1
            cost = size * len(pair.ids) if pads else sum(len(p.ids) for p in batch) + len(pair.ids)
            if batch and cost > budget:
                batches.append(batch)
                batch = []
            batch.append(pair)
        if batch:
            batches.append(batch)
    return batches


def matmul_rate(dtype: torch.dtype, seconds: float = 3.0, shape: Shape = JINA_SHAPE) -> float:
    """FLOP/s of a [2048, hidden] x [hidden, intermediate] matmul, the model's dominant shape."""
    a = torch.randn(2048, shape.hidden, dtype=dtype)
    b = torch.randn(shape.hidden, shape.inter, dtype=dtype)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 2048 * shape.hidden * shape.inter * n / (time.perf_counter() - t0)


def flops_per_pair(length: int, shape: Shape = JINA_SHAPE) -> float:
    """Forward FLOPs of one sequence: linears (Q, K, V, out; the MLP's two, or SwiGLU's
    three) plus attention scores and values (half of them under a causal mask)."""
    h = shape.hidden
    mlp = (3 if shape.causal else 2) * h * shape.inter
    linear = 2 * length * (2 * h * shape.q_width + 2 * h * shape.kv_width + mlp)
    attn = 4 * length * length * shape.q_width / (2 if shape.causal else 1)
    return float(shape.layers * (linear + attn))


def run_backend(scorer: Scorer, batches: list[list[Pair]]) -> float:
    scorer.score([p.ids for p in batches[0][:2]], [p.split for p in batches[0][:2]])
    t0 = time.perf_counter()
    for batch in batches:
        scorer.score([p.ids for p in batch], [p.split for p in batch])
    return time.perf_counter() - t0


def profile(scorer: Scorer, batches: list[list[Pair]]) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batch = batches[len(batches) // 2]
    scorer.score([p.ids for p in batch[:2]], [p.split for p in batch[:2]])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        scorer.score([p.ids for p in batch], [p.split for p in batch])
    print(f"one batch: {len(batch)} sequences, {sum(len(p.ids) for p in batch)} tokens")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def last_layer_ablation(scorer: Scorer, batches: list[list[Pair]], rounds: int) -> None:
    """A B A B: the native cross-encoder as served (its last layer computed for the one
    position the head reads) against the same model with that layer run for every token."""
    from app.engine import modeling

    served = modeling.Layer.forward_first_tokens
    path: modeling.AttentionPath = getattr(scorer, "attention", "sdpa-per-sequence")

    def every_token(self: modeling.Layer, x: torch.Tensor,
                    batch: modeling.PackedBatch) -> torch.Tensor:
        return self.forward(x, batch, path)[batch.cu_seqlens[:-1].long()]

    variants = {"every token": every_token, "one position": served}
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for r in range(rounds):
            for name, layer_fn in variants.items():
                modeling.Layer.forward_first_tokens = layer_fn  # type: ignore[method-assign]
                times[name].append(run_backend(scorer, batches))
                print(f"round {r + 1} last layer for {name:12s} {times[name][-1]:7.2f} s",
                      flush=True)
    finally:
        modeling.Layer.forward_first_tokens = served  # type: ignore[method-assign]
    ratio = statistics.median(times["every token"]) / statistics.median(times["one position"])
    print(f"\nlast layer for one position / for every token: {ratio:.2f}x throughput")


def attention_ablation(scorer: Scorer, batches: list[list[Pair]], rounds: int) -> None:
    """A B A B: the native engine on the attention path its start-up chose against PyTorch's
    SDPA per sequence, on the same batches."""
    chosen = getattr(scorer, "attention", "sdpa-per-sequence")
    paths = dict.fromkeys([chosen, "sdpa-per-sequence"])
    times: dict[str, list[float]] = {path: [] for path in paths}
    for r in range(rounds):
        for path in paths:
            scorer.attention = path  # type: ignore[attr-defined]
            times[path].append(run_backend(scorer, batches))
            print(f"round {r + 1} attention {path:18s} {times[path][-1]:7.2f} s", flush=True)
    scorer.attention = chosen  # type: ignore[attr-defined]
    for path in paths:
        print(f"{path}: {statistics.median(times[path]):.2f} s (median)")
    ratio = statistics.median(times["sdpa-per-sequence"]) / statistics.median(times[chosen])
    print(f"\n{chosen} / sdpa-per-sequence throughput: {ratio:.2f}x")


def linear_ablation(scorer: Scorer, batches: list[list[Pair]], rounds: int) -> None:
    """A B A B: the native engine's linears as start-up chose them (oneDNN with the bias
    fused, where its self-check passed) against `F.linear`, on the same batches."""
    from app.engine.modeling import Linear

    model: torch.nn.Module = scorer.model  # type: ignore[attr-defined]
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    chosen = all(m.fused for m in linears)
    names = {True: "fused bias", False: "F.linear"}
    times: dict[bool, list[float]] = {chosen: [], not chosen: []}
    try:
        for r in range(rounds):
            for fused in times:
                for m in linears:
                    m.fused = fused
                times[fused].append(run_backend(scorer, batches))
                print(f"round {r + 1} linears {names[fused]:10s} {times[fused][-1]:7.2f} s",
                      flush=True)
    finally:
        for m in linears:
            m.fused = chosen
    ratio = statistics.median(times[False]) / statistics.median(times[True])
    print(f"\nfused bias / F.linear throughput: {ratio:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=list(MODELS), default="jina",
                        help="the shapes of jina-reranker-v2 or of Qwen3-Reranker-0.6B")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where the random model is written once (default: /tmp/...)")
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="default: the server's default for the device")
    parser.add_argument(
        "--lookahead", type=int, default=64,
        help="pairs queued when a batch forms (the scheduler sorts by length among them)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--last-layer-ablation", action="store_true",
                        help="instead: the native cross-encoder with its last layer computed"
                        " for the one position the head reads (as served) vs for every token")
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler's op table for the native engine's"
                        " middle batch")
    parser.add_argument("--attention-ablation", action="store_true",
                        help="instead: the native engine on the attention path chosen at"
                        " start-up vs PyTorch's SDPA per sequence")
    parser.add_argument("--linear-ablation", action="store_true",
                        help="instead: the native engine's linears with the bias fused into"
                        " oneDNN's product (as chosen at start-up) vs F.linear")
    args = parser.parse_args()
    args.max_batch_tokens = args.max_batch_tokens or default_batch_tokens(["cpu"])

    default_dir, shape = MODELS[args.model]
    model_dir = ensure_model(args.model_dir or default_dir, args.model)
    backends = {
        name: load_model(str(model_dir), device="cpu", dtype=args.dtype, backend=name)
        for name in ("native", "transformers")
    }
    encoder = backends["native"].encoder
    pairs = [p for q, d in make_pairs(args.pairs, seed=1) for p in encoder.encode(q, [d]).pairs]
    real_tokens = sum(len(p.ids) for p in pairs)
    flops = sum(flops_per_pair(len(p.ids), shape) for p in pairs)
    batches = {
        name: form_batches(pairs, args.max_batch_tokens, loaded.scorers[0].pads, args.lookahead)
        for name, loaded in backends.items()
    }
    if args.profile:
        profile(backends["native"].scorers[0], batches["native"])
        return
    if args.last_layer_ablation:
        last_layer_ablation(backends["native"].scorers[0], batches["native"], args.rounds)
        return
    if args.attention_ablation:
        attention_ablation(backends["native"].scorers[0], batches["native"], args.rounds)
        return
    if args.linear_ablation:
        linear_ablation(backends["native"].scorers[0], batches["native"], args.rounds)
        return
    times: dict[str, list[float]] = {name: [] for name in backends}
    for r in range(args.rounds):
        for name, loaded in backends.items():
            elapsed = run_backend(loaded.scorers[0], batches[name])
            times[name].append(elapsed)
            print(f"round {r + 1} {name:12s} {elapsed:7.2f} s", flush=True)
    rate = matmul_rate(DTYPES[args.dtype], shape=shape)

    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}")
    print(f"workload: {args.pairs} (query, document) pairs -> {len(pairs)} windows,"
          f" {real_tokens} tokens (mean {real_tokens / len(pairs):.0f}, max"
          f" {max(len(p.ids) for p in pairs)})")
    print(f"batches: token budget {args.max_batch_tokens}, look-ahead {args.lookahead} pairs")
    print(f"model: {args.model}-shaped ({model_dir}); matmul ceiling ({args.dtype},"
          f" 2048x{shape.hidden}x{shape.inter}): {rate / 1e9:.0f} GFLOP/s")
    print()
    print("| backend | batches | time (s, median) | docs/s | windows/s | tokens/s | GFLOP/s |"
          " % of ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    for name in backends:
        t = statistics.median(times[name])
        print(
            f"| {name} | {len(batches[name])} | {t:.2f} | {args.pairs / t:.2f} |"
            f" {len(pairs) / t:.2f} |"
            f" {real_tokens / t:.0f} | {flops / t / 1e9:.0f} | {100 * flops / t / rate:.0f}% |"
        )
    ratio = statistics.median(times["transformers"]) / statistics.median(times["native"])
    print(f"\nnative / transformers throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
