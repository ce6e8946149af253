"""The memory allocators of a long batch run, tuned so that memory neither creeps up over its chunks nor is
handed back to the kernel and taken again for every one."""

from __future__ import annotations

import contextlib
import ctypes
import os

import pyarrow as pa

# glibc's mallopt parameters (malloc.h) and what a batch run sets them to: blocks up to the largest size glibc
# allows come from the heap rather than from mmap, and up to twice that may stay free on the heap for reuse.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20


def prefer_jemalloc() -> None:
    """Arrow's default allocator keeps memory that threads freed for one another; over a long run of chunks
    read in one thread and written in another it creeps up. jemalloc hands it back. An explicit choice in
    ARROW_DEFAULT_MEMORY_POOL wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    with contextlib.suppress(NotImplementedError):
        pa.set_memory_pool(pa.jemalloc_memory_pool())


def keep_freed_memory() -> None:
    """Each chunk allocates and frees the same few tens of megabytes of arrays in the pipeline. By default
    glibc gives blocks that large back to the kernel when they are freed, and the next chunk takes them back a
    page at a time, each one zeroed; kept on the heap, they are reused as they are. Free memory beyond
    TRIM_THRESHOLD still goes back. Other C libraries are left as they are."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        mallopt = ctypes.CDLL(None).mallopt if libc.startswith("glibc") else None
    except (ValueError, OSError, AttributeError):
        return
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
