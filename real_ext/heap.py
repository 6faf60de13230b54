"""Keep freed host memory in the process while real_ext works (glibc only).

glibc hands large freed blocks straight back to the kernel: a block above its
mmap threshold (at most 32 MiB by default) is unmapped on free, and a heap
whose free top passes the trim threshold is shrunk. Generation and training
free and reallocate the same large activations every layer, so each call then
page-faults its memory back in and the kernel zeroes every page afresh. On the
bench machine (bench/RESULTS.md, stop 26) that was 0.9-1.7 s of kernel time per
generate() of the 64-prompt bench (0.4-0.6 s holding) and 4.9 s per training
step of bench_model (2.2 s holding): 5-10% of the wall time. The price is a
somewhat higher peak (bench_model: +7%): a kept block does not always fit the
next request.

Inside ``hold_freed_memory()`` both thresholds are raised, so freed blocks stay
in the heap and the next allocation reuses them, as PyTorch's CUDA caching
allocator does on a GPU. On leaving the outermost scope the thresholds go back
to glibc's dynamic ceilings (32 MiB mmap, 64 MiB trim; glibc cannot return to
its dynamic mode once they are set), and if the scope grew the heap by more
than the trim ceiling, ``malloc_trim`` gives the free pages back. A smaller
growth is kept, as glibc itself keeps up to that much free at the heap's top:
trimming after every call of a loop of small generate() calls (0.15-0.6 s each)
made each call fault its memory back in, 1-10 thousand pages and 3-20% of its
time. generate() and Trainer.train_step enter it themselves; a caller looping
over them can wrap the whole loop to keep the memory between calls. Worker
processes hold it for their whole life (``hold_for_process``): a worker stands
in for one GPU and re-runs the same calls.

``REAL_EXT_HOLD_FREED_MEMORY=0`` turns it off. Without glibc it does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading

M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
HELD = 1 << 30          # a freed block below 1 GiB stays in the heap
GLIBC_CEILINGS = (32 << 20, 64 << 20)   # (mmap, trim): where glibc's dynamic thresholds stop

_lock = threading.Lock()
_depth = 0
_heap_at_entry = 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc's handle, or None (another C library, or turned off)."""
    if os.environ.get("REAL_EXT_HOLD_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL("libc.so.6")   # glibc's soname on every Linux it runs on
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _MallInfo2
    return libc


def _set_thresholds(mmap: int, trim: int) -> None:
    libc = _libc()
    if not libc.mallopt(M_MMAP_THRESHOLD, mmap):
        # Older glibc refuses an mmap threshold above 32 MiB; setting none at
        # all would leave it at 128 KiB, since any mallopt ends the dynamic mode.
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_CEILINGS[0])
    libc.mallopt(M_TRIM_THRESHOLD, trim)


def _heap_bytes() -> int | None:
    """Bytes the heaps (all arenas) take from the kernel; None before glibc 2.33."""
    libc = _libc()
    return libc.mallinfo2().arena if hasattr(libc, "mallinfo2") else None


def _enter() -> None:
    global _depth, _heap_at_entry
    with _lock:
        if _depth == 0 and _libc() is not None:
            _heap_at_entry = _heap_bytes() or 0
            _set_thresholds(HELD, HELD)
        _depth += 1


def _leave() -> None:
    global _depth
    with _lock:
        _depth -= 1
        if _depth == 0 and _libc() is not None:
            _set_thresholds(*GLIBC_CEILINGS)
            now = _heap_bytes()
            if now is None or now - _heap_at_entry > GLIBC_CEILINGS[1]:
                _libc().malloc_trim(0)


@contextlib.contextmanager
def hold_freed_memory():
    """Freed host memory stays in the process until the outermost scope ends
    (also a decorator: ``@hold_freed_memory()``)."""
    _enter()
    try:
        yield
    finally:
        _leave()


def hold_for_process() -> None:
    """Hold freed memory until the process exits (worker processes)."""
    _enter()
