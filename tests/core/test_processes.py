"""Whether the process that wrote a job file still runs."""

import os
import subprocess
import sys
import time
from pathlib import Path

from core.processes import process_alive, this_process


def test_this_process_is_alive_and_a_finished_one_is_not() -> None:
    assert process_alive(this_process())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    assert not process_alive(f"{os.uname().nodename}:{child.pid}")


def test_a_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped: it still answers signals. Wait (bounded) for it to exit.
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 60
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.02)
        assert not process_alive(f"{os.uname().nodename}:{child.pid}")
    finally:
        child.wait(timeout=60)


def test_another_machines_writer_is_left_alone_and_nonsense_is_dead() -> None:
    assert process_alive("some-other-host:1")
    assert not process_alive(f"{os.uname().nodename}:not-a-pid")
