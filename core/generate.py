"""Streaming chat generation with the model's own chat template, and honest timings.

Every answer goes through `HFChatModel.stream_many`: one conversation (the Chat page) or several
at once, each with its own adapter (the arena), batched on one copy of the model (core.decode).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from transformers import TextIteratorStreamer

from core import compute, decode
from core.errors import GenerationError, InvalidInputError, ModelNotAvailableError
from core.models import LoadedModel
from core.settings import Settings

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": "..."}
MAX_LOADED_ADAPTERS = 4  # adapters kept beside the base weights; the least recently used goes


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

    @classmethod
    def from_settings(cls, settings: Settings) -> SamplingParams:
        return cls(settings.temperature, settings.top_p, settings.max_new_tokens)


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
class ChatRequest:
    """One conversation to answer; `adapter` names an adapter loaded into the model, or None
    for the base model."""

    messages: Sequence[Message]
    system_prompt: str = ""
    adapter: str | None = None


@dataclass(frozen=True)
class Answer:
    text: str
    timings: Timings
    notices: tuple[str, ...] = ()


class ChatStream:
    """An answer arriving as text pieces. Iterate it; `answer` is complete once it is exhausted.

    `notices` (for example that a long message was cut) are known before the first piece.
    Closing the stream early stops the generation behind it. With a `source` (the streamer the
    model writes into), token counts and times come from the generating side's own clock.
    """

    def __init__(
        self,
        pieces: Iterator[str],
        *,
        prompt_tokens: int,
        notices: Sequence[str] = (),
        prompt: str = "",
        source: _CountingStreamer | None = None,
        cancel: Callable[[], None] | None = None,
        wait: Callable[[], None] | None = None,
    ) -> None:
        self._pieces = pieces
        self._start = time.perf_counter()
        self._first: float | None = None
        self._source = source
        self._cancel = cancel
        self._wait = wait
        self._texts: list[str] = []
        self._done = False
        self._seen = 0
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
                self._texts.append(piece)
                yield piece
        finally:
            if not self._done:
                self.close()

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
        self.answer = Answer(
            text="".join(self._texts).strip(),
            timings=Timings(self.prompt_tokens, new_tokens, first - self._start, end - self._start),
            notices=self.notices,
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
        self, requests: Sequence[ChatRequest], params: SamplingParams, seed: int | None = None
    ) -> list[ChatStream]: ...

    def load_adapter(self, name: str, folder: Path, label: str = "") -> None: ...


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


class HFChatModel:
    """A transformers model answering chats, with LoRA adapters beside its weights. One batch at
    a time per model: callers queue."""

    def __init__(self, loaded: LoadedModel, context_window: int | None = None) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        model_limit = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
        self.context_window = min(context_window or model_limit, model_limit)
        # Answers run one after another on the torch thread (see core.compute): on a few CPU
        # cores two at once are no faster. The lock keeps that true for any other caller too.
        self._lock = threading.Lock()
        decode.use_fast_attention(loaded.model)
        self._peft: Any = None  # PEFT's wrapper, once an adapter is loaded
        self._adapters: list[str] = []  # loaded adapters, least recently used first

    # -- prompt ---------------------------------------------------------------------------------
    def _encode(self, messages: Sequence[Message]) -> list[int]:
        tok = self.tokenizer
        if tok.chat_template:
            try:
                return list(
                    tok.apply_chat_template(
                        list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
                    )
                )
            except Exception as error:
                if messages and messages[0]["role"] == "system" and "system" in str(error).lower():
                    # Some templates have no system role: fold it into the first question.
                    merged = [dict(m) for m in messages[1:]]
                    merged[0]["content"] = f"{messages[0]['content']}\n\n{merged[0]['content']}"
                    return self._encode(merged)
                raise
        # A base model without a chat template still gets a readable transcript.
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return list(tok("\n".join([*lines, "Assistant:"]), add_special_tokens=True)["input_ids"])

    def build_prompt(
        self, messages: Sequence[Message], system_prompt: str, max_new_tokens: int
    ) -> tuple[list[int], list[str], int]:
        """Token ids that fit the context window, the notices about what was cut, and the
        number of new tokens that still fit."""
        turns = clean_messages(messages)
        system = (
            [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
        )
        max_new = max(1, min(max_new_tokens, self.context_window // 2))
        budget = self.context_window - max_new
        notices: list[str] = []
        if max_new < max_new_tokens:
            notices.append(
                f"Answers are limited to {max_new} tokens so that the question fits the model's "
                f"context of {self.context_window} tokens."
            )
        ids = self._encode(system + turns)
        dropped = 0
        while len(ids) > budget and len(turns) > 1:
            turns = turns[2:] if len(turns) > 2 else turns[1:]
            dropped += 1
            ids = self._encode(system + turns)
        if dropped:
            notices.append(
                "Older messages were left out so that the conversation fits the model's context "
                f"of {self.context_window} tokens. Start a new chat to clear them."
            )
        if len(ids) > budget:
            content_ids = self.tokenizer(turns[-1]["content"], add_special_tokens=False)[
                "input_ids"
            ]
            overhead = len(ids) - len(content_ids)
            keep = budget - overhead
            if keep < 1:
                raise InvalidInputError(
                    "The system prompt alone fills the model's context: shorten it."
                )
            turns[-1] = {"role": "user", "content": self.tokenizer.decode(content_ids[:keep])}
            ids = self._encode(system + turns)[-budget:]
            notices.append(
                f"Your message was too long for the model: only its first {keep} of "
                f"{len(content_ids)} tokens were used."
            )
        return ids, notices, max_new

    # -- adapters -------------------------------------------------------------------------------
    def load_adapter(self, name: str, folder: Path, label: str = "") -> None:
        """Load a LoRA adapter beside the base weights (never merged), under `name`; the
        most recently used few stay loaded. Raises ModelNotAvailableError, naming it `label`,
        when its files do not fit the model."""
        compute.call(self._load_adapter, name, folder, label or name)

    def _load_adapter(self, name: str, folder: Path, label: str) -> None:
        with self._lock:
            if name in self._adapters:
                self._adapters.remove(name)
                self._adapters.append(name)
                return
            check_adapter_files(folder, label)
            from peft import PeftModel

            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self.loaded.model,
                        str(folder),
                        adapter_name=name,
                        is_trainable=False,
                        autocast_adapter_dtype=False,
                    )
                else:
                    self._peft.load_adapter(
                        str(folder),
                        adapter_name=name,
                        is_trainable=False,
                        autocast_adapter_dtype=False,
                    )
            except (OSError, ValueError, KeyError, RuntimeError) as error:
                raise ModelNotAvailableError(
                    f"The adapter '{label}' could not be loaded: its files do not fit this model "
                    f"({error.__class__.__name__}). Train it again or delete it."
                ) from error
            self._peft.eval()
            self._adapters.append(name)
            while len(self._adapters) > MAX_LOADED_ADAPTERS:
                oldest = self._adapters.pop(0)
                self._peft.delete_adapter(oldest)
                decode.forget_low_rank(self._peft, oldest)

    # -- generation -----------------------------------------------------------------------------
    def stream_chat(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        system_prompt: str = "",
        adapter: str | None = None,
    ) -> ChatStream:
        return self.stream_many([ChatRequest(messages, system_prompt, adapter)], params)[0]

    def stream_many(
        self, requests: Sequence[ChatRequest], params: SamplingParams, seed: int | None = None
    ) -> list[ChatStream]:
        """Answer several conversations at once, in one batch on one copy of the model; each
        may use its own adapter (loaded first with `load_adapter`). One stream per request."""
        import torch

        prompts = [
            self.build_prompt(r.messages, r.system_prompt, params.max_new_tokens) for r in requests
        ]
        for request in requests:
            if request.adapter is not None and request.adapter not in self._adapters:
                raise ModelNotAvailableError(
                    f"The adapter '{request.adapter}' is not loaded: choose it again."
                )
        streamers = [_CountingStreamer(self.tokenizer) for _ in requests]
        rows = [
            decode.Row(
                ids=ids,
                max_new_tokens=max_new,
                emit=lambda token, s=streamer: s.put(torch.tensor([token])),
                adapter=request.adapter or decode.BASE,
                finish=streamer.finish,
            )
            for (ids, _, max_new), request, streamer in zip(
                prompts, requests, streamers, strict=True
            )
        ]
        sampling = decode.Sampling(temperature=params.temperature, top_p=params.top_p, seed=seed)
        model = self.loaded.model
        eos = _eos_ids(model, self.tokenizer)

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    for row, streamer in zip(rows, streamers, strict=True):
                        streamer.put(torch.tensor(row.ids))  # the prompt, which it skips
                    decode.decode(model, rows, sampling, eos, self._peft)
            except BaseException as error:  # handed to the reading threads, which re-raise it
                for streamer in streamers:
                    if not streamer.finished:  # answers already complete stay as they are
                        streamer.error = _plain_error(error)
            finally:
                for streamer in streamers:
                    streamer.finish()

        job = compute.submit(run)

        def waiter(row: decode.Row) -> Callable[[], None]:
            def wait() -> None:
                row.done.wait()
                if all(r.done.is_set() for r in rows):
                    job.result()  # the last one out waits until the model is free again

            return wait

        return [
            ChatStream(
                iter(streamer),
                prompt_tokens=len(ids),
                notices=notices,
                prompt=self.tokenizer.decode(ids),
                source=streamer,
                cancel=row.cancel.set,
                wait=waiter(row),
            )
            for (ids, notices, _), row, streamer in zip(prompts, rows, streamers, strict=True)
        ]


def check_adapter_files(folder: Path, label: str) -> None:
    """Refuse missing or unreadable files before they touch the model. Weights are read from
    safetensors only: PEFT would fall back to a pickled .bin file otherwise."""
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
    from safetensors import SafetensorError, safe_open

    try:
        json.loads((folder / CONFIG_NAME).read_text())
        with safe_open(str(folder / SAFETENSORS_WEIGHTS_NAME), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                handle.get_tensor(key)
    except (OSError, ValueError, SafetensorError) as error:
        raise ModelNotAvailableError(
            f"The adapter '{label}' could not be loaded: its files are missing or damaged "
            f"({error.__class__.__name__}). Train it again or delete it."
        ) from error


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the model's generation config's, and the tokenizer's."""
    found: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            found.add(value)
        elif value:
            found.update(int(v) for v in value)
    return found


def _plain_error(error: BaseException) -> BaseException:
    """Running out of memory is the user's to fix (shorter input, shorter answers); say how.
    Anything else is a bug and stays as it is."""
    import torch

    if isinstance(error, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(error):
        plain = GenerationError(
            "The model ran out of memory while answering. Shorten the conversation (New chat), "
            "lower 'Longest answer', or choose a smaller model."
        )
        plain.__cause__ = error
        return plain
    return error


class _CountingStreamer(TextIteratorStreamer):
    """TextIteratorStreamer that also counts new tokens, notes when the first one came, and
    passes errors from the generating thread to the reading one."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.new_tokens = 0
        self.first_token_at: float | None = None
        self.error: BaseException | None = None
        self.finished = False
        self.finished_at: float | None = None

    def put(self, value: Any) -> None:
        if not self.next_tokens_are_prompt:
            self.new_tokens += int(value.numel() if hasattr(value, "numel") else len(value))
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        super().put(value)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.finished_at = time.perf_counter()
            if self.error is not None or self.next_tokens_are_prompt:
                self.text_queue.put(self.stop_signal)
            else:
                self.end()

    def end(self) -> None:
        self.finished = True
        self.finished_at = time.perf_counter()
        super().end()

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value == self.stop_signal:
            if self.error is not None:
                raise self.error
            raise StopIteration()
        return value
