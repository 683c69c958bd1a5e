"""One thread for all heavy torch work in this process.

PyTorch's CPU kernels use OpenMP, and libgomp keeps one team of worker threads per calling thread.
When two threads that have both run parallel kernels are alive at once, libgomp sees more threads
than cores and stops its workers from spinning between kernels: every small matrix product then
waits for a sleeping worker to wake up. Measured here (2 cores, bfloat16): 39 us per decoding
matmul from one thread, 84 us once a second thread had used torch; decoding fell from about 50 to
34 tokens/s. Streamlit runs each page run in a new thread, so the studio sends model loading and
generation to this single long-lived thread instead.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
_torch_thread = threading.local()


def _mark() -> None:
    _torch_thread.active = True


_executor.submit(_mark)


def _stop_decoding() -> None:
    decode = sys.modules.get("core.decode")  # not imported: nothing is decoding
    if decode is not None:
        decode.stopping.set()


# At interpreter shutdown (a studio sent SIGTERM) the torch thread is joined before the process
# can exit: end the answers it is decoding first. Hooks registered here run before the join
# concurrent.futures registered at its import (they run newest first).
threading._register_atexit(_stop_decoding)  # type: ignore[attr-defined]


def submit(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Queue `fn` on the torch thread; jobs run one after another, in order."""
    return _executor.submit(fn, *args, **kwargs)


def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on the torch thread and wait for its result (or its exception)."""
    if getattr(_torch_thread, "active", False):  # already there: waiting on ourselves would hang
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()
