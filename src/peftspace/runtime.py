"""Process settings that make CPU training faster; applied by the CLI and the search's trial workers.

`keep_freed_memory()`: glibc's malloc hands large freed blocks back to the operating system (blocks
above its mmap threshold are unmapped; the top of the heap is trimmed), so the next training step
page-faults the same memory back in and the kernel zeroes every page again. PyTorch's CPU allocator
has no cache of its own, so on a MiniLM-sized step (batch 32 × 64) that is ~35,000 page faults, ≈ 140
MB zeroed, 5% of the step (bench/README.md, "What was slow, what changed"). Keeping freed memory in
the process turns those into reuse. It is what PyTorch's CPU tuning guide gets by preloading
jemalloc or tcmalloc, without a preload: three `mallopt` calls.

The cost: the process's resident memory stays at its peak instead of shrinking between steps (a
training loop reaches that peak every step anyway). Opt out with PEFTSPACE_MALLOC=system; library
users call it themselves (`peftspace.keep_freed_memory()`) if they want it.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse (see the module docstring). Returns whether the
    setting is in effect: False on other C libraries / platforms or with PEFTSPACE_MALLOC=system."""
    global _applied
    if _applied:
        return True
    if os.environ.get("PEFTSPACE_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # Blocks up to 1 GiB come from the heap; glibc versions that cap the threshold at 32 MiB refuse 1 GiB.
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap's top back (int-sized arg)
    libc.mallopt(_M_TOP_PAD, 64 << 20)  # grow the heap in 64 MiB steps: fewer brk calls
    _applied = bool(mmap_ok and trim_ok)
    return _applied
