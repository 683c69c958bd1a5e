"""One engine per model for every session of the studio process: continuous batching.

Every answer the studio generates (Chat, Arena, evaluation, the freshness check, Try it) is a
row handed to the engine of the one shared model. The engine keeps one batch decoding on the
torch thread (core.model.compute): rows that arrive while it runs join at the next token
boundary, and rows leave as soon as they end, are cancelled or their reader goes away. So four
visitors asking at once are answered together, for little more than the cost of one answer.

- People at the screen come first: while any of their rows wait for a place in the batch,
  background rows (an evaluation run) are not admitted.
- The batch holds at most `max_batch` rows; the rest wait in arrival order. Past `max_waiting`
  rows of people waiting, a new question is refused with a plain message that says how many
  answers are ahead, instead of waiting without a word.
- Between two tokens the engine lets other torch jobs in (loading an adapter, embedding a
  question), with PEFT's layers in place: they never wait for every answer in progress.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from core.errors import BusyError
from core.memory import release_freed_memory
from core.model import compute
from core.model.decode import BASE, Batch, PrefixCache, Row, stopping
from core.model.weights import DecodeWeights
from core.wording import plural


class Engine:
    """The continuous batch of one model. `submit` hands rows over and returns at once; each
    row streams through its own callbacks (see `Row`)."""

    def __init__(
        self,
        model: Any,
        eos_ids: set[int],
        peft: Callable[[], Any],
        *,
        max_batch: int = 16,
        max_waiting: int = 32,
        weights: DecodeWeights | None = None,
    ) -> None:
        self.model = model
        self.weights = weights  # how decoding reads the weights (core.model.weights)
        self.eos_ids = eos_ids
        self._peft = peft
        self.max_batch = max(1, max_batch)
        self.max_waiting = max(1, max_waiting)
        self._lock = threading.Lock()
        self._waiting: list[Row] = []  # in arrival order
        self._running: list[Row] = []  # the rows of the batch, as of the last step
        self._looping = False
        self.step_sizes: Counter[int] = Counter()  # decoding steps run, by rows in the batch
        self.prefixes = PrefixCache()  # prompts read lately, shared by every session

    # -- the callers' side ----------------------------------------------------------------------
    def submit(self, rows: Sequence[Row]) -> None:
        """Queue `rows`; they join the batch at the next token boundary where there is room.
        Raises BusyError, with nothing queued, when too many people's answers are waiting."""
        with self._lock:
            if not all(row.background for row in rows):
                ahead = sum(1 for row in self._waiting if not row.background and not row.stopped)
                if ahead and ahead + len(rows) > self.max_waiting:
                    raise BusyError(
                        f"The studio is busy: {plural(ahead, 'answer')} "
                        f"{'is' if ahead == 1 else 'are'} waiting before yours. Ask again in a "
                        "minute."
                    )
            self._waiting.extend(rows)
            if not self._looping:
                self._looping = True
                compute.submit(self._loop)

    def waiting(self) -> int:
        """Rows waiting for a place in the batch."""
        with self._lock:
            return sum(1 for row in self._waiting if not row.done.is_set())

    def in_use(self) -> set[str]:
        """Adapters that rows waiting or decoding need: they must stay loaded."""
        with self._lock:
            rows = [*self._waiting, *self._running]
        return {row.adapter for row in rows if row.adapter != BASE and not row.done.is_set()}

    # -- the torch thread's side ----------------------------------------------------------------
    def _admissible(self, room: int) -> list[Row]:
        """The rows that join now: people's rows first, in arrival order, then background rows
        once no person's row waits; cancelled rows leave the queue here."""
        with self._lock:
            for row in self._waiting:
                if row.stopped:
                    row.end()
            self._waiting = [row for row in self._waiting if not row.done.is_set()]
            people = [row for row in self._waiting if not row.background]
            chosen = people[:room]
            if len(chosen) == len(people):
                chosen += [row for row in self._waiting if row.background][: room - len(chosen)]
            taken = {id(row) for row in chosen}
            self._waiting = [row for row in self._waiting if id(row) not in taken]
            return chosen

    def _idle(self, batch: Batch) -> bool:
        """Whether the loop may end: nothing decoding and nothing waiting (decided under the
        lock, so that a row submitted now starts a new loop)."""
        with self._lock:
            self._running = list(batch.rows)
            if batch.rows or self._waiting:
                return False
            self._looping = False
            return True

    def _loop(self) -> None:
        import torch

        batch = Batch(self.model, self.eos_ids, self._peft, self.prefixes, self.weights)
        try:
            with torch.inference_mode():
                while not self._idle(batch):
                    if stopping.is_set():
                        self._stop(batch)
                        continue
                    joining = self._admissible(self.max_batch - len(batch.rows))
                    if joining:
                        batch.admit(joining)
                        self._idle(batch)  # the rows that joined count as in use from here
                    if batch.rows:
                        self.step_sizes[len(batch.rows)] += 1
                        compute.fit_threads()
                        batch.step()
                    if compute.waiting():
                        batch.pause()
                        compute.run_waiting()
        except BaseException as error:  # the model failed: these rows end with it, others go on
            batch.fail(error)
            with self._lock:
                self._running = []
                self._looping = bool(self._waiting)
                if self._looping:
                    compute.submit(self._loop)
        finally:
            batch.pause()
            release_freed_memory()  # the prompts' activations and caches of this burst

    def _stop(self, batch: Batch) -> None:
        """The process is shutting down: every row ends now."""
        batch.pause()
        for row in batch.rows:
            row.end()
        batch.rows = []
        with self._lock:
            for row in self._waiting:
                row.end()
            self._waiting = []
