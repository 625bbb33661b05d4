"""The native backend: packs a batch of token-id lists and runs the native cross-encoder."""

from __future__ import annotations

import functools
import importlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from app.engine import cpu_kernel
from app.engine.backends import TokenIds
from app.engine.modeling import (
    AttentionPath,
    CrossEncoder,
    Linear,
    PackedBatch,
    attention,
)

log = logging.getLogger(__name__)


FUSED: tuple[AttentionPath, ...] = ("flash-attn-varlen", "torch-varlen")
KERNELS: tuple[AttentionPath, ...] = (*FUSED, "avx512-bf16")
RACED: tuple[AttentionPath, ...] = ("avx512-bf16",)
"""Kept only when measured faster than the next candidate on the model's own head shape."""
_KERNEL_MODULE = {"flash-attn-varlen": "flash_attn", "torch-varlen": "torch.nn.attention.varlen"}

SelfCheck = Callable[[AttentionPath], None]
Race = Callable[[AttentionPath], float]


def attention_candidates(device: str, dtype: torch.dtype, *, causal: bool = False,
                         head_dim: int = cpu_kernel.HEAD_DIM) -> list[AttentionPath]:
    """The exact attention paths for the device, fastest first: see app/engine/modeling.py.
    The CPU kernel serves bf16 encoders of its head size only (not a decoder: `causal`)."""
    if not device.startswith("cuda"):
        own = dtype == torch.bfloat16 and not causal and head_dim == cpu_kernel.HEAD_DIM
        return ["avx512-bf16", "sdpa-per-sequence"] if own else ["sdpa-per-sequence"]
    fused = list(FUSED) if dtype in (torch.float16, torch.bfloat16) else []
    return [*fused, "sdpa-padded"]


def import_kernel(path: AttentionPath) -> None:
    """Import (or build) what a kernel path needs; raises when it is missing or broken: the
    usual undefined-symbol ABI mismatch of a flash-attn build, or a CPU the kernel does not
    support. SDPA paths need nothing."""
    if path == "avx512-bf16":
        cpu_kernel.load()
        return
    module = _KERNEL_MODULE.get(path)
    if module is not None:
        importlib.import_module(module)


def checked_attention(
    device: str, dtype: torch.dtype, heads: int, head_dim: int,
    check: SelfCheck | None = None, *, causal: bool = False, race: Race | None = None,
) -> AttentionPath:
    """The first candidate whose kernel imports and agrees with padded SDPA on random input
    of the model's own head count and head size (a head size the kernel rejects fails here,
    not on every batch). One that is installed but broken (the usual undefined-symbol ABI
    mismatch of a flash-attn build) is logged and the next one tried. A RACED path must also
    run faster than the next candidate here (`race`: seconds for one batch)."""
    run_check = check or functools.partial(_self_check, device, dtype, heads, head_dim)
    run_race = race or functools.partial(_race, device, dtype, heads, head_dim)
    candidates = attention_candidates(device, dtype, causal=causal, head_dim=head_dim)
    for i, path in enumerate(candidates):
        if path not in KERNELS:
            return path
        try:
            import_kernel(path)
            run_check(path)
        except Exception as exc:
            log.warning("attention path %s is not usable here (%s); trying the next one",
                        path, exc)
            continue
        if path in RACED:
            rival = candidates[i + 1]
            mine, theirs = run_race(path), run_race(rival)
            faster = mine < theirs
            log.info("attention: %s %.1f ms, %s %.1f ms on %s tokens: using %s", path,
                     mine * 1e3, rival, theirs * 1e3, " + ".join(map(str, RACE_LENGTHS)),
                     path if faster else rival)
            if not faster:
                continue
        return path
    return "sdpa-padded"


def fused_linears(model: nn.Module, device: str, dtype: torch.dtype) -> None:
    """Run the model's linears as oneDNN inner products with the bias fused in (see
    modeling.Linear) when on CPU that gives exactly what `F.linear` gives, on random inputs
    of its own shapes: in bf16 both are oneDNN's product underneath. Not in float32, where
    ATen's product is another library's and the fused form moved a full-size model's logits
    by up to 0.03 here."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    if device.startswith("cuda") or dtype != torch.bfloat16 or not linears:
        return
    try:
        with torch.inference_mode():
            _check_fused(linears, dtype)
    except Exception as exc:  # an op missing from this build, or another result
        log.warning("linears: the fused oneDNN form is not usable here (%s); using F.linear",
                    exc)
        return
    for m in linears:
        m.fused = True
    log.info("linears: oneDNN with the bias fused (self-check: equal to F.linear)")


def _check_fused(linears: list[Linear], dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    for layer in {(m.in_features, m.out_features): m for m in linears}.values():
        x = torch.randn(37, layer.in_features, generator=generator).to(dtype)
        want = layer(x)
        layer.fused = True
        try:
            got = layer(x)
        finally:
            layer.fused = False
        if not torch.equal(got, want):
            diff = (got.float() - want.float()).abs().max().item()
            raise ValueError(f"differs from F.linear by up to {diff:.3g}")


SELF_CHECK_LENGTHS = ([1, 37, 200], [64, 64])
"""Sequence lengths the self-checks pack: mixed (the masked and varlen branches) and equal."""


def self_check_batch(device: str, lengths: list[int]) -> PackedBatch:
    return pack([[5] * n for n in lengths], [1] * len(lengths), position_offset=0,
                token_types=False, device=torch.device(device))


def close_enough(got: torch.Tensor, want: torch.Tensor) -> None:
    if not torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2):
        raise ValueError(f"max difference {(got.float() - want).abs().max().item():.3g}")


def _self_check(device: str, dtype: torch.dtype, heads: int, head_dim: int,
                path: AttentionPath) -> None:
    generator = torch.Generator().manual_seed(0)
    for lengths in SELF_CHECK_LENGTHS:
        batch = self_check_batch(device, lengths)
        qkv = torch.randn(sum(lengths), 3, heads, head_dim, generator=generator).to(device, dtype)
        close_enough(attention(qkv, batch, path), attention(qkv.float(), batch, "sdpa-padded"))


RACE_LENGTHS = [512, 384, 256, 128]
"""A batch of windows like a RAG mix's: long ones, where attention weighs most, and shorter."""


def _race(device: str, dtype: torch.dtype, heads: int, head_dim: int,
          path: AttentionPath) -> float:
    """Seconds one batch of RACE_LENGTHS takes on `path`: the best of three after a warm-up."""
    batch = self_check_batch(device, RACE_LENGTHS)
    qkv = torch.randn(sum(RACE_LENGTHS), 3, heads, head_dim).to(device, dtype)
    attention(qkv, batch, path)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        attention(qkv, batch, path)
        best = min(best, time.perf_counter() - start)
    return best


def pack(
    ids: Sequence[TokenIds],
    splits: Sequence[int],
    *,
    position_offset: int,
    token_types: bool,
    device: torch.device,
) -> PackedBatch:
    """Flatten a batch. The index maps are built with numpy into one int64 staging tensor
    (page-locked on CUDA, from torch's caching host allocator, so its memory is reused once
    the copy that read it is done), moved to the device in one non-blocking copy, and sliced
    there; cu_seqlens and the key mask are derived on the device."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    n = len(ids)
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    max_len = int(lengths.max())
    fields = 4 + int(token_types)  # ids, positions, batch index, seq index[, types]
    staging = torch.empty(fields * total + 2 * n + 1, dtype=torch.int64,
                          pin_memory=device.type == "cuda")
    host = staging.numpy()
    flat, positions, batch_index, seq_index = (host[i * total:(i + 1) * total] for i in range(4))
    np.concatenate([np.asarray(seq) for seq in ids], out=flat)  # int32 ids widen in place
    batch_index[:] = np.repeat(np.arange(n), lengths)
    np.subtract(np.arange(total), starts[batch_index], out=seq_index)
    np.add(seq_index, position_offset, out=positions)
    if token_types:
        host[4 * total:5 * total] = seq_index >= np.asarray(splits, dtype=np.int64)[batch_index]
    tail = fields * total
    host[tail:tail + n + 1] = starts
    host[tail + n + 1:] = lengths
    on_device = staging.to(device, non_blocking=True)

    def part(i: int) -> torch.Tensor:
        return on_device[i * total:(i + 1) * total]

    dev_lengths = on_device[tail + n + 1:]
    key_mask = None
    if lengths.min() != max_len:
        key_mask = (torch.arange(max_len, device=device)[None, :] < dev_lengths[:, None])
        key_mask = key_mask[:, None, None, :]
    return PackedBatch(
        input_ids=part(0),
        position_ids=part(1),
        token_type_ids=part(4) if token_types else None,
        cu_seqlens=on_device[tail:tail + n + 1].to(torch.int32),
        max_seqlen=max_len,
        spans=list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)),
        batch_index=part(2),
        seq_index=part(3),
        key_mask=key_mask,
    )


class NativeScorer:
    """Packed (unpadded) batches through a native model (the cross-encoder, or the decoder
    reranker of app/engine/decoder.py): the scheduler's token budget counts real tokens."""

    pads = False

    def __init__(self, model: nn.Module, device: str, attention: AttentionPath, *,
                 position_offset: int = 0, token_types: bool = False) -> None:
        self.model = model
        self.device = device
        self.attention: AttentionPath = attention
        self._torch_device = torch.device(device)
        self._offset = position_offset
        self._token_types = token_types

    @classmethod
    def for_encoder(cls, model: CrossEncoder, device: str,
                    attention: AttentionPath) -> NativeScorer:
        cfg = model.cfg
        return cls(model, device, attention, position_offset=cfg.position_offset,
                   token_types=cfg.family == "bert" and cfg.type_vocab_size > 1)

    def prepare(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> PackedBatch:
        """Pack on the host and start the copy to the device (may overlap another forward)."""
        with torch.inference_mode():
            return pack(
                ids, splits, position_offset=self._offset, token_types=self._token_types,
                device=self._torch_device,
            )

    def run(self, batch: PackedBatch) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = self.model(batch, self.attention).cpu().numpy()
        return result

    def score(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> np.ndarray:
        return self.run(self.prepare(ids, splits))
