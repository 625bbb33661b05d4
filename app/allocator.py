"""The process's memory allocator, chosen before torch is imported.

A CPU forward pass allocates and frees activation tensors of tens of megabytes per layer. glibc
serves blocks that large with fresh `mmap`s and unmaps them on free, so every layer pays page
faults (and zeroes the pages) again; the stall holds up the other intra-op threads too.
tcmalloc keeps freed spans for reuse: on the 2-core bf16 CPU host batches of the RAG mix ran
1.15-1.29x faster with it (docs/benchmarks.md, "Allocator"). An allocator can only be swapped at
exec time, so `reranker serve` re-executes itself once with tcmalloc in `LD_PRELOAD` when the
library is installed (Debian/Ubuntu: `libtcmalloc-minimal4`). Same PID: signals still reach it.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path
from typing import Literal

Allocator = Literal["auto", "tcmalloc", "system"]

_MARK = "RERANKER_ALLOCATOR_EXEC"  # set across the re-exec, so it happens at most once
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


class AllocatorUnavailable(RuntimeError):
    pass


def find_tcmalloc() -> str | None:
    """Path (or soname the loader resolves) of an installed tcmalloc, else None."""
    for directory in _DIRS:
        for name in _NAMES:
            if (Path(directory) / name).exists():
                return str(Path(directory) / name)
    for short in ("tcmalloc_minimal", "tcmalloc"):
        if found := ctypes.util.find_library(short):
            return found
    return None


def loaded_tcmalloc() -> bool:
    """Whether tcmalloc is mapped into this process (preloaded by us or by the user)."""
    try:
        return "tcmalloc" in Path("/proc/self/maps").read_text()
    except OSError:
        return "tcmalloc" in os.environ.get("LD_PRELOAD", "")


def exec_env(library: str, env: dict[str, str]) -> dict[str, str]:
    """`env` with `library` first in LD_PRELOAD, and tcmalloc's large-allocation report off
    (it prints a line to stderr for every block above 1 GiB; long requests make some)."""
    preload = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    return {
        **env,
        "LD_PRELOAD": preload,
        _MARK: "1",
        "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": env.get(
            "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40)
        ),
    }


def ensure(choice: Allocator, argv: list[str]) -> str:
    """Re-exec this process with tcmalloc when `choice` asks for it and it is not loaded yet.
    Returns the allocator in use (for the start-up log); raises AllocatorUnavailable when
    `tcmalloc` was required and is not installed. Does not return when it re-executes."""
    if choice == "system" or (choice == "auto" and not sys.platform.startswith("linux")):
        return "tcmalloc (preloaded by the caller)" if loaded_tcmalloc() else "system"
    if loaded_tcmalloc():
        return "tcmalloc"
    library = find_tcmalloc()
    if library is None or os.environ.get(_MARK):
        if choice == "tcmalloc":
            raise AllocatorUnavailable(
                "--allocator tcmalloc: no loadable tcmalloc found; install it (Debian/Ubuntu:"
                " apt install libtcmalloc-minimal4) or use --allocator system"
            )
        return "system (install libtcmalloc-minimal4 for faster CPU inference)"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], exec_env(library, dict(os.environ)))
    raise AssertionError("unreachable")  # pragma: no cover
