"""The worker trains on the cores that the studio and other processes leave free, looked at
before every step: both cores of an idle machine, one fewer while something else computes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from core import cores
from core.training import worker

WAIT_S = 30


def threads_after_steps_until(callback: worker.FairThreads, wanted) -> int:  # type: ignore[no-untyped-def]
    """Begin steps (as the Trainer would) until the worker's threads are `wanted`, or time is up."""
    deadline = time.monotonic() + WAIT_S
    while True:
        callback.on_step_begin(None, None, None)
        threads = torch.get_num_threads()
        if wanted(threads) or time.monotonic() > deadline:
            return threads
        time.sleep(cores.Share.MIN_WINDOW_S)


@pytest.fixture
def keep_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(cores.count() < 2, reason="one core: there is nothing to give up")
def test_steps_take_the_cores_others_leave_and_give_them_back(keep_threads) -> None:  # type: ignore[no-untyped-def]
    callback = worker.FairThreads(cores.Share())
    every = cores.count()
    assert threads_after_steps_until(callback, lambda threads: threads == every) == every
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert threads_after_steps_until(callback, lambda threads: threads < every) == every - 1
    finally:
        busy.kill()
        busy.wait(timeout=10)
    assert threads_after_steps_until(callback, lambda threads: threads == every) == every


def test_processes_training_together_split_the_cores(monkeypatch, keep_threads) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(worker, "_share", None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    share = worker.share()
    assert share.most == max(1, cores.count() // 2)
    assert share.threads_now() <= share.most
    monkeypatch.setattr(worker, "_share", None)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert worker.share().most == cores.count()
