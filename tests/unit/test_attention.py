"""Every CPU attention path equals plain per-sequence softmax attention; packing maps are right."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from app.engine import native
from app.engine.modeling import attention, one_query_attention
from app.engine.native import attention_candidates, checked_attention, pack


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


@pytest.mark.parametrize("lengths", [[1], [5, 5, 5], [1, 2, 3, 64, 7], [128, 1, 33]])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("row", ["first", "last"])
def test_one_query_attention_is_that_rows_full_attention(
    lengths: list[int], heads: int, kv_heads: int, row: str,
) -> None:
    """The last layer's shortcut: a first (cross-encoder) or last (decoder, whose last row sees
    every token) row's attention equals that row of the whole sequence's attention."""
    torch.manual_seed(0)
    batch = pack([[7] * n for n in lengths], [1] * len(lengths), position_offset=2,
                 token_types=False, device=torch.device("cpu"))
    q_all = torch.randn(sum(lengths), heads, 16)
    k, v = torch.randn(2, sum(lengths), kv_heads, 16)
    group = heads // kv_heads
    qkv = torch.stack([q_all, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)], 1)
    rows = [start if row == "first" else end - 1 for start, end in batch.spans]
    got = one_query_attention(q_all[rows], k, v, batch)
    torch.testing.assert_close(got, naive(qkv, batch.spans)[rows], atol=1e-5, rtol=1e-5)


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


def test_pack_moves_one_staging_buffer() -> None:
    """Every per-token index map is a slice of one buffer: one host-to-device copy a batch."""
    ids = [np.array([10, 11, 12], dtype=np.int32), np.array([20], dtype=np.int32)]
    batch = pack(ids, [2, 1], position_offset=2, token_types=True, device=torch.device("cpu"))
    maps = [batch.input_ids, batch.position_ids, batch.token_type_ids, batch.batch_index,
            batch.seq_index]
    assert len({m.untyped_storage().data_ptr() for m in maps if m is not None}) == 1
    assert batch.input_ids.dtype == torch.int64 and batch.input_ids.tolist() == [10, 11, 12, 20]


def test_cpu_candidates() -> None:
    """The own kernel is tried for bf16 encoders only; float32 and decoders go to SDPA."""
    assert attention_candidates("cpu", torch.bfloat16) == ["avx512-bf16", "sdpa-per-sequence"]
    assert attention_candidates("cpu", torch.bfloat16, causal=True) == ["sdpa-per-sequence"]
    assert attention_candidates("cpu", torch.float32) == ["sdpa-per-sequence"]
    assert attention_candidates("cpu", torch.bfloat16, head_dim=128) == ["sdpa-per-sequence"]
    assert checked_attention("cpu", torch.float32, 12, 64) == "sdpa-per-sequence"


def test_the_cpu_kernel_is_used_only_when_measured_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native.cpu_kernel, "load", lambda: None)
    checked: list[str] = []
    for kernel_s, chosen in [(0.010, "avx512-bf16"), (0.030, "sdpa-per-sequence")]:
        times = {"avx512-bf16": kernel_s, "sdpa-per-sequence": 0.020}
        path = checked_attention("cpu", torch.bfloat16, 12, 64, check=checked.append,
                                 race=times.__getitem__)
        assert path == chosen
    assert checked == ["avx512-bf16", "avx512-bf16"]


def test_a_cpu_kernel_that_cannot_run_here_falls_to_sdpa(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    def unavailable() -> None:
        raise native.cpu_kernel.KernelUnavailable("this CPU lacks avx512_bf16")

    monkeypatch.setattr(native.cpu_kernel, "load", unavailable)
    raced: list[str] = []
    path = checked_attention("cpu", torch.bfloat16, 12, 64,
                             race=lambda p: raced.append(p) or 0.0)
    assert path == "sdpa-per-sequence" and raced == []
    assert "avx512-bf16 is not usable here (this CPU lacks avx512_bf16)" in caplog.text


def test_other_head_sizes_do_not_try_the_cpu_kernel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(native.cpu_kernel, "load", lambda: None)
    assert checked_attention("cpu", torch.bfloat16, 8, 96) == "sdpa-per-sequence"
    assert "avx512-bf16" not in caplog.text


def test_cuda_candidates_fastest_first() -> None:
    assert attention_candidates("cuda:0", torch.bfloat16) == [
        "flash-attn-varlen", "torch-varlen", "sdpa-padded"]
    assert attention_candidates("cuda", torch.float32) == ["sdpa-padded"]


def test_an_installed_but_broken_flash_attn_falls_to_torch_varlen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_import(name: str) -> types.ModuleType:
        if name == "flash_attn":
            raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c105ErrorC2E")
        return types.ModuleType(name)

    monkeypatch.setattr(native.importlib, "import_module", broken_import)
    checked: list[str] = []
    path = checked_attention("cuda:0", torch.bfloat16, 12, 64, check=checked.append)
    assert path == "torch-varlen" and checked == ["torch-varlen"]


def test_a_kernel_that_fails_its_self_check_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.importlib, "import_module", types.ModuleType)

    def rejects(path: str) -> None:
        raise RuntimeError(f"{path}: head size 96 is not supported")

    assert checked_attention("cuda:0", torch.float16, 8, 96, check=rejects) == "sdpa-padded"


def test_the_self_check_uses_the_models_head_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    real = native.attention

    def spy(qkv: torch.Tensor, batch: object, path: str) -> torch.Tensor:
        seen.append(tuple(qkv.shape[1:]))
        return real(qkv, batch, "sdpa-padded")  # type: ignore[arg-type]

    monkeypatch.setattr(native, "attention", spy)
    native._self_check("cpu", torch.float32, 6, 96, "torch-varlen")
    assert seen and set(seen) == {(3, 6, 96)}
