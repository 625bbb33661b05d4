"""Device faults in the worker, with fake scorers: an out-of-memory retry that really frees
the failed attempt's memory, out-of-memory errors by any name, and a sticky CUDA error that
takes the device out of service."""

from __future__ import annotations

import asyncio
import weakref

import numpy as np
import pytest
import torch

from app.batching.scheduler import Scheduler
from app.batching.worker import Worker
from app.engine.backends import is_device_broken, is_out_of_memory
from app.errors import RerankError
from app.metrics import Metrics
from tests.fakes import SumScorer


class Activations:
    """Stands for the tensors a forward pass holds while it runs."""


class OutOfMemoryOnBigBatches(SumScorer):
    """A batch of more than one pair fails with OOM after 'allocating' its activations; each
    retry records whether the activations of every failed attempt are still alive."""

    def __init__(self) -> None:
        super().__init__(pads=False)
        self.failed_attempts: list[weakref.ref[Activations]] = []
        self.alive_at_retry: list[bool] = []

    def run(self, ids: list[list[int]]) -> np.ndarray:
        activations = Activations()
        if len(ids) > 1:
            self.failed_attempts.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.alive_at_retry.append(any(ref() is not None for ref in self.failed_attempts))
        return super().run(ids)


def scheduler() -> Scheduler:
    return Scheduler(max_batch_tokens=100, max_wait_s=0.0, max_queue=100, pads=False,
                     metrics=Metrics().for_model("test"))


async def test_an_out_of_memory_retry_starts_after_the_failed_attempt_is_freed() -> None:
    s = scheduler()
    job = s.submit([([j + 1] * 5, 1) for j in range(4)])  # one batch of four pairs
    scorer = OutOfMemoryOnBigBatches()
    worker = Worker(s, scorer, Metrics().for_model("test"))
    worker.start()
    logits = await job.future
    s.close()
    worker.join(5)
    assert list(logits) == pytest.approx([(j + 1) / 100 for j in range(4)])
    assert len(scorer.failed_attempts) == 3  # 4 -> 2 + 2 -> 1 + 1 + 1 + 1
    assert scorer.alive_at_retry == [False] * 4


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate"
                 " memory: you tried to allocate 1024 bytes. Error code 12 (Cannot allocate"
                 " memory): out of memory"),
])
def test_out_of_memory_by_any_name(error: Exception) -> None:
    assert is_out_of_memory(error) and not is_device_broken(error)


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be"
                 " asynchronously reported at some other API call"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: unspecified launch failure"),
])
def test_sticky_cuda_errors_break_the_device(error: Exception) -> None:
    assert is_device_broken(error) and not is_out_of_memory(error)


def test_an_ordinary_error_does_not_break_the_device() -> None:
    assert not is_device_broken(RuntimeError("shape mismatch"))
    assert not is_device_broken(ValueError("CUDA error"))  # not what torch raises


class BreaksOnMarker(SumScorer):
    def __init__(self, marker: int) -> None:
        super().__init__(pads=False)
        self.marker = marker
        self.runs = 0

    def run(self, ids: list[list[int]]) -> np.ndarray:
        self.runs += 1
        if any(self.marker in x for x in ids):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().run(ids)


async def test_a_sticky_cuda_error_fails_its_batch_and_hands_the_rest_to_other_devices() -> None:
    s = scheduler()
    s.workers = 2
    broken = BreaksOnMarker(marker=7)
    worker = Worker(s, broken, Metrics().for_model("test"))
    worker.start()
    poisoned = s.submit([([7] * 60, 1)])
    with pytest.raises(RerankError):
        await poisoned.future
    await asyncio.to_thread(worker.join, 5)
    assert not worker.alive and worker.broken is not None
    runs = broken.runs
    # work submitted afterwards (or prepared for the broken worker) is served elsewhere
    later = [s.submit([([j + 1] * 60, 1)]) for j in range(3)]
    healthy = Worker(s, SumScorer(pads=False), Metrics().for_model("test"))
    healthy.start()
    results = await asyncio.gather(*(job.future for job in later))
    s.close()
    healthy.join(5)
    assert [r[0] for r in results] == pytest.approx([(j + 1) / 100 for j in range(3)])
    assert broken.runs == runs  # the broken device ran nothing more

