"""The serving process's runtime settings: torch threads and how freed memory returns to the system."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch


def configure_memory() -> bool:
    """Serve large buffers from mmap so memory goes back to the system once a request ends.

    glibc raises its mmap threshold after the first large free, and later 100 MB image buffers then
    come from the heap and stay with the process: after six 40 MP uploads the app kept 426 MB.
    A fixed threshold (4 MB) turns that off. Returns False where this is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, 4 * 2**20))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def configure_threads() -> int:
    """Torch threads: all cores but one (``MLC_NUM_THREADS`` overrides).

    The spare core serves HTTP, PNG encoding and the figures of the other queued request. On a busy
    2-core machine two OpenMP threads that lose their core stall each other: a predict request took
    0.68 s median with 2 threads against 0.19 s with 1.
    """
    threads = int(os.environ.get("MLC_NUM_THREADS") or 0) or max(1, len(os.sched_getaffinity(0)) - 1)
    torch.set_num_threads(threads)
    return threads


def gpu_task(duration: int) -> Callable[[Callable], Callable]:
    """``spaces.GPU(duration=...)`` on a Hugging Face Space with ZeroGPU (the ``spaces`` package is
    there), so a request's model work gets a GPU for at most ``duration`` seconds; elsewhere the
    function is returned as it is: nothing changes on a CPU."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def use_gpu(model_set: Any) -> bool:
    """On ZeroGPU, models are moved to CUDA once at start-up (the ``spaces`` package defers the move
    until a ``gpu_task`` runs); without ``spaces`` or CUDA they stay on the CPU. True when moved."""
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    model_set.to("cuda")
    return True
