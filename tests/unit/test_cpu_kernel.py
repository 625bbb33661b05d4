"""The AVX512-BF16 attention kernel: as exact as PyTorch's bf16 attention, each sequence computed
as if alone, built once and cached, refused cleanly where it cannot run."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.engine import cpu_kernel
from app.engine.modeling import attention
from app.engine.native import pack
from tests.unit.test_attention import naive


@pytest.fixture()
def fresh_load() -> Iterator[None]:
    cpu_kernel.load.cache_clear()
    yield
    cpu_kernel.load.cache_clear()


@pytest.fixture(scope="module")
def kernel() -> ctypes.CDLL:
    try:
        return cpu_kernel.load()
    except cpu_kernel.KernelUnavailable as exc:
        pytest.skip(f"the kernel cannot run on this host: {exc}")


def _packed(lengths: list[int], heads: int = 12, seed: int = 0) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(sum(lengths), 3, heads, 64, generator=generator) * 2).to(torch.bfloat16)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return qkv, cu


def _spans(cu: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True))


@pytest.mark.usefixtures("kernel")
@pytest.mark.parametrize("lengths", [[1], [2, 7, 63, 64, 65], [200, 1, 129], [1024, 300]])
def test_as_exact_as_pytorchs_own_bf16_attention(lengths: list[int]) -> None:
    qkv, cu = _packed(lengths)
    batch = pack([[5] * n for n in lengths], [1] * len(lengths), position_offset=0,
                 token_types=False, device=torch.device("cpu"))
    exact = naive(qkv, _spans(cu)).double()
    ours = (attention(qkv, batch, "avx512-bf16").double() - exact).abs()
    theirs = (attention(qkv, batch, "sdpa-per-sequence").double() - exact).abs()
    # Both round the output to bf16 (a relative 2^-9); the mean error shows any systematic loss.
    assert ours.max() <= theirs.max() * 1.25 + 1e-3, (ours.max(), theirs.max())
    assert ours.mean() <= theirs.mean() * 1.1 + 1e-5, (ours.mean(), theirs.mean())


@pytest.mark.usefixtures("kernel")
def test_each_sequence_is_computed_as_if_alone() -> None:
    """Bit for bit, whatever else is in the batch and however many threads run it."""
    lengths = [300, 5, 64, 1000, 17]
    qkv, cu = _packed(lengths, heads=4)
    together = cpu_kernel.attention(qkv, cu)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = cpu_kernel.attention(qkv, cu)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, one_thread)
    for i, (start, end) in enumerate(_spans(cu)):
        alone = cpu_kernel.attention(qkv[start:end], torch.tensor([0, lengths[i]]))
        assert torch.equal(together[start:end], alone)


@pytest.mark.usefixtures("kernel")
def test_the_modeling_path_takes_a_packed_batch() -> None:
    lengths = [3, 90, 40]
    qkv, _ = _packed(lengths, heads=2)
    batch = pack([[5] * n for n in lengths], [1] * 3, position_offset=0, token_types=False,
                 device=torch.device("cpu"))
    got = attention(qkv, batch, "avx512-bf16")
    want = attention(qkv.float(), batch, "sdpa-per-sequence")
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=2e-2)


def test_refuses_what_it_does_not_compute() -> None:
    qkv, cu = _packed([4])
    with pytest.raises(ValueError, match="bf16 CPU tensors of head size 64"):
        cpu_kernel.attention(qkv.float(), cu)
    with pytest.raises(ValueError, match="head size 32"):
        cpu_kernel.attention(qkv[..., :32], cu)


@pytest.mark.usefixtures("fresh_load")
def test_a_cpu_without_avx512_bf16_is_refused_before_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setenv("RERANKER_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(cpu_kernel.KernelUnavailable, match="lacks avx512_bf16, avx512bw"):
        cpu_kernel.load()
    assert not list(tmp_path.iterdir())


@pytest.mark.usefixtures("fresh_load")
def test_no_compiler_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cpu_kernel, "cpu_flags", lambda: cpu_kernel.CPU_FLAGS)
    monkeypatch.setenv("RERANKER_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
    with pytest.raises(cpu_kernel.KernelUnavailable, match="no C compiler"):
        cpu_kernel.load()


@pytest.mark.usefixtures("kernel", "fresh_load")
def test_built_once_into_the_cache_named_by_source_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("RERANKER_KERNEL_CACHE", str(tmp_path / "cache"))
    built = cpu_kernel.load()._name
    [only] = (tmp_path / "cache").iterdir()
    assert built == str(only) and only.name.startswith("attention_bf16-")
    stamp = only.stat().st_mtime_ns
    cpu_kernel.load.cache_clear()
    assert cpu_kernel.load()._name == built and only.stat().st_mtime_ns == stamp


@pytest.mark.usefixtures("kernel", "fresh_load")
def test_a_read_only_cache_builds_into_a_temporary_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("RERANKER_KERNEL_CACHE", str(blocker / "cache"))
    lib = cpu_kernel.load()
    assert not lib._name.startswith(str(tmp_path)) and Path(lib._name).exists()
