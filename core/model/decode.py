"""Batched decoding: rows of several prompts on one base model, each with its own LoRA adapter
or none, joining and leaving a running batch at token boundaries (continuous batching).

This is how four answers, or four visitors, cost about as much as one:

- A row joining the batch is read (prefilled) on its own, shortest first: a short prompt never
  pays for a long one's padding, and each row's first token is out as soon as its own prompt is
  read.
- The rows' caches lie side by side in one static cache, right-aligned at a shared write
  position, and all rows decode together: one forward pass per step reads the weights once for
  every row. On a CPU, decoding is bound by reading the weights, so four rows cost little more
  than one; a static cache also avoids copying the growing cache at every step (measured here:
  5 ms of a 25 ms step at 300 tokens). When rows join or leave, the cache is laid out again for
  the rows that remain (one copy of their keys and values, at a token boundary).
- Adapters come from PEFT and are never merged, so one copy of the base model serves every row.
  Prefill uses PEFT's `adapter_names` (`"__base__"` means no adapter); decoding adds each
  adapter's update to its rows' slice (core.model.fast_paths).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from core.errors import ModelNotAvailableError
from core.model import fast_paths
from core.model.fast_paths import BASE
from core.model.weights import DecodeWeights

__all__ = ["BASE", "Batch", "Row", "Sampling", "stopping"]

# Set when the process shuts down (compute.py): every row still decoding ends at its next token,
# so that a studio sent SIGTERM exits in seconds instead of finishing its answers first.
stopping = threading.Event()
# Prompts are read this many tokens at a time, at fixed positions (see PrefixCache).
# Measured here for 1,076 tokens: 0.80 s by 128, 0.62 s by 256, 0.48 s by 512 and 0.38 s at
# once (CPUs with AMX read long chunks far faster); a prompt that starts like an earlier one is
# read again from the last multiple of CHUNK they share.
CHUNK = 512


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: always the most likely token
    top_p: float = 1.0
    seed: int | None = None
    # transformers' rule: the scores of tokens already in the prompt or the answer are divided
    # by it (multiplied when negative); 1: off
    repetition_penalty: float = 1.0


@dataclass(eq=False)
class Row:
    """One answer to generate. `emit` receives each new token id and `finish` is called once
    the row has ended, while the others may go on; `fail` gets the error that ended it, before
    `finish`. Setting `cancel` stops the row at its next token. `background` rows (an
    evaluation) wait while rows of people at the screen are waiting."""

    ids: list[int]
    max_new_tokens: int
    emit: Callable[[int], None]
    adapter: str = BASE
    finish: Callable[[], None] = lambda: None
    fail: Callable[[BaseException], None] = lambda error: None
    sampling: Sampling = Sampling()
    background: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    new_tokens: int = 0  # tokens emitted so far
    # Tokens whose scores get `bonus` added at every step (a request's favoured text).
    favoured: tuple[int, ...] = ()
    bonus: float = 0.0
    last_token: int = 0

    @cached_property
    def favoured_ids(self) -> torch.Tensor:
        """`favoured` as an index, made once instead of at every step."""
        return torch.tensor(self.favoured, dtype=torch.long)

    @property
    def stopped(self) -> bool:
        return self.cancel.is_set() or stopping.is_set()

    @property
    def cached(self) -> int:
        """Tokens of this row in the cache: its prompt and every new token but the last."""
        return len(self.ids) + max(0, self.new_tokens - 1)

    @property
    def remaining(self) -> int:
        return max(0, self.max_new_tokens - self.new_tokens)

    def end(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.finish()

    def end_with(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.fail(error)
            self.end()


class PrefixCache:
    """The keys and values of prompts read lately, per adapter, so that a prompt that starts
    like one of them is read from where they part: the earlier turns of a conversation, the
    same passages and question from another visitor. Prompts are read in chunks of CHUNK tokens
    at fixed positions and reused at chunk boundaries only, so a prompt read from a prefix gets
    exactly the numbers it would get read from the start. The least recently used go first,
    past `budget_bytes`."""

    def __init__(self, budget_bytes: int = 192 * 2**20) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], list[tuple[Any, Any]]] = (
            OrderedDict()
        )
        self.reused_tokens = 0  # prompt tokens not read again, since the start

    def lookup(self, adapter: str, ids: list[int], config: Any) -> tuple[Any, int]:
        """A cache holding the longest usable prefix of `ids` read with `adapter`, and its
        length (a multiple of CHUNK, shorter than `ids`); (None, 0) when there is none."""
        from transformers import DynamicCache

        best, length = None, 0
        for key in self._entries:
            if key[0] != adapter:
                continue
            common = _common_prefix(key[1], ids)
            usable = min(common, len(ids) - 1) // CHUNK * CHUNK
            if usable > length:
                best, length = key, usable
        if best is None:
            return None, 0
        self._entries.move_to_end(best)
        cache = DynamicCache(config=config)
        for index, (keys, values) in enumerate(self._entries[best]):
            cache.update(keys[:, :, :length], values[:, :, :length], index)
        self.reused_tokens += length
        return cache, length

    def store(self, adapter: str, ids: list[int], cache: Any) -> None:
        key = (adapter, tuple(ids))
        for other in [k for k in self._entries if k[0] == adapter]:
            if _common_prefix(other[1], ids) == len(other[1]):  # this prompt extends it
                del self._entries[other]
        self._entries[key] = [(layer.keys, layer.values) for layer in cache.layers]
        while self._bytes() > self.budget_bytes and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def _bytes(self) -> int:
        return sum(
            tensor.numel() * tensor.element_size()
            for layers in self._entries.values()
            for pair in layers
            for tensor in pair
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Batch:
    """The rows decoding together on one model. `admit` reads new rows' prompts and lays every
    row's cache out again; `step` makes one token for every row; `pause` hands the model back
    (PEFT's layers in place) so that adapters can be loaded between two steps."""

    def __init__(
        self,
        model: Any,
        eos_ids: set[int],
        peft: Callable[[], Any],
        prefixes: PrefixCache | None = None,
        weights: DecodeWeights | None = None,
    ) -> None:
        self.model = model
        self._weights = weights or DecodeWeights()  # how decoding reads the weights
        self.eos_ids = eos_ids
        self._peft = peft  # PEFT's wrapper as it is now (adapters may be loaded between steps)
        self._prefixes = prefixes
        self.rows: list[Row] = []  # rows of one adapter side by side
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._pickers: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._seen: dict[int, torch.Tensor] = {}  # tokens seen by rows with a repetition penalty
        self._fast = ExitStack()
        self._fast_on: bool | None = None  # None: the fast path is not entered
        self._plan: Any = None  # the LoRA updates of the fused step, while it serves the rows

    # -- rows joining -------------------------------------------------------------------------
    def admit(self, rows: Sequence[Row]) -> None:
        """Read each new row's prompt (shortest first) and its first token; then every row still
        running shares one cache again. A row whose prompt cannot be read ends with its error."""
        self.pause()
        caches: dict[int, Any] = {}
        for row in sorted(rows, key=lambda r: len(r.ids)):
            if row.stopped or row.max_new_tokens < 1:
                row.end()
                continue
            peft = self._peft()
            if row.adapter != BASE and (peft is None or row.adapter not in peft.peft_config):
                row.end_with(
                    ModelNotAvailableError(
                        "The adapter of this answer was unloaded while it waited: ask again."
                    )
                )
                continue
            try:
                caches[id(row)] = self._prefill(row)
            except Exception as error:  # this row's problem; the batch goes on
                row.end_with(error)
        joined = [row for row in rows if id(row) in caches and not row.done.is_set()]
        for row in rows:
            if row.done.is_set():  # ended with its first token, or could not be read
                self._pickers.pop(id(row), None)
                self._seen.pop(id(row), None)
        self._layout(joined, caches)

    def _prefill(self, row: Row) -> Any:
        """Read the row's prompt in chunks of CHUNK tokens, from the longest prefix already read
        with the same adapter (a conversation's earlier turns, or another visitor's identical
        question); then its first token."""
        from transformers import DynamicCache

        cache, start = None, 0
        if self._prefixes is not None:
            cache, start = self._prefixes.lookup(row.adapter, row.ids, self.model.config)
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        peft, device = self._peft(), self.model.device
        # PEFT's layers step aside here too (core.model.fast_paths): its mixed-batch forward
        # took 0.48 s for a 754-token prompt without an adapter here, against 0.28 s.
        with fast_paths.fast_lora(self.model, peft, [row.adapter]) as fast:
            for begin in range(start, len(row.ids), CHUNK):
                ids = torch.tensor([row.ids[begin : begin + CHUNK]], device=device)
                logits = _forward(
                    self.model,
                    None if fast else peft,
                    None if fast else [row.adapter],
                    input_ids=ids,
                    cache=cache,
                )
        if self._prefixes is not None:
            self._prefixes.store(row.adapter, row.ids, cache)
        self._pickers[id(row)] = _sampler(row.sampling, device)
        if row.sampling.repetition_penalty != 1.0:
            seen = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
            seen[torch.tensor(row.ids, device=device)] = True
            self._seen[id(row)] = seen
        first = self._penalised([row], logits[:, -1])
        self._take(row, int(self._pickers[id(row)](first)[0]))
        return cache

    def _take(self, row: Row, token: int) -> None:
        row.emit(token)
        row.new_tokens += 1
        row.last_token = token
        seen = self._seen.get(id(row))
        if seen is not None:
            seen[token] = True
        if token in self.eos_ids or row.new_tokens >= row.max_new_tokens:
            row.end()

    def _layout(self, joined: Sequence[Row], caches: dict[int, Any]) -> None:
        """One static cache for the rows still running and `joined`, each row's keys and values
        right-aligned at the write position, with room for the longest remaining answer; and the
        attention mask that hides the padding on the left."""
        from transformers import StaticCache

        staying = [row for row in self.rows if not row.done.is_set()]
        slots = {id(row): slot for slot, row in enumerate(self.rows)}  # in the old cache
        old, old_end = self._cache, self._end()
        rows = sorted([*staying, *joined], key=lambda row: row.adapter)
        for gone in self.rows:
            if gone.done.is_set():
                self._pickers.pop(id(gone), None)
                self._seen.pop(id(gone), None)
        self.rows = rows
        if not rows:
            self._cache = self._mask = None
            return
        end = max(row.cached for row in rows)
        capacity = end + max(row.remaining for row in rows)
        source = old if old is not None else next(iter(caches.values()))
        first = source.layers[0].keys
        device = self.model.device
        cache: Any = StaticCache(config=self.model.config, max_cache_len=capacity)
        cache.early_initialization(len(rows), first.shape[1], first.shape[3], first.dtype, device)
        mask = torch.zeros((len(rows), capacity), dtype=torch.long, device=device)
        for slot, row in enumerate(rows):
            length = row.cached
            if id(row) in caches:
                layers, index, columns = caches[id(row)].layers, 0, slice(0, length)
            else:
                layers, index, columns = (
                    old.layers,
                    slots[id(row)],
                    slice(old_end - length, old_end),
                )
            for target, layer in zip(cache.layers, layers, strict=True):
                target.keys[slot, :, end - length : end] = layer.keys[index, :, columns]
                target.values[slot, :, end - length : end] = layer.values[index, :, columns]
            mask[slot, end - length :] = 1
        for layer in cache.layers:
            layer.cumulative_length.fill_(end)
        self._cache, self._mask = cache, mask

    def _end(self) -> int:
        return int(self._cache.layers[0].cumulative_length) if self._cache is not None else 0

    # -- decoding -----------------------------------------------------------------------------
    def step(self) -> None:
        """One new token for every running row; rows that end leave the batch."""
        for row in self.rows:
            if row.stopped:
                row.end()
        if any(row.done.is_set() for row in self.rows):
            self.pause()
            self._layout([], {})
        if not self.rows:
            return
        device = self.model.device
        input_ids = torch.tensor([[row.last_token] for row in self.rows], device=device)
        position_ids = torch.tensor([[row.cached] for row in self.rows], device=device)
        adapters = [row.adapter for row in self.rows]
        if self._fast_on is None:
            self._enter_fast(adapters)
        if self._plan is not None:
            logits = self._weights.step(
                input_ids, position_ids, self._cache, self._mask, self._plan
            )
        else:
            fast = self._fast_on
            window = {}  # for our attention function: the cache columns filled after this token
            if self.model.config._attn_implementation == fast_paths.ATTENTION:
                window[fast_paths.WINDOW] = self._end() + 1
            logits = _forward(
                self.model,
                None if fast else self._peft(),
                None if fast else adapters,
                input_ids=input_ids,
                attention_mask=self._mask,
                position_ids=position_ids,
                cache=self._cache,
                **window,
            )[:, -1]
        tokens = self._pick(logits)
        for row, token in zip(self.rows, tokens, strict=True):
            self._take(row, token)

    def _penalised(self, rows: Sequence[Row], logits: torch.Tensor) -> torch.Tensor:
        """`logits` ([rows, vocabulary]) with each row's favoured tokens raised and its
        repetition penalty applied."""
        favouring = [(slot, row) for slot, row in enumerate(rows) if row.favoured and row.bonus]
        if favouring:
            logits = logits.float().clone()
            for slot, row in favouring:
                logits[slot, row.favoured_ids] += row.bonus
        if all(id(row) not in self._seen for row in rows):
            return logits
        logits = logits.float()
        for slot, row in enumerate(rows):
            seen, penalty = self._seen.get(id(row)), row.sampling.repetition_penalty
            if seen is not None:
                scores = logits[slot, seen]
                logits[slot, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
        return logits

    def _pick(self, logits: torch.Tensor) -> list[int]:
        logits = self._penalised(self.rows, logits)
        if all(row.sampling.temperature <= 0 for row in self.rows):
            # max's indices, the first best as argmax's: 38 us against 171 us for the default
            # model's 49,152 scores here
            return logits.max(dim=-1).indices.tolist()
        return [
            int(self._pickers[id(row)](logits[slot : slot + 1])[0])
            for slot, row in enumerate(self.rows)
        ]

    def _enter_fast(self, adapters: list[str]) -> None:
        """Choose how the rows decode until the batch changes: the fused step where the model
        has one and the adapters are plain LoRA; else the model's forward with PEFT's layers
        stepped aside (core.model.fast_paths); else PEFT's own forward."""
        step = self._weights.step
        if step is not None:
            try:
                self._plan = step.deltas(self._peft(), adapters)
                self._fast_on = True
                return
            except LookupError:
                pass  # an adapter the step cannot apply: the model's forward serves these rows
        self._fast_on = self._fast.enter_context(
            fast_paths.fast_lora(self.model, self._peft(), adapters, self._weights.layers)
        )

    def pause(self) -> None:
        """Leave the fast path: PEFT's layers are back in the model."""
        self._fast.close()
        self._fast_on = None
        self._plan = None

    def fail(self, error: BaseException) -> None:
        """End every row with `error` (the model failed in a step)."""
        self.pause()
        for row in self.rows:
            row.end_with(error)
        self.rows, self._cache, self._mask = [], None, None
        self._pickers.clear()
        self._seen.clear()


def decode(
    model: Any,
    rows: Sequence[Row],
    eos_ids: set[int],
    peft_model: Any = None,
    weights: DecodeWeights | None = None,
) -> None:
    """Generate `rows` to their ends in one batch, on the calling thread (tests and benchmarks;
    the studio's answers go through core.model.engine)."""
    batch = Batch(model, eos_ids, lambda: peft_model, weights=weights)
    try:
        with torch.inference_mode():
            batch.admit(rows)
            while batch.rows:
                batch.step()
    except BaseException as error:
        batch.fail(error)
        raise
    finally:
        batch.pause()


def _forward(model: Any, peft_model: Any, adapters: list[str] | None, **inputs: Any) -> Any:
    if peft_model is not None and adapters is not None:
        out = peft_model(**inputs, adapter_names=adapters, use_cache=True, logits_to_keep=1)
    else:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits


# Nucleus (top-p) sampling sorts only this many best tokens when their share of the probability
# reaches top_p, which is exactly transformers' TopPLogitsWarper there (every token further down
# is cut by it anyway); else it sorts them all as transformers does. Measured here on the default
# model's 49,152 scores: 4.5 ms a token through the warpers (their sort), against 0.5.
NUCLEUS_CANDIDATES = 256


def _sampler(sampling: Sampling, device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next-token choice for a [rows, vocabulary] logits tensor: transformers' temperature and
    top-p warpers' choice (the warpers themselves where the nucleus is not among the best
    NUCLEUS_CANDIDATES)."""
    if sampling.temperature <= 0:
        return lambda logits: logits.max(dim=-1).indices
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)

    def warped(logits: torch.Tensor) -> torch.Tensor:
        scores = warpers(None, logits.float())  # type: ignore[arg-type]
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if sampling.top_p >= 1.0 or logits.shape[-1] <= NUCLEUS_CANDIDATES:
            return warped(logits)
        scores = logits.float() / sampling.temperature
        best = scores.topk(NUCLEUS_CANDIDATES, dim=-1)  # sorted, most likely first
        probs = (best.values - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
        held = probs.cumsum(dim=-1)  # the share of each token and those ranked above it
        if bool((held[:, -1] < sampling.top_p).any()):
            return warped(logits)  # a flat distribution: its nucleus is wider than the best
        before = held - probs
        # The warper keeps a token while the tokens above it hold less than top_p (so always the
        # best); the kept ones are drawn in proportion to their probability.
        kept = torch.where(before < sampling.top_p, probs, torch.zeros_like(probs))
        chosen = torch.multinomial(kept, 1, generator=generator)
        return best.indices.gather(-1, chosen).squeeze(-1)

    return pick


use_fast_attention = fast_paths.use_fast_attention
forget_low_rank = fast_paths.forget_low_rank
