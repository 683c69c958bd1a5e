"""The torch thread shares the machine: with another process keeping a core busy, its jobs run on
the cores left (a team waiting on a thread the scheduler put off made decoding 5.8x slower)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from core import cores
from core.model import compute

WAIT_S = 30


def threads_until(share: cores.Share, wanted, timeout_s: float = WAIT_S) -> int:  # type: ignore[no-untyped-def]
    """Look again and again (each look covers the time since the last) until `wanted(threads)`."""
    deadline = time.monotonic() + timeout_s
    threads = share.threads_now()
    while not wanted(threads) and time.monotonic() < deadline:
        time.sleep(cores.Share.MIN_WINDOW_S)
        threads = share.threads_now()
    return threads


@pytest.mark.skipif(cores.count() < 2, reason="one core: there is nothing to give up")
def test_a_busy_process_beside_the_studio_takes_cores_from_its_jobs_and_gives_them_back(
    monkeypatch,
) -> None:  # type: ignore[no-untyped-def]
    share = cores.Share()
    monkeypatch.setattr(compute, "_share", share)  # the torch thread's jobs follow this one
    assert share.threads_now() == share.cores  # a quiet machine: every core
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        fewer = threads_until(share, lambda threads: threads < share.cores)
        assert fewer == share.cores - 1  # the busy process keeps one core
        # The jobs of the torch thread run with that many threads.
        assert compute.call(torch.get_num_threads) == fewer
    finally:
        busy.kill()
        busy.wait(timeout=10)
    assert threads_until(share, lambda threads: threads == share.cores) == share.cores
    assert compute.submit(torch.get_num_threads).result() == share.cores


def test_without_proc_stat_the_threads_stay_as_they_are(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(cores, "machine_busy_s", lambda: None)
    share = cores.Share()
    assert threads_until(share, lambda threads: False, timeout_s=1) == share.cores
