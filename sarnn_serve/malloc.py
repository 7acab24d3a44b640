"""The C allocator's hold on large buffers: given back to the kernel when freed.

glibc serves an allocation above its mmap threshold (128 KiB) with its own mapping, unmapped on
free, but raises the threshold to the size of each such buffer freed (up to 32 MiB): after the
first large chunk, records and chunk arrays of hundreds of kB come from the heap, where freed
space between long-lived records stays in the process. Fixing the threshold keeps a process's
memory what it holds (benchmarks/bench_memory.py: a flood into a 64 MiB store budget grew RSS
by 71 MiB with the moving threshold, 64 MiB with it fixed), for a page-mapping cost only on
buffers of 128 KiB or more.
"""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
LARGE = 128 * 1024


def give_back_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 128 KiB; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE))
