"""Answers from a serving engine: an OpenAI-compatible server such as vLLM, for more visitors
than one machine serves (`LRS_ENGINE_URL`).

- The studio builds each prompt itself, with the base model's tokenizer and chat template
  (core.model.prompts), and sends its token ids to `/v1/completions`: the Prompt view shows
  exactly what the server read, and the context window is cut the same way as on this machine.
- Adapters are registered by name through vLLM's runtime LoRA API (`/v1/load_lora_adapter`, on
  a server started with `--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), from a
  folder the server can see; every mode is then a request naming the base model or its adapter.
  An adapter the server forgot (it was restarted) is registered again and the request repeated.
- Whatever goes wrong (the server is down, slow, refuses the key, does not serve the model or
  adapters, sends something that is not an answer, stops mid-answer) is one plain sentence that
  says what to do; the stream that met it ends with it, the others go on.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Any

import httpx
import openai

from core.errors import GenerationError, ModelNotAvailableError, StudioError
from core.model.chat import (
    ChatRequest,
    ChatStream,
    OneOfMany,
    SamplingParams,
    refuse_unloaded,
)
from core.model.prompts import PromptBuilder
from core.settings import Settings

# vLLM's refusal of an adapter larger than its --max-lora-rank (a 500 from load_lora_adapter).
_RANK_REFUSED = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")


@dataclass(frozen=True)
class ServerInfo:
    model: str  # the base model's name on the server
    max_model_len: int | None  # the server's context window, when it says
    adapters: tuple[str, ...]  # adapters it holds now


class RemoteChatModel(OneOfMany):
    """A ChatModel whose answers come from an OpenAI-compatible server. Nothing is asked of the
    server until the first answer (or `check`), so a studio whose server is down still opens."""

    def __init__(self, settings: Settings, tokenizer: Any, display_name: str = "") -> None:
        assert settings.engine_url, "LRS_ENGINE_URL names the server"
        self.url = settings.engine_url.rstrip("/")
        self.settings = settings
        key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else "none"
        self._client = openai.OpenAI(
            base_url=self.url, api_key=key, timeout=settings.engine_timeout_s, max_retries=0
        )
        self.tokenizer = tokenizer
        self.name = display_name or settings.engine_model or settings.base_model
        self.context_window = settings.context_window or 2048
        self.prompts = PromptBuilder(tokenizer, self.context_window)
        self._lock = threading.Lock()
        self._served: str | None = None
        self._adapters: dict[str, tuple[Path, str]] = {}  # name -> (folder here, label)

    # -- the server -----------------------------------------------------------------------------
    def check(self) -> ServerInfo:
        """Ask the server what it serves; raises GenerationError, plainly, when it cannot say."""
        try:
            listed = self._client.models.list().data
        except (openai.OpenAIError, httpx.TransportError, ValueError) as error:
            raise self._plain(error) from error
        models = [
            (m.id, getattr(m, "parent", None), getattr(m, "max_model_len", None)) for m in listed
        ]
        bases = [m for m in models if not m[1]]
        wanted = self.settings.engine_model
        chosen = (
            next((m for m in bases if m[0] == wanted), None) if wanted else next(iter(bases), None)
        )
        if chosen is None:
            served = ", ".join(m[0] for m in bases) or "nothing"
            raise GenerationError(
                f"The answer engine at {self.url} does not serve "
                f"{'the model ' + repr(wanted) if wanted else 'any model'} (it serves {served}). "
                "Start it with that model, or set LRS_ENGINE_MODEL to one of its models."
            )
        limit = chosen[2] if isinstance(chosen[2], int) else None
        with self._lock:
            self._served = chosen[0]
            if limit:
                self.context_window = min(self.settings.context_window or limit, limit)
                self.prompts.context_window = self.context_window
        return ServerInfo(chosen[0], limit, tuple(m[0] for m in models if m[1]))

    def _base(self) -> str:
        with self._lock:
            served = self._served
        return served or self.check().model

    def _register(self, name: str) -> None:
        folder, label = self._adapters[name]
        seen_from = folder
        if self.settings.engine_data_dir:
            relative = folder.resolve().relative_to(self.settings.data_dir.resolve())
            seen_from = Path(self.settings.engine_data_dir) / relative
        try:
            self._client.post(
                "/load_lora_adapter",
                body={"lora_name": name, "lora_path": str(seen_from)},
                cast_to=str,
            )
        except openai.APIStatusError as error:
            if error.status_code == 400 and "already" in str(error.message).lower():
                return  # registered before: nothing to do
            if error.status_code in (404, 405):
                raise ModelNotAvailableError(
                    f"The answer engine at {self.url} does not take adapters: start vLLM with "
                    "--enable-lora (and --max-lora-rank at least the adapter's rank) and "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
                ) from error
            too_large = _RANK_REFUSED.search(str(error.message))
            if too_large:
                rank, limit = too_large.groups()
                raise ModelNotAvailableError(
                    f"The adapter '{label}' has rank {rank}, and the answer engine takes "
                    f"adapters up to rank {limit}: restart vLLM with --max-lora-rank {rank} "
                    "(or train the adapter with a smaller rank)."
                ) from error
            raise ModelNotAvailableError(
                f"The answer engine could not load the adapter '{label}' from {seen_from} "
                f"({_first_line(error.message)}). The server must see that folder (a shared "
                "volume; LRS_ENGINE_DATA_DIR says where it mounts the data folder)."
            ) from error
        except (openai.OpenAIError, httpx.TransportError, ValueError) as error:
            raise self._plain(error) from error

    def load_adapter(self, name: str, folder: Path, label: str = "") -> None:
        """Register the adapter in `folder` with the server under `name`."""
        from core.model.local import check_adapter_files

        check_adapter_files(folder, label or name)
        self._adapters[name] = (folder, label or name)
        self._register(name)

    # -- answers --------------------------------------------------------------------------------
    def stream_many(
        self,
        requests: Sequence[ChatRequest],
        params: SamplingParams,
        seed: int | None = None,
        *,
        background: bool = False,  # the server schedules its own batch
    ) -> list[ChatStream]:
        """One request per conversation, sent at once: the server batches them."""
        refuse_unloaded(requests, self._adapters)
        base = self._base()
        streams = []
        for request in requests:
            ids, notices, max_new = self.prompts.build(
                request.messages, request.system_prompt, params.max_new_tokens
            )
            bias = (
                {
                    str(t): round(request.favour.bonus)
                    for t in self.prompts.favoured(request.favour.text)
                }
                if request.favour is not None
                else None
            )
            answer = _RemoteAnswer(self, request.adapter or base, ids, max_new, params, seed, bias)
            streams.append(
                ChatStream(
                    iter(answer),
                    prompt_tokens=len(ids),
                    notices=notices,
                    prompt=self.tokenizer.decode(ids),
                    source=answer,
                    cancel=answer.cancel,
                    wait=answer.wait,
                    ends=request.ends,
                )
            )
        return streams

    def _plain(self, error: BaseException, started: bool = False) -> StudioError:
        """One sentence for what went wrong with the server, and what to do."""
        where = f"The answer engine at {self.url}"
        if isinstance(error, StudioError):
            return error
        if started and isinstance(error, openai.APIConnectionError | httpx.TransportError):
            text = (
                f"{where} stopped in the middle of the answer: it may have been restarted. Ask "
                "again once it is back."
            )
        elif isinstance(error, openai.APITimeoutError | httpx.TimeoutException):
            text = (
                f"{where} did not answer within {self.settings.engine_timeout_s:.0f} s: it may be "
                "overloaded. Ask again in a minute, or raise LRS_ENGINE_TIMEOUT_S."
            )
        elif isinstance(error, openai.APIConnectionError | httpx.TransportError):
            text = f"{where} cannot be reached: start it, or check LRS_ENGINE_URL."
        elif isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError):
            text = f"{where} refused the studio's key: check LRS_ENGINE_API_KEY."
        elif isinstance(error, openai.NotFoundError):
            text = (
                f"{where} does not know this model or adapter ({_first_line(error.message)}). "
                "Check LRS_ENGINE_MODEL and that the server was started with --enable-lora."
            )
        elif isinstance(error, openai.APIStatusError):
            text = f"{where} refused the request: {_first_line(error.message)}."
        else:
            text = (
                f"{where} sent something that is not an answer: check that LRS_ENGINE_URL "
                "points to an OpenAI-compatible server (its address usually ends in /v1)."
            )
        plain = GenerationError(text)
        plain.__cause__ = error
        return plain


class _RemoteAnswer:
    """One answer streaming from the server, read on its own thread (a StreamSource)."""

    def __init__(
        self,
        engine: RemoteChatModel,
        model: str,
        ids: list[int],
        max_new: int,
        params: SamplingParams,
        seed: int | None,
        bias: dict[str, int] | None = None,
    ) -> None:
        self.text_queue: Queue[str | None] = Queue()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.new_tokens = 0
        self.error: BaseException | None = None
        self._engine, self._model, self._ids = engine, model, ids
        self._max_new, self._params, self._seed = max_new, params, seed
        self._bias = bias  # the request's favoured tokens: OpenAI's `logit_bias` (whole numbers)
        self._cancelled = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name="engine-answer", daemon=True)
        self._thread.start()

    def _open(self) -> Any:
        return self._engine._client.completions.create(
            model=self._model,
            prompt=self._ids,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=self._max_new,
            temperature=self._params.temperature,
            top_p=self._params.top_p,
            seed=self._seed,
            logit_bias=self._bias,
            # Unless the user chose one, the server applies the model's own generation_config
            # (vLLM does); `repetition_penalty` is vLLM's extension of the OpenAI API.
            extra_body=(
                {"repetition_penalty": self._params.repetition_penalty}
                if self._params.repetition_penalty is not None
                else None
            ),
        )

    def _run(self) -> None:
        try:
            try:
                self._response = self._open()
            except openai.NotFoundError:
                if self._model not in self._engine._adapters:
                    raise
                self._engine._register(self._model)  # the server was restarted: again
                self._response = self._open()
            ended = False  # the server said why the answer ended (its length, a stop token)
            for chunk in self._response:
                if self._cancelled.is_set():
                    return
                if chunk.usage is not None:
                    self.new_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    ended = ended or choice.finish_reason is not None
                    if choice.text:
                        if self.first_token_at is None:
                            self.first_token_at = time.perf_counter()
                        self.new_tokens += 0 if chunk.usage is not None else 1
                        self.text_queue.put(choice.text)
            if not ended and not self._cancelled.is_set():
                raise httpx.RemoteProtocolError("the stream ended before the answer did")
        except (StudioError, openai.OpenAIError, httpx.TransportError, ValueError) as error:
            if not self._cancelled.is_set():  # handed to the reader, in plain words
                # Started: the server took the request and began its answer, then went away.
                self.error = self._engine._plain(error, started=self._response is not None)
        except BaseException as error:  # a bug stays visible as a bug, on the reader's side
            self.error = error
        finally:
            if self._response is not None:
                self._response.close()
            self.finished_at = time.perf_counter()
            self.text_queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (piece := self.text_queue.get()) is not None:
            yield piece
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        self._cancelled.set()
        response = self._response
        if response is not None:
            response.close()  # the server stops generating for a closed connection

    def wait(self) -> None:
        self._thread.join(self._engine.settings.engine_timeout_s + 5)


def _first_line(text: object) -> str:
    return str(text).strip().splitlines()[0][:200] if str(text).strip() else "no reason given"


def server_status(settings: Settings, timeout_s: float = 3.0) -> str:
    """One sentence for Home: which engine answers, and whether it is ready (asked with a short
    timeout: Home never waits long for a server that is down)."""
    if not settings.engine_url:
        return (
            f"the embedded engine in this process (up to {settings.max_batch} answers at once, "
            "for every visitor together)."
        )
    quick = settings.model_copy(
        update={"engine_timeout_s": min(timeout_s, settings.engine_timeout_s)}
    )
    engine = RemoteChatModel(quick, tokenizer=None)
    try:
        info = engine.check()
    except StudioError as error:
        return str(error)
    return (
        f"the server at {engine.url}, serving {info.model}"
        + (f" ({info.max_model_len} tokens of context)" if info.max_model_len else "")
        + "."
    )
