"""The `avx512-bf16` attention path: app/engine/csrc/attention_bf16.c, built with the host's C
compiler on first use and loaded with ctypes (the call releases the GIL).

PyTorch's CPU flash kernel runs bf16 attention with head size 64 at about a third of the
CPU's bf16 matmul rate; this kernel does the same arithmetic at over twice its speed on a Zen 4
(docs/benchmarks.md). It is one candidate among the CPU attention paths:
app/engine/native.py uses it only when it builds here, agrees with float32 attention, and is
measured faster than PyTorch's kernel on the model's own head shape.

The shared library is cached under `RERANKER_KERNEL_CACHE` (default
`$XDG_CACHE_HOME/reranker`, else `~/.cache/reranker`), named by a hash of the source and the
compiler flags, so a changed source is rebuilt and an image can ship it prebuilt (`python -m
app.engine.cpu_kernel` builds it and prints where; the Docker images do, with the cache at
/app/kernels).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "attention_bf16.c"
HEAD_DIM = 64
CFLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma",
          "-shared", "-fPIC", "-pthread")
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "fma"})


class KernelUnavailable(RuntimeError):
    """The kernel cannot run here (the reason is the message)."""


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags Linux reports for this CPU (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cache_dir() -> Path:
    configured = os.environ.get("RERANKER_KERNEL_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reranker"


def _compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise KernelUnavailable("no C compiler (cc, gcc or clang) to build it with")


def _build(target: Path) -> None:
    """Compile into a temporary name next to `target`, then rename: concurrent builders (two
    server processes starting at once) each produce a whole file, and the last rename wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([_compiler(), *CFLAGS, "-o", tmp, str(SOURCE)],
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise KernelUnavailable(f"the C compiler failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build() -> Path:
    """The shared library, compiled if the cache does not hold it yet. Compiling needs a C
    compiler but not the CPU itself: an image builder without AVX512-BF16 can ship it."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    target = cache_dir() / f"attention_bf16-{digest}.so"
    if target.exists():
        return target
    try:
        _build(target)
    except OSError:  # a read-only cache: build into this process's own temporary folder
        target = Path(tempfile.mkdtemp(prefix="reranker-kernel-")) / target.name
        _build(target)
    return target


@functools.cache
def load() -> ctypes.CDLL:
    """The built kernel; raises KernelUnavailable (once per process: the result is cached)."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        raise KernelUnavailable(f"built for x86-64 Linux only, not {sys.platform} "
                                f"{platform.machine()}")
    missing = CPU_FLAGS - cpu_flags()
    if missing:
        raise KernelUnavailable(f"this CPU lacks {', '.join(sorted(missing))}")
    lib = ctypes.CDLL(str(build()))
    lib.attention_bf16.restype = ctypes.c_int
    lib.attention_bf16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int]
    return lib


def attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Bidirectional attention over packed `qkv` [T, 3, heads, 64] bf16 on the CPU, sequences
    bounded by `cu_seqlens` -> [T, heads, 64] bf16, softmax scale 1/8."""
    if qkv.dtype != torch.bfloat16 or qkv.device.type != "cpu" or qkv.shape[-1] != HEAD_DIM:
        raise ValueError(f"avx512-bf16 attention takes bf16 CPU tensors of head size {HEAD_DIM}"
                         f", not {qkv.dtype} on {qkv.device} of head size {qkv.shape[-1]}")
    lib = load()
    qkv = qkv.contiguous()
    cu = cu_seqlens.to(device="cpu", dtype=torch.int32).contiguous()
    heads = qkv.shape[2]
    out = qkv.new_empty(qkv.shape[0], heads, HEAD_DIM)
    status = lib.attention_bf16(qkv.data_ptr(), out.data_ptr(), cu.data_ptr(), len(cu) - 1,
                                heads, HEAD_DIM ** -0.5, torch.get_num_threads())
    if status:
        raise MemoryError("avx512-bf16 attention could not allocate its buffers")
    return out


if __name__ == "__main__":
    print(build())
