"""One thread for all heavy torch work in this process.

PyTorch's CPU kernels use OpenMP, and libgomp keeps one team of worker threads per calling thread.
When two threads that have both run parallel kernels are alive at once, libgomp sees more threads
than cores and stops its workers from spinning between kernels: every small matrix product then
waits for a sleeping worker to wake up. Measured here (2 cores, bfloat16): 39 us per decoding
matmul from one thread, 84 us once a second thread had used torch; decoding fell from about 50 to
34 tokens/s. Streamlit runs each page run in a new thread, so the studio sends model loading and
generation to this single long-lived thread instead.

The studio also shares the machine: before each job this thread takes the cores that other
processes left free (core.cores).
"""

from __future__ import annotations

import functools
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from core import cores

P = ParamSpec("P")
T = TypeVar("T")

_jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
_torch_thread = threading.local()


def _run(future: Future[Any], job: Callable[[], Any]) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(job())
        except BaseException as error:  # handed to whoever waits on the future
            future.set_exception(error)


def _work() -> None:
    _torch_thread.active = True
    while (item := _jobs.get()) is not None:
        _run(*item)


def _stop() -> None:
    decode = sys.modules.get("core.model.decode")  # not imported: nothing is decoding
    if decode is not None:
        decode.stopping.set()
    _jobs.put(None)


# The torch thread is not a daemon: a daemon thread inside a torch kernel at interpreter exit can
# crash the process. At shutdown (a studio sent SIGTERM) it is joined before the process exits:
# hooks registered here run before that join, so the answers it is decoding end at their next
# token and the thread leaves its loop.
threading._register_atexit(_stop)  # type: ignore[attr-defined]
_thread = threading.Thread(target=_work, name="torch", daemon=False)
_thread.start()


_share = cores.Share()


def fit_threads() -> None:
    """Compute on the cores other processes leave free now (looked at most every
    cores.Share.MIN_WINDOW_S): before each job, and between the steps of a long one (the
    engine's decoding loop), so that a process that starts computing mid-answer gets its core."""
    torch = sys.modules.get("torch")  # not imported yet: nothing to size
    if torch is not None:
        threads = _share.threads_now()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _with_fair_threads(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    fit_threads()
    return fn(*args, **kwargs)


def submit(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Queue `fn` on the torch thread; jobs run one after another, in order, each on the cores
    other processes leave free."""
    future: Future[T] = Future()
    _jobs.put((future, functools.partial(_with_fair_threads, fn, *args, **kwargs)))
    return future


def waiting() -> bool:
    """Whether jobs are queued for the torch thread (a long job then lets them in)."""
    return not _jobs.empty()


def run_waiting() -> None:
    """Run the jobs queued so far, from inside a long job on the torch thread (the engine's
    decoding loop, between two tokens), so that loading an adapter or embedding a question never
    waits for every answer in progress to end."""
    assert getattr(_torch_thread, "active", False), "only the torch thread runs its jobs"
    while True:
        try:
            item = _jobs.get_nowait()
        except queue.Empty:
            return
        if item is None:  # shutting down: leave the sentinel for the thread's own loop
            _jobs.put(None)
            return
        _run(*item)


def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on the torch thread and wait for its result (or its exception)."""
    if getattr(_torch_thread, "active", False):  # already there: waiting on ourselves would hang
        return fn(*args, **kwargs)
    return submit(fn, *args, **kwargs).result()
