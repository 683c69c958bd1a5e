"""How many cores this process should compute on: the machine's, less those that other processes
kept busy since the last look.

OpenMP's thread team waits for all of its threads between kernels, so when another process keeps
a core busy, every kernel waits for the thread the kernel scheduler put off. Measured here (2
cores, the default model, a second torch process computing beside it): decoding fell from 13.3 to
2.3 tokens/s (5.8x) with both cores, and only from 8.4 to 7.9 with one. The studio's torch thread
(core.model.compute) looks before each job, the training worker before each step
(core.training.worker), so each takes the cores the other leaves and gives them back when the
other needs them.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot; None where /proc/stat is missing."""
    try:
        with Path("/proc/stat").open() as stat:
            fields = [int(n) for n in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and waiting for the disk
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Share:
    """How many cores other processes kept busy between two looks, and the threads left us (at
    most `most`: all cores unless said)."""

    MIN_WINDOW_S = 0.25  # looks closer together than this keep the last answer
    # Others' use up to this share of a core is noise (the system's daemons); above it, they
    # hold a core. Not half a core: a team of ours that spins on every core starves a second
    # process to less than that. Measured here, our decoding on 2 threads beside a busy torch
    # process: it got 0.46 of a core while we took 1.17, rounding kept our 2 threads and we
    # decoded at 15-18 tokens/s; on 1 thread, at 35-44.
    NOISE_CORES = 0.25

    def __init__(self, most: int | None = None) -> None:
        self.cores = count()
        self.most = max(1, min(self.cores, most or self.cores))
        self.threads = self.most
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        own = os.times()
        return time.monotonic(), machine_busy_s(), own.user + own.system

    def others_busy(self) -> float | None:
        """Cores busy with other processes since the last look (None: too soon, or unknown)."""
        if time.monotonic() - self._last[0] < self.MIN_WINDOW_S:
            return None  # cheap enough to ask between two decoding steps
        now = self._sample()
        wall = now[0] - self._last[0]
        if now[1] is None or self._last[1] is None:
            return None
        busy = (now[1] - self._last[1]) - (now[2] - self._last[2])
        self._last = now
        return max(0.0, busy / wall)

    def threads_now(self) -> int:
        others = self.others_busy()
        if others is not None:
            taken = max(0, math.ceil(others - self.NOISE_CORES))
            self.threads = max(1, min(self.most, self.cores - taken))
        return self.threads
