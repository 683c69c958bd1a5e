"""What answering a chat means, whoever does it: the sampling settings, one request, the answer
arriving as a stream with honest timings, and the `ChatModel` protocol that the embedded model
(core.model.local), a remote engine or a test's fake all follow.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Protocol

from core.errors import InvalidInputError, ModelNotAvailableError
from core.model import loops
from core.settings import Settings

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}


class StreamSource(Protocol):
    """The generating side of a stream: its queue of text pieces and its own clock."""

    text_queue: Queue[str | None]
    first_token_at: float | None
    finished_at: float | None
    new_tokens: int


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings; the help texts are the ones shown in the app."""

    temperature: float = field(
        default=0.3, metadata={"help": Settings.model_fields["temperature"].description}
    )
    top_p: float = field(default=0.9, metadata={"help": Settings.model_fields["top_p"].description})
    max_new_tokens: int = field(
        default=256, metadata={"help": Settings.model_fields["max_new_tokens"].description}
    )
    repetition_penalty: float | None = field(  # None: the model's generation_config decides
        default=None, metadata={"help": Settings.model_fields["repetition_penalty"].description}
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingParams:
        return cls(
            settings.temperature,
            settings.top_p,
            settings.max_new_tokens,
            settings.repetition_penalty,
        )


@dataclass(frozen=True)
class Timings:
    """How long an answer took. Time to first token includes any wait for the model."""

    prompt_tokens: int
    new_tokens: int
    time_to_first_token_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decoding speed: tokens after the first, over the time after the first."""
        decode_s = self.total_s - self.time_to_first_token_s
        if self.new_tokens > 1 and decode_s > 0:
            return (self.new_tokens - 1) / decode_s
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.new_tokens} tokens · first token after {self.time_to_first_token_s:.2f} s · "
            f"{self.tokens_per_s:.1f} tokens/s · {self.total_s:.1f} s in all"
        )


@dataclass(frozen=True)
class Favour:
    """Text whose words an answer should take: every token of it gets `bonus` added to its
    score (logit) at each step, in every engine (a logit bias)."""

    text: str
    bonus: float


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to answer; `adapter` names an adapter loaded into the model, or None
    for the base model; `ends`: where the answer ends, if it goes on (the text from its first
    match on is left out and generation stops there); `favour`: text whose words it should
    take."""

    messages: Sequence[Message]
    system_prompt: str = ""
    adapter: str | None = None
    ends: re.Pattern[str] | None = None
    favour: Favour | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    timings: Timings
    notices: tuple[str, ...] = ()
    looped: bool = False  # stopped because it began repeating itself (core.model.loops)


class ChatStream:
    """An answer arriving as text pieces. Iterate it; `answer` is complete once it is exhausted.

    `notices` (for example that a long message was cut) are known before the first piece.
    Closing the stream early stops the generation behind it, and so does an answer that begins
    repeating itself (core.model.loops): whatever the engine, it ends there, cut back to its first
    time round, and says so in its notices. An answer that reaches its request's `ends` stops
    there too, the match and all after it left out. With a `source` (the streamer the model
    writes into), token counts and times come from the generating side's own clock.
    """

    def __init__(
        self,
        pieces: Iterator[str],
        *,
        prompt_tokens: int,
        notices: Sequence[str] = (),
        prompt: str = "",
        source: StreamSource | None = None,
        cancel: Callable[[], None] | None = None,
        wait: Callable[[], None] | None = None,
        ends: re.Pattern[str] | None = None,
    ) -> None:
        self._pieces = pieces
        self._ends = ends
        self._start = time.perf_counter()
        self._first: float | None = None
        self._source = source
        self._cancel = cancel
        self._wait = wait
        self._texts: list[str] = []
        self._done = False
        self._seen = 0
        self._tail = ""  # the end of the answer so far, for the loop check
        self.looped = False
        self.prompt_tokens = prompt_tokens
        self.prompt = prompt  # what the model read, chat template included
        self.notices = tuple(notices)
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        if self._done:  # read already: the pieces are gone, and waiting for more would hang
            return
        try:
            for piece in self._pieces:
                if not piece:
                    continue
                if self._first is None:
                    self._first = time.perf_counter()
                self._seen += 1
                kept = self._before_end(piece)
                if kept is not None:
                    if kept:
                        yield kept
                    break
                self._texts.append(piece)
                yield piece
                self._tail = (self._tail + piece)[-loops.TAIL :]
                if loops.repeated_tail(self._tail) is not None:
                    self.looped = True
                    break
        finally:
            if not self._done:
                self.close()

    def _before_end(self, piece: str) -> str | None:
        """None while the answer goes on; where `piece` takes it to its end, the part of the
        piece before the end (kept in the answer). An end before any text does not count."""
        if self._ends is None:
            return None
        text = "".join(self._texts) + piece
        found = self._ends.search(text, len(text) - len(text.lstrip()) + 1)  # after some text
        if found is None:
            return None
        offset, cut = len(text) - len(piece), found.start()
        if cut < offset:  # the end began in a piece already passed on: the answer is cut back
            self._texts = [text[:cut]]
            return ""
        kept = piece[: cut - offset]
        self._texts.append(kept)
        return kept

    def ready(self) -> bool:
        """Whether the next piece (or the end) is there, so that reading it will not wait."""
        return self._source is None or not self._source.text_queue.empty()

    def close(self) -> None:
        """Finish the answer (stopping generation if it is still running) and fill in `answer`."""
        if self._done:
            return
        self._done = True
        if self._cancel is not None:
            self._cancel()
        end = time.perf_counter()
        if self._wait is not None:
            # The generating thread stops at its next token; waiting for it means the model is
            # free again and no thread outlives the answer.
            self._wait()
        first, new_tokens = self._first, self._seen
        if self._source is not None:  # the reader may look late: the writer's clock is exact
            end = self._source.finished_at or end
            first = self._source.first_token_at or first
            new_tokens = self._source.new_tokens
        first = first or end
        text = "".join(self._texts).strip()
        if self.looped:
            text = loops.without_repeats(text)
            self.notices = (*self.notices, loops.NOTICE)
        self.answer = Answer(
            text=text,
            timings=Timings(self.prompt_tokens, new_tokens, first - self._start, end - self._start),
            notices=self.notices,
            looped=self.looped,
        )

    def read(self) -> Answer:
        """Consume the whole stream and return the answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


class ChatModel(Protocol):
    """Anything that can answer a conversation as a stream: the real model, or a fake in tests."""

    name: str

    def stream_chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        system_prompt: str = "",
        adapter: str | None = None,
    ) -> ChatStream: ...

    def stream_many(
        self,
        requests: Sequence[ChatRequest],
        params: SamplingParams,
        seed: int | None = None,
        *,
        background: bool = False,
    ) -> list[ChatStream]: ...

    def load_adapter(self, name: str, folder: Path, label: str = "") -> None: ...


class OneOfMany:
    """`stream_chat` as a batch of one: what every ChatModel here does for a single chat (the
    class it is mixed into brings `stream_many`)."""

    def stream_chat(
        self: ChatModel,
        messages: Sequence[Message],
        params: SamplingParams,
        system_prompt: str = "",
        adapter: str | None = None,
    ) -> ChatStream:
        return self.stream_many([ChatRequest(messages, system_prompt, adapter)], params)[0]


def refuse_unloaded(requests: Sequence[ChatRequest], loaded: Container[str]) -> None:
    """A request naming an adapter that is not loaded is refused, plainly, before any work."""
    for request in requests:
        if request.adapter is not None and request.adapter not in loaded:
            raise ModelNotAvailableError(
                f"The adapter '{request.adapter}' is not loaded: choose it again."
            )


def clean_messages(messages: Sequence[Message]) -> list[Message]:
    """Drop empty turns; refuse a conversation that does not end with a question."""
    kept = [
        {"role": m["role"], "content": m["content"].strip()}
        for m in messages
        if m.get("content", "").strip() and m.get("role") in ("user", "assistant")
    ]
    if not kept or kept[-1]["role"] != "user":
        raise InvalidInputError("Type a question first: the message is empty.")
    return kept
