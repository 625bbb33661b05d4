"""The native backend: packs a batch of token-id lists and runs the native cross-encoder."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence

import numpy as np
import torch

from app.engine.backends import TokenIds
from app.engine.modeling import AttentionPath, CrossEncoder, PackedBatch, attention

log = logging.getLogger(__name__)


def pick_attention(device: str, dtype: torch.dtype) -> AttentionPath:
    """The fastest exact attention for the device: see app/engine/modeling.py."""
    if not device.startswith("cuda"):
        return "sdpa-per-sequence"
    if dtype in (torch.float16, torch.bfloat16):
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash-attn-varlen"
        if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
            return "torch-varlen"
    return "sdpa-padded"


def checked_attention(device: str, dtype: torch.dtype) -> AttentionPath:
    """`pick_attention`, but a fused kernel must first agree with padded SDPA on random input;
    one that fails or disagrees (an incompatible build, say) is logged and not used."""
    path = pick_attention(device, dtype)
    if path not in ("flash-attn-varlen", "torch-varlen"):
        return path
    generator = torch.Generator().manual_seed(0)
    lengths = [[1, 37, 200], [64, 64]]
    try:
        for case in lengths:
            batch = pack(
                [[5] * n for n in case], [1] * len(case), position_offset=0, token_types=False,
                device=torch.device(device),
            )
            qkv = torch.randn(sum(case), 3, 4, 64, generator=generator).to(device, dtype)
            got = attention(qkv, batch, path).float()
            want = attention(qkv.float(), batch, "sdpa-padded")
            if not torch.allclose(got, want, atol=2e-2, rtol=2e-2):
                raise ValueError(f"max difference {(got - want).abs().max().item():.3g}")
    except Exception as exc:
        log.warning("attention path %s failed its self-check (%s); using sdpa-padded", path, exc)
        return "sdpa-padded"
    return path


def pack(
    ids: Sequence[TokenIds],
    splits: Sequence[int],
    *,
    position_offset: int,
    token_types: bool,
    device: torch.device,
) -> PackedBatch:
    """Flatten a batch; index maps are built with numpy, then moved to the device at once."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    total = int(lengths.sum())
    starts = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    batch_index = np.repeat(np.arange(len(ids)), lengths)
    seq_index = np.arange(total) - starts[batch_index]
    flat = np.concatenate([np.asarray(seq, dtype=np.int64) for seq in ids])
    max_len = int(lengths.max())
    pin = device.type == "cuda"

    def put(array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(array)
        if pin:  # page-locked, so the copy is asynchronous
            host = host.pin_memory()
        return host.to(device, non_blocking=True)

    types = None
    if token_types:
        types = put((seq_index >= np.asarray(splits, dtype=np.int64)[batch_index]).astype(np.int64))
    key_mask = None
    if lengths.min() != max_len:
        key_mask = put(np.arange(max_len)[None, :] < lengths[:, None])[:, None, None, :]
    return PackedBatch(
        input_ids=put(flat),
        position_ids=put(seq_index + position_offset),
        token_type_ids=types,
        cu_seqlens=put(starts.astype(np.int32)),
        max_seqlen=max_len,
        spans=list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True)),
        batch_index=put(batch_index),
        seq_index=put(seq_index),
        key_mask=key_mask,
    )


class NativeScorer:
    """Packed (unpadded) batches: the scheduler's token budget counts real tokens."""

    pads = False

    def __init__(self, model: CrossEncoder, device: str, attention: AttentionPath) -> None:
        self.model = model
        self.device = device
        self.attention: AttentionPath = attention
        self._torch_device = torch.device(device)
        cfg = model.cfg
        self._offset = cfg.position_offset
        self._token_types = cfg.family == "bert" and cfg.type_vocab_size > 1

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
