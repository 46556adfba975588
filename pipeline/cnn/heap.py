"""Keep freed activation memory in the process heap while a network trains.

A training step allocates and frees ~100 MB of feature maps and gradients (batch 64 on
the 32x32 reference net). glibc's malloc serves blocks above its mmap threshold with
fresh ``mmap`` pages and trims the heap top on free, so every step faults the same memory
back in and the kernel zeroes it again: 4,500-5,000 page faults and 15-18 ms of system
time per 200 ms step, measured on this project's 2-core machine. Raising the trim
threshold and pinning the mmap threshold at its maximum (32 MiB on 64-bit) keeps those
blocks in the heap for the next step: the faults drop to a handful and the system time
to ~1 ms. The cost is that the process keeps its peak heap instead of returning it.

:func:`keep_freed_memory` applies it once per process (``mallopt``, glibc only; anything
else is left alone). :meth:`pipeline.cnn.model.Model.forward` calls it on the first
training pass.
"""

from __future__ import annotations

import ctypes
import threading

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_freed_memory"]

MMAP_THRESHOLD_BYTES = 32 << 20
"""Blocks up to this size come from the heap (glibc's largest allowed mmap threshold)."""
TRIM_THRESHOLD_BYTES = 1 << 30
"""Free memory at the heap top kept before glibc returns it to the system."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_state: bool | None = None  # None: not tried yet
_lock = threading.Lock()


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (above) once per process; True if they are set, False
    where there is no glibc ``mallopt`` (other C libraries keep their own policy)."""
    global _state
    with _lock:
        if _state is None:
            _state = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _mallopt(
                _M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES
            )
        return _state


def _mallopt(param: int, value: int) -> bool:
    """glibc ``mallopt(param, value)`` (from the symbols already loaded in the process);
    False when it is missing or refuses."""
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn(param, value) == 1
