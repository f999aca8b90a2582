"""smoothgen._malloc: a replica keeps freed memory for reuse and hands it back after a generation."""
import ctypes.util
import platform

import pytest

from smoothgen._malloc import _LIBC, keep_freed_memory, release_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or "glibc" not in " ".join(platform.libc_ver()),
                    reason="mallopt and malloc_trim are glibc's")
def test_the_allocator_settings_apply_on_glibc():
    assert _LIBC is not None and ctypes.util.find_library("c")
    assert keep_freed_memory() is True  # mallopt accepted all three settings
    release_freed_memory()  # malloc_trim(0): returns, whatever it could give back
