"""The embedded generator: a transformers model with LoRA adapters beside its weights, answering
one conversation (the Chat page) or several at once, each with its own adapter (the arena),
batched on one copy of the model (core.model.decode), on the torch thread (core.model.compute).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from transformers import TextIteratorStreamer

from core.errors import GenerationError, ModelNotAvailableError
from core.model import compute, decode, fast_paths
from core.model.chat import (
    ChatRequest,
    ChatStream,
    Message,
    OneOfMany,
    SamplingParams,
    refuse_unloaded,
)
from core.model.engine import Engine
from core.model.loading import LoadedModel
from core.model.prompts import PromptBuilder
from core.model.weights import WeightsSetting
from core.model.weights import prepare as prepare_weights

MAX_LOADED_ADAPTERS = 4  # adapters kept beside the base weights; the least recently used goes


class HFChatModel(OneOfMany):
    """A transformers model answering chats, with LoRA adapters beside its weights. One batch at
    a time per model: callers queue."""

    def __init__(
        self,
        loaded: LoadedModel,
        context_window: int | None = None,
        *,
        max_batch: int = 16,
        max_waiting: int = 32,
        weights: WeightsSetting = "auto",
    ) -> None:
        self.loaded = loaded
        self.name = loaded.name
        self.tokenizer = loaded.tokenizer
        model_limit = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
        self.context_window = min(context_window or model_limit, model_limit)
        self.prompts = PromptBuilder(self.tokenizer, self.context_window)
        self._lock = threading.Lock()  # adapters are loaded one at a time
        decode.use_fast_attention(loaded.model)
        fast_paths.contiguous_head_input(loaded.model)
        # Decoding reads packed copies of the frozen weights where the CPU has the kernels.
        self.decoding = compute.call(prepare_weights, loaded.model, weights)
        self._peft: Any = None  # PEFT's wrapper, once an adapter is loaded
        self._adapters: list[str] = []  # loaded adapters, least recently used first
        # Every answer of every session is a row of this one engine's batch.
        self.engine = Engine(
            loaded.model,
            _eos_ids(loaded.model, self.tokenizer),
            lambda: self._peft,
            max_batch=max_batch,
            max_waiting=max_waiting,
            weights=self.decoding,
        )

    def build_prompt(
        self, messages: Sequence[Message], system_prompt: str, max_new_tokens: int
    ) -> tuple[list[int], list[str], int]:
        return self.prompts.build(messages, system_prompt, max_new_tokens)

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
            # The least recently used go, unless an answer waiting or in progress needs them.
            needed = self.engine.in_use() | {name}
            while len(self._adapters) > MAX_LOADED_ADAPTERS:
                oldest = next((a for a in self._adapters if a not in needed), None)
                if oldest is None:
                    break
                self._adapters.remove(oldest)
                self._peft.delete_adapter(oldest)
                decode.forget_low_rank(self._peft, oldest)

    # -- generation -----------------------------------------------------------------------------
    def repetition_penalty(self, params: SamplingParams) -> float:
        """The user's repetition penalty, else the one of the model's generation_config."""
        if params.repetition_penalty is not None:
            return params.repetition_penalty
        own = getattr(self.loaded.model.generation_config, "repetition_penalty", None)
        return float(own) if own else 1.0

    def stream_many(
        self,
        requests: Sequence[ChatRequest],
        params: SamplingParams,
        seed: int | None = None,
        *,
        background: bool = False,
    ) -> list[ChatStream]:
        """Answer several conversations at once on one copy of the model, each with its own
        adapter (loaded first with `load_adapter`): their rows join the engine's batch, beside
        every other session's. One stream per request. `background` answers (an evaluation) let
        people's answers go first. Raises BusyError when too many answers are waiting."""
        prompts = [
            self.build_prompt(r.messages, r.system_prompt, params.max_new_tokens) for r in requests
        ]
        refuse_unloaded(requests, self._adapters)
        sampling = decode.Sampling(
            temperature=params.temperature,
            top_p=params.top_p,
            seed=seed,
            repetition_penalty=self.repetition_penalty(params),
        )
        streams, rows = [], []
        for (ids, notices, max_new), request in zip(prompts, requests, strict=True):
            streamer = _CountingStreamer(self.tokenizer)
            favour = request.favour
            row = decode.Row(
                ids=ids,
                max_new_tokens=max_new,
                emit=streamer.put_token,
                adapter=request.adapter or decode.BASE,
                finish=streamer.finish,
                fail=streamer.fail,
                sampling=sampling,
                background=background,
                favoured=self.prompts.favoured(favour.text) if favour is not None else (),
                bonus=favour.bonus if favour is not None else 0.0,
            )
            streamer.put_prompt(ids)
            rows.append(row)
            streams.append(
                ChatStream(
                    iter(streamer),
                    prompt_tokens=len(ids),
                    notices=notices,
                    prompt=self.tokenizer.decode(ids),
                    source=streamer,
                    cancel=row.cancel.set,
                    wait=_waiter(row),
                    ends=request.ends,
                )
            )
        self.engine.submit(rows)
        return streams


def _waiter(row: decode.Row) -> Callable[[], None]:
    def wait() -> None:
        row.done.wait()

    return wait


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

    def put_prompt(self, ids: list[int]) -> None:
        """The prompt, which the streamer skips (it counts and shows new tokens only)."""
        import torch

        self.put(torch.tensor(ids))

    def fail(self, error: BaseException) -> None:
        """The error that ended the answer, re-raised to the reader."""
        if not self.finished:  # an answer already complete stays as it is
            self.error = _plain_error(error)

    def put_token(self, token: int) -> None:
        """One new token from the batched decoder."""
        import torch

        self.put(torch.tensor([token]))

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
