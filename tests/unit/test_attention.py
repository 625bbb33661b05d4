"""Every CPU attention path equals plain per-sequence softmax attention; packing maps are right."""

from __future__ import annotations

import pytest
import torch

from app.engine.modeling import attention
from app.engine.native import checked_attention, pack, pick_attention


def naive(qkv: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    out = []
    for start, end in spans:
        q, k, v = qkv[start:end].double().unbind(1)  # [L, H, D]
        scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v))
    return torch.cat(out).float()


@pytest.mark.parametrize("lengths", [[1], [5, 5, 5], [1, 2, 3, 64, 7], [128, 1, 33]])
@pytest.mark.parametrize("path", ["sdpa-per-sequence", "sdpa-padded"])
def test_attention_paths_match_naive(lengths: list[int], path: str) -> None:
    torch.manual_seed(0)
    batch = pack([[7] * n for n in lengths], [1] * len(lengths), position_offset=2,
                 token_types=False, device=torch.device("cpu"))
    qkv = torch.randn(sum(lengths), 3, 4, 16)
    got = attention(qkv, batch, path)  # type: ignore[arg-type]
    torch.testing.assert_close(got, naive(qkv, batch.spans), atol=1e-5, rtol=1e-5)


def test_pack_builds_positions_types_and_offsets() -> None:
    batch = pack([[10, 11, 12], [20], [30, 31]], [2, 1, 1], position_offset=2,
                 token_types=True, device=torch.device("cpu"))
    assert batch.input_ids.tolist() == [10, 11, 12, 20, 30, 31]
    assert batch.position_ids.tolist() == [2, 3, 4, 2, 2, 3]
    assert batch.token_type_ids is not None
    assert batch.token_type_ids.tolist() == [0, 0, 1, 0, 0, 1]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.spans == [(0, 3), (3, 4), (4, 6)] and batch.max_seqlen == 3
    assert batch.key_mask is not None and batch.key_mask.shape == (3, 1, 1, 3)


def test_cpu_uses_per_sequence_sdpa() -> None:
    assert pick_attention("cpu", torch.bfloat16) == "sdpa-per-sequence"
    assert checked_attention("cpu", torch.float32) == "sdpa-per-sequence"
