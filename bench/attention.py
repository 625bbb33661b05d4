"""CPU attention alone, as the engine calls it: the `avx512-bf16` path (the own kernel) against
`sdpa-per-sequence` (PyTorch's CPU flash kernel), bf16, 12 heads of 64 (jina-reranker-v2's
shape), A B A B on the same packed batch.

    .venv/bin/python -m bench.attention

Prints, per batch of sequence lengths: milliseconds and GFLOP/s of each, their ratio, and each
one's largest difference from float64 attention of the same bf16 inputs.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable

import torch

from app.engine.modeling import attention
from app.engine.native import pack

HEADS, HEAD_DIM = 12, 64
BATCHES = [[1024] * 4, [512] * 8, [256] * 16, [100, 300, 1024, 700, 50, 1024, 400]]


def exact(qkv: torch.Tensor, cu: list[int]) -> torch.Tensor:
    out = []
    for start, end in itertools.pairwise(cu):
        q, k, v = qkv[start:end].double().unbind(1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / HEAD_DIM ** 0.5
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
    return torch.cat(out)


def seconds(fn: Callable[[], object], rounds: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| lengths | kernel ms | GFLOP/s | SDPA ms | GFLOP/s | kernel / SDPA speed |"
          " max error kernel | max error SDPA |")
    print("|---|---|---|---|---|---|---|---|")
    for lengths in BATCHES:
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        qkv = (torch.randn(cu[-1], 3, HEADS, HEAD_DIM) * 2).to(torch.bfloat16)
        batch = pack([[5] * n for n in lengths], [1] * len(lengths), position_offset=0,
                     token_types=False, device=torch.device("cpu"))
        kernel = functools.partial(attention, qkv, batch, "avx512-bf16")
        sdpa = functools.partial(attention, qkv, batch, "sdpa-per-sequence")
        want = exact(qkv, cu)
        errors = [(run().double() - want).abs().max().item() for run in (kernel, sdpa)]
        ours, theirs = [], []
        for _ in range(2):  # A B A B
            ours.append(seconds(kernel))
            theirs.append(seconds(sdpa))
        a, b = min(ours), min(theirs)
        flop = sum(4 * n * n * HEAD_DIM * HEADS for n in lengths) / 1e9
        shown = " + ".join(map(str, lengths)) if len(set(lengths)) > 1 else \
            f"{len(lengths)} x {lengths[0]}"
        print(f"| {shown} | {a * 1e3:.1f} | {flop / a:.0f} | {b * 1e3:.1f} | {flop / b:.0f} |"
              f" {b / a:.2f}x | {errors[0]:.4f} | {errors[1]:.4f} |")


if __name__ == "__main__":
    main()
