"""glibc malloc settings that suit PyTorch on a CPU, set by the program rather than left to the user.

By default glibc serves every allocation above a dynamic threshold (128 KiB to 32 MiB) with its own mmap and
returns it to the system on free, so each large activation tensor of every forward pass costs fresh,
zero-filled pages: millions of minor page faults in a batch prediction. Keeping freed memory in the heap
instead (no mmap for large blocks, a high trim threshold) made `python -m trainer predict` 1.44x faster and a
frozen training epoch 1.98x faster (issue 16). Capping the number of arenas keeps the resident size of a
multi-threaded server flat instead of growing with each thread that allocates.

A long-running server wants the opposite trade: an image-sized array freed after a request must go back to
the system. There every request thread would get an arena of its own (up to 8 per core), and after a large
free glibc raises its mmap threshold to 32 MB so the next image-sized arrays land in the arenas and stay;
measured on the demo (rounds of 6 concurrent predictions, one a 7700x7700 PNG) resident memory rose from 0.99
to 1.78 GB and stayed. With at most two arenas and a fixed 4 MB mmap threshold the same rounds plateau at
1.23 GB (issue 12). The threshold is now 8 MiB, so that the 4 MiB arrays of a 1024x1024 float32 image come
from the arenas instead of fresh pages: one /predict went from 232-274 to 186-206 ms in the server, and
under bench/load.py (20 clients, 7700x7700 PNGs among the inputs) the peak stayed at 1.35-1.54 GB against
1.28-1.47 GB, RSS growth 12-14 % against 10-15 % (3 runs each, issue 16). `Profile.SERVER` is that setting;
the CLI uses `Profile.THROUGHPUT`.

glibc reads the matching `MALLOC_*_` environment variables only at process start, so they cannot be set from
Python; `mallopt` can. A variable the user did set wins over these defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import threading
from collections.abc import Callable
from enum import StrEnum

log = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


class Profile(StrEnum):
    """What the process is tuned for."""

    THROUGHPUT = "throughput"  # batch prediction and training: reuse freed memory
    SERVER = "server"  # a long-running demo: give image-sized blocks back after each request


# name of the variable that overrides a setting: (mallopt parameter, chexlab's value)
SETTINGS: dict[Profile, dict[str, tuple[int, int]]] = {
    Profile.THROUGHPUT: {
        "MALLOC_MMAP_MAX_": (_M_MMAP_MAX, 0),  # large blocks come from the heap and are reused
        "MALLOC_TRIM_THRESHOLD_": (
            _M_TRIM_THRESHOLD,
            256 * 1024 * 1024,
        ),  # keep up to 256 MiB free at the top
        "MALLOC_ARENA_MAX": (_M_ARENA_MAX, 2),  # one arena per thread would let RSS step up with every thread
    },
    Profile.SERVER: {
        "MALLOC_MMAP_THRESHOLD_": (
            _M_MMAP_THRESHOLD,
            8 * 1024 * 1024,
        ),  # fixed: blocks larger than a 1024x1024 float32 image are mmapped
        "MALLOC_ARENA_MAX": (_M_ARENA_MAX, 2),
    },
}

_lock = threading.Lock()
_applied: dict[str, int] | None = None


def tune_allocator(profile: Profile = Profile.THROUGHPUT) -> dict[str, int]:
    """Apply the profile's `SETTINGS` to this process's glibc malloc, once; later calls return what it set.

    The first call decides (call it at start, before the threads that allocate exist). Settings whose
    environment variable is set are left to glibc (the user's value applies). Does nothing outside glibc
    (macOS, Windows, musl).

    Returns:
        The settings applied, by environment variable name (empty when none could be).
    """
    global _applied
    with _lock:
        if _applied is not None:
            return dict(_applied)
        _applied = {}
        mallopt = _mallopt()
        if mallopt is None:
            log.debug("not glibc: malloc settings left as they are")
            return {}
        for name, (parameter, value) in SETTINGS[profile].items():
            if name in os.environ:
                log.debug("%s=%s is set: left to glibc", name, os.environ[name])
            elif mallopt(parameter, value) == 1:
                _applied[name] = value
            else:
                log.warning("mallopt refused %s=%d; malloc keeps its default", name, value)
        log.debug("malloc settings applied (%s): %s", profile, _applied)
        return dict(_applied)


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's `int mallopt(int param, int value)`, or None outside glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
