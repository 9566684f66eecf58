"""trainer.allocator: for throughput glibc keeps large blocks in the heap, for a server it gives them back;
the user's MALLOC_* variables win."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")

# A 64 MiB block: glibc's default serves it with mmap (counted in mallinfo2's hblkhd), tuned from the heap.
SCRIPT = """
import ctypes, json, sys
import numpy as np
from trainer.allocator import Profile, tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
first = tune_allocator(Profile(sys.argv[1])) if sys.argv[1] != "default" else {}
block = np.ones(64 * 1024 * 1024, dtype=np.uint8)
mmapped = libc.mallinfo2().hblkhd
del block
block = np.ones(24 * 1024 * 1024, dtype=np.uint8)
del block  # glibc's default now raises its mmap threshold to 24 MiB: the next 16 MiB block stays in the heap
before = libc.mallinfo2().hblkhd
block = np.ones(16 * 1024 * 1024, dtype=np.uint8)
after_free = libc.mallinfo2().hblkhd - before  # how much of that block is mmapped
print(json.dumps({"applied": first, "again": tune_allocator(), "mmapped": mmapped, "after_free": after_free}))
"""


def run(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    command = [sys.executable, "-c", SCRIPT, mode]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environ, check=True)
    return json.loads(done.stdout)


def test_tuned_malloc_serves_large_blocks_from_the_heap() -> None:
    assert run("default")["mmapped"] >= 64 * 1024 * 1024  # the default: its own mmap
    tuned = run("throughput")
    assert tuned["mmapped"] < 64 * 1024 * 1024
    assert tuned["applied"] == {
        "MALLOC_MMAP_MAX_": 0,
        "MALLOC_TRIM_THRESHOLD_": 256 * 1024 * 1024,
        "MALLOC_ARENA_MAX": 2,
    }
    assert tuned["again"] == tuned["applied"]  # idempotent: the second call changes nothing


def test_a_variable_the_user_set_wins() -> None:
    result = run("throughput", MALLOC_MMAP_MAX_="65536", MALLOC_ARENA_MAX="4")
    assert result["applied"] == {"MALLOC_TRIM_THRESHOLD_": 256 * 1024 * 1024}
    assert result["mmapped"] >= 64 * 1024 * 1024  # mmap stays allowed, as the user asked


def test_a_server_gives_image_sized_blocks_back_after_a_large_free() -> None:
    assert run("default")["after_free"] < 16 * 1024 * 1024  # glibc's dynamic threshold: kept in the heap
    server = run("server")
    assert server["applied"] == {"MALLOC_MMAP_THRESHOLD_": 8 * 1024 * 1024, "MALLOC_ARENA_MAX": 2}
    assert server["mmapped"] >= 64 * 1024 * 1024
    assert server["after_free"] >= 16 * 1024 * 1024  # still its own mmap, returned to the system on free
