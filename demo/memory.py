"""Allocator settings that keep a long-running demo's memory from only growing (glibc's malloc).

Measured (demo/predictor on the default model, rounds of 6 concurrent predictions, one a 7700x7700 PNG):
resident memory rose from 0.99 to 1.78 GB in the first round and stayed there, though `malloc_trim` could
hand 0.64 GB back. Two glibc behaviours keep freed memory: every request thread gets a malloc arena of its
own (up to 8 per core), and after a large block is freed the threshold above which blocks are mmapped (and
returned to the system on free) rises to 32 MB, so the next image-sized arrays land in the arenas and stay.
With at most two arenas and a fixed 4 MB threshold, the same rounds plateau at 1.23 GB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

__all__ = ["limit_allocator"]

_M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
_M_ARENA_MAX = -8


def limit_allocator(arenas: int = 2, mmap_threshold: int = 4 << 20) -> bool:
    """Set glibc's malloc to at most `arenas` arenas and a fixed mmap threshold; call once, at start.

    Returns:
        Whether the settings were applied (False where the C library is not glibc, e.g. musl or macOS).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        applied = bool(libc.mallopt(_M_ARENA_MAX, arenas)) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        )
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt
        applied = False
    if applied:
        log.info("malloc: at most %d arenas, blocks over %d MB mmapped", arenas, mmap_threshold >> 20)
    return applied
