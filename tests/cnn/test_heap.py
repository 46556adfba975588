"""pipeline.cnn.heap: freed feature maps stay in the heap (no page faults to reuse them)."""

from __future__ import annotations

import platform
import resource

import numpy as np

from pipeline.cnn.heap import keep_freed_memory


def _faults_of_touching(nbytes: int) -> int:
    """Minor page faults of allocating, filling and freeing ``nbytes``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(nbytes, np.uint8)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_keep_freed_memory_reuses_pages_on_glibc():
    set_ = keep_freed_memory()
    assert set_ is (platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() is set_  # once per process, same answer
    if set_:
        nbytes = 16 << 20  # 4,096 pages: a large feature map
        _faults_of_touching(nbytes)  # the heap grows once
        assert _faults_of_touching(nbytes) < 64  # then its pages are reused, not faulted in
