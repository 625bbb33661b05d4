"""Scorers: run one batch of token-id sequences through a reranker and return float32 logits
(a cross-encoder's, or a decoder recipe's: app/engine/recipes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from app.engine.tokenize import Family

TokenIds = Sequence[int] | np.ndarray


class Scorer(Protocol):
    """What the batching layer needs from a model replica on one device."""

    device: str
    pads: bool
    """True when a batch costs `len(batch) * longest` tokens (padded), False when packed."""

    def prepare(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> Any:
        """Host-side work for a batch (packing, the copy to the device); a worker runs it for
        the next batch while the current one is in its forward pass."""
        ...

    def run(self, prepared: Any) -> np.ndarray:
        """float32 logits of a prepared batch, one per pair, in input order."""
        ...

    def score(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> np.ndarray:
        """prepare, then run."""
        ...


class TransformersScorer:
    """Stock `AutoModelForSequenceClassification` with right-padded batches (SDPA attention).
    `family` is the pair layout: BERT-style models get token type 1 on the second segment."""

    pads = True

    def __init__(self, model: Any, family: Family, device: str, pad_id: int) -> None:
        self.model = model
        self.family = family
        self.device = device
        self._pad_id = pad_id
        self._torch_device = torch.device(device)
        self._uses_token_types = (
            family == "bert" and getattr(model.config, "type_vocab_size", 1) > 1
        )

    def prepare(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max())
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
        positions = np.arange(width)
        mask = positions[None, :] < lengths[:, None]
        inputs = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }
        if self._uses_token_types:
            split_arr = np.asarray(splits, dtype=np.int64)
            types = (positions[None, :] >= split_arr[:, None]) & mask
            inputs["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
        if self._torch_device.type == "cuda":
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        return {k: v.to(self._torch_device, non_blocking=True) for k, v in inputs.items()}

    def run(self, prepared: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(**prepared).logits[:, 0]
            result: np.ndarray = logits.float().cpu().numpy()
        return result

    def score(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> np.ndarray:
        return self.run(self.prepare(ids, splits))


class CausalLMScorer:
    """Stock `AutoModelForCausalLM` for decoder rerankers without a native engine (Gemma),
    left-padded so every sequence ends at the last column: the LM head runs on that column
    only (`logits_to_keep=1`), and the recipe's rows are read from it. Positions are passed
    explicitly, so a padded sequence is computed as it would be alone."""

    pads = True

    def __init__(self, model: Any, rows: Sequence[int], device: str, pad_id: int) -> None:
        self.model = model
        self.device = device
        self._rows = list(rows)
        self._pad_id = pad_id
        self._torch_device = torch.device(device)

    def prepare(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> dict[str, torch.Tensor]:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max())
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq):] = seq
        columns = np.arange(width)[None, :]
        pads = (width - lengths)[:, None]
        mask = columns >= pads
        positions = np.where(mask, columns - pads, 0)
        inputs = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "position_ids": torch.from_numpy(positions),
        }
        if self._torch_device.type == "cuda":
            inputs = {k: v.pin_memory() for k, v in inputs.items()}
        return {k: v.to(self._torch_device, non_blocking=True) for k, v in inputs.items()}

    def run(self, prepared: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(**prepared, logits_to_keep=1).logits[:, -1, self._rows].float()
            scores = logits[:, 0] - logits[:, 1] if len(self._rows) == 2 else logits[:, 0]
            result: np.ndarray = scores.cpu().numpy()
        return result

    def score(self, ids: Sequence[TokenIds], splits: Sequence[int]) -> np.ndarray:
        return self.run(self.prepare(ids, splits))


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocation failure (worth retrying with a smaller batch). cuBLAS reports its
    own allocation failures as CUBLAS_STATUS_ALLOC_FAILED, not as an out-of-memory error."""
    text = str(exc)
    return (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower()
            or "CUBLAS_STATUS_ALLOC_FAILED" in text)


_STICKY_CUDA_ERRORS = ("CUDA error", "device-side assert", "illegal memory access",
                       "CUDA_ERROR_", "unspecified launch failure")


def is_device_broken(exc: BaseException) -> bool:
    """A CUDA error that leaves the device's context unusable (a device-side assert, an
    illegal memory access...): every later call on that device fails too. Out of memory is
    not one of them."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _STICKY_CUDA_ERRORS)


def release_cached_memory() -> None:
    """Give cached CUDA blocks back after an out-of-memory error, before retrying."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_memory_bytes(device: str, kind: str) -> float:
    """CUDA memory `allocated` by tensors or `reserved` by the caching allocator."""
    if kind == "allocated":
        return float(torch.cuda.memory_allocated(device))
    return float(torch.cuda.memory_reserved(device))
