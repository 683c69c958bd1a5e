"""Who wrote a file, and whether that process still runs (host:pid, as our job files record it)."""

from __future__ import annotations

import os
from pathlib import Path


def this_process() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def process_alive(owner: str) -> bool:
    """Whether the process that wrote `owner` (host:pid) may still be running."""
    host, _, pid = owner.rpartition(":")
    if host != os.uname().nodename:
        return True  # another machine's writer: we cannot tell, so we leave it alone
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) answers the signal but is dead
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
