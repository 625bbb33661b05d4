"""Device and dtype choice at start-up, with torch.cuda faked: what an operator sees on a host
with two GPUs, an old driver, or pre-Ampere cards."""

from __future__ import annotations

import warnings

import pytest
import torch

from app.engine.loading import resolve_devices, resolve_dtype
from app.errors import ModelUnavailable


def fake_gpus(monkeypatch: pytest.MonkeyPatch, capabilities: list[tuple[int, int]]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(capabilities))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU{i}")
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d: capabilities[int(str(d).split(":")[1])])


def test_auto_takes_every_gpu_and_cuda_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, [(9, 0), (9, 0)])
    assert resolve_devices("auto") == ["cuda:0", "cuda:1"]
    assert resolve_devices("cuda") == ["cuda:0"]
    assert resolve_devices("cuda:1") == ["cuda:1"]


def test_a_device_index_out_of_range_names_the_visible_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_gpus(monkeypatch, [(9, 0), (9, 0)])
    with pytest.raises(ModelUnavailable) as err:
        resolve_devices("cuda:0,cuda:2")
    assert "cuda:2 does not exist" in str(err.value)
    assert "cuda:0 (GPU0), cuda:1 (GPU1)" in str(err.value)


def test_cuda_asked_for_and_unusable_says_why_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_old() -> bool:
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old"
                      " (found version 12020).\nPlease update your GPU driver.", stacklevel=1)
        return False

    monkeypatch.setattr(torch.cuda, "is_available", too_old)
    with pytest.raises(ModelUnavailable) as err:
        resolve_devices("cuda")
    line = str(err.value)
    assert "driver on your system is too old (found version 12020)" in line
    assert f"CUDA {torch.version.cuda}" in line and "--device auto" in line
    assert "\n" not in line
    assert resolve_devices("auto") == ["cpu"]  # auto is the explicit way to accept the CPU


@pytest.mark.parametrize(("capabilities", "dtype"), [
    ([(9, 0)], "bfloat16"),  # H100
    ([(8, 0), (8, 6)], "bfloat16"),  # A100 + A10
    ([(7, 5)], "float16"),  # T4
    ([(8, 0), (7, 0)], "float16"),  # mixed with a V100: the common choice
])
def test_auto_dtype_on_cuda_by_compute_capability(
    monkeypatch: pytest.MonkeyPatch, capabilities: list[tuple[int, int]], dtype: str
) -> None:
    fake_gpus(monkeypatch, capabilities)
    devices = [f"cuda:{i}" for i in range(len(capabilities))]
    assert resolve_dtype("auto", devices, {}) == (dtype, None)
    assert resolve_dtype("float32", devices, {}) == ("float32", None)


@pytest.mark.parametrize(("capabilities", "dtype"), [([(7, 5)], "float32"), ([(9, 0)], "bfloat16")])
def test_auto_dtype_keeps_gemma_out_of_float16(
    monkeypatch: pytest.MonkeyPatch, capabilities: list[tuple[int, int]], dtype: str
) -> None:
    """Gemma's activations overflow float16: without native bfloat16, auto takes float32."""
    fake_gpus(monkeypatch, capabilities)
    assert resolve_dtype("auto", ["cuda:0"], {"model_type": "gemma"}) == (dtype, None)
    assert resolve_dtype("auto", ["cuda:0"], {"model_type": "qwen3"})[0] != "float32"
