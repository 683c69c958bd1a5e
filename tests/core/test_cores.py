"""How many threads the studio computes on, from what the machine's other processes used between
two looks (the numbers a look reads are fed in here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core import cores


class Looks:
    """Feeds a Share the (wall clock, machine's busy seconds, our busy seconds) of each look."""

    def __init__(self) -> None:
        self.now = (0.0, 0.0, 0.0)

    def advance(self, wall_s: float, others_s: float, ours_s: float) -> None:
        wall, machine, own = self.now
        self.now = (wall + wall_s, machine + others_s + ours_s, own + ours_s)


@pytest.fixture
def looks(monkeypatch):  # type: ignore[no-untyped-def]
    fed = Looks()
    monkeypatch.setattr(cores, "count", lambda: 2)
    monkeypatch.setattr(cores.Share, "_sample", staticmethod(lambda: fed.now))
    monkeypatch.setattr(cores, "time", SimpleNamespace(monotonic=lambda: fed.now[0]))
    return fed


@pytest.mark.parametrize(
    ("wall_s", "others_s", "ours_s", "threads"),
    [
        # a quiet machine: the system's noise leaves us every core
        (1.0, 0.2, 2.0, 2),
        # measured: our two spinning threads took 1.17 cores and left a busy process 0.46;
        # rounding kept both threads, and decoding ran at half the speed of one thread
        (2.81, 1.29, 3.28, 1),
        # a process on a whole core
        (1.0, 1.0, 1.0, 1),
        # processes on every core: we still compute, on one
        (1.0, 2.0, 0.5, 1),
    ],
)
def test_the_threads_left_us_by_what_others_used(  # type: ignore[no-untyped-def]
    looks, wall_s, others_s, ours_s, threads
) -> None:
    share = cores.Share()
    looks.advance(wall_s=wall_s, others_s=others_s, ours_s=ours_s)
    assert share.threads_now() == threads


def test_the_cores_come_back_when_the_other_process_stops(looks) -> None:  # type: ignore[no-untyped-def]
    share = cores.Share()
    looks.advance(wall_s=1.0, others_s=1.0, ours_s=1.0)
    assert share.threads_now() == 1
    looks.advance(wall_s=1.0, others_s=0.0, ours_s=1.0)
    assert share.threads_now() == 2


def test_looks_closer_together_than_the_window_keep_the_last_answer(looks) -> None:  # type: ignore[no-untyped-def]
    share = cores.Share()
    looks.advance(wall_s=1.0, others_s=1.0, ours_s=1.0)
    assert share.threads_now() == 1
    looks.advance(wall_s=cores.Share.MIN_WINDOW_S / 2, others_s=0.0, ours_s=0.1)
    assert share.threads_now() == 1  # too soon to tell: the window goes on
    looks.advance(wall_s=1.0, others_s=0.0, ours_s=2.0)
    assert share.threads_now() == 2
