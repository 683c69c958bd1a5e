"""Freed memory goes back to the system when the studio says so."""

import ctypes.util
from pathlib import Path

import pytest

from core.memory import release_freed_memory


def resident_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or "libc.so" not in str(ctypes.util.find_library("c")),
    reason="glibc on Linux only",
)
def test_memory_freed_between_live_blocks_is_handed_back() -> None:
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MB on the heap, each touched
    kept = blocks[::16]  # a block kept now and then: the heap cannot shrink from its top
    del blocks
    before = resident_mb()
    release_freed_memory()
    after = resident_mb()
    assert before - after > 150, (before, after)
    assert len(kept) == 250
