"""The C allocator's handling of freed memory, for long-running processes that certify (a `smoothgen serve`
replica).

glibc gives freed memory back to the system as soon as the top of a heap holds more than its trim threshold
(128 KiB, raised dynamically), and serves large blocks by mmap; a certificate's tensors (a batch of 1 000
noisy copies and the model's activations on them, several MB) are then returned after every batch and
faulted in again for the next. Measured on the digits CNN at n = 2 000 (2-core CPU, one torch thread):
34-60 CPU-ms per certificate, 1-19 of them in the kernel, varying from run to run; with freed memory kept
(`keep_freed_memory`), 31-36 CPU-ms with under 1 ms in the kernel. What is kept is handed back explicitly
where a large request ends (`release_freed_memory`, after a generation).

Both are no-ops where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (not mmap), and the heap keeps this much free at its top.
KEEP_BYTES = 64 << 20
#: The heap is trimmed automatically only beyond this much free memory at its top.
TRIM_THRESHOLD_BYTES = 1 << 30


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of returning it after every large free. Returns whether
    the settings were applied."""
    if _LIBC is None:
        return False
    return all(_LIBC.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, KEEP_BYTES), (_M_TOP_PAD, KEEP_BYTES), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)))


def release_freed_memory() -> None:
    """Hand the memory glibc holds free back to the system (malloc_trim(0)); about a millisecond."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
