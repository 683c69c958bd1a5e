"""Batched decoding: several prompts on one base model, each row with its own LoRA adapter or none.

This is how the arena answers four ways at the price of about one:

- Each prompt is read (prefilled) on its own, shortest first. A short prompt never pays for a
  long one's padding, and each row's first token is out as soon as its own prompt is read.
- The rows' caches are then laid side by side, left-padded, in one static cache, and all rows
  decode together: one forward pass per step reads the weights once for every row. On a CPU,
  decoding is bound by reading the weights, so four rows cost little more than one; a static
  cache also avoids copying the growing cache at every step (measured here: 5 ms of a 25 ms
  step at 300 tokens).
- Adapters come from PEFT and are never merged, so one copy of the base model serves every row.
  Prefill uses PEFT's `adapter_names` (`"__base__"` means no adapter). For decoding, the rows of
  one adapter lie side by side and a forward hook adds that adapter's low-rank update to their
  slice, in float32 (products this small are faster there), with x A^T computed once for the
  layers that read the same input (q, k, v; gate, up). PEFT's mixed-batch path gathers and
  scatters the sub-batch of every adapter in every layer, which nearly doubled a decoding step
  here (49 ms against 29 ms for four rows of the default model; the hooks cost about 5 ms).
  Adapters the hooks do not cover (DoRA and other variants) decode through PEFT's
  `adapter_names` unchanged; tests check that both paths give the same tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
# Set when the process shuts down (compute.py): every row still decoding ends at its next token,
# so that a studio sent SIGTERM exits in seconds instead of finishing its answers first.
stopping = threading.Event()
ATTENTION = "studio"  # our attention function's name in transformers' AttentionInterface


@dataclass
class Row:
    """One answer to generate. `emit` receives each new token id and `finish` is called once
    the row has ended, while the others may go on; setting `cancel` stops the row."""

    ids: list[int]
    max_new_tokens: int
    emit: Callable[[int], None]
    adapter: str = BASE
    finish: Callable[[], None] = lambda: None
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def end(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.finish()


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: always the most likely token
    top_p: float = 1.0
    seed: int | None = None


def decode(
    model: Any,
    rows: Sequence[Row],
    sampling: Sampling,
    eos_ids: set[int],
    peft_model: Any = None,
) -> None:
    """Generate every row to its end (an end-of-answer token, its length limit, or `cancel`).

    `model` is the base transformers model (with PEFT's LoRA layers inside when `peft_model`
    wraps it). Each row ends (`finish`, then `done`) as soon as it is complete; on an error,
    the rows still running get `done` without `finish`, for the caller to report the error.
    """
    if not rows:
        return
    try:
        _decode(model, rows, sampling, eos_ids, peft_model)
    finally:
        for row in rows:
            row.done.set()


def _decode(
    model: Any, rows: Sequence[Row], sampling: Sampling, eos_ids: set[int], peft_model: Any
) -> None:
    # A few lines over our usual 60: the three steps below share `take` and the rows' state,
    # and this is the hot loop of every answer; the cache merge is already apart.
    from transformers import DynamicCache

    device = model.device
    pick = _sampler(sampling, device)
    # Rows of one adapter side by side: decoding then adds each adapter's update to one slice.
    rows = sorted(rows, key=lambda row: row.adapter)
    new = [0] * len(rows)
    last = torch.zeros((len(rows), 1), dtype=torch.long, device=device)

    def take(index: int, token: int) -> None:
        row = rows[index]
        row.emit(token)
        new[index] += 1
        last[index, 0] = token
        if token in eos_ids or new[index] >= row.max_new_tokens:
            row.end()

    # 1. Read each prompt on its own, shortest first: a short prompt never pays for a long
    # one's padding, and each row's first token is out as soon as its own prompt is read.
    caches: dict[int, Any] = {}
    for index in sorted(range(len(rows)), key=lambda i: len(rows[i].ids)):
        row = rows[index]
        if row.cancel.is_set() or stopping.is_set() or row.max_new_tokens < 1:
            row.end()
            continue
        row_cache = DynamicCache(config=model.config)
        ids = torch.tensor([row.ids], device=device)
        logits = _forward(model, peft_model, [row.adapter], input_ids=ids, cache=row_cache)
        caches[index] = row_cache
        take(index, int(pick(logits[:, -1])[0]))
    active = [i for i in range(len(rows)) if not rows[i].done.is_set()]
    if not active:
        return

    # 2. Lay the caches side by side, left-padded, in one static cache for every row.
    longest = max(rows[i].max_new_tokens for i in active)
    cache, mask = _side_by_side(model, rows, caches, longest)
    del caches
    positions = torch.tensor([[len(row.ids)] for row in rows], device=device)
    adapters = [row.adapter for row in rows]

    # 3. Decode all rows together until each has ended.
    with _fast_lora(peft_model, adapters) as fast:
        names = None if fast else adapters
        while True:
            for index in active:
                if rows[index].cancel.is_set() or stopping.is_set():
                    rows[index].end()
            active = [i for i in active if not rows[i].done.is_set()]
            if not active:
                return
            logits = _forward(
                model,
                None if fast else peft_model,
                names,
                input_ids=last,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
            )
            tokens = pick(logits[:, -1])
            for index in active:
                take(index, int(tokens[index]))
            positions = positions + 1


def _side_by_side(
    model: Any, rows: Sequence[Row], caches: dict[int, Any], longest: int
) -> tuple[Any, Any]:
    """One static cache holding every row's prompt cache, left-padded to the longest prompt,
    with room for `longest` new tokens; and the attention mask that hides the padding."""
    from transformers import StaticCache

    device = model.device
    prompt_len = max(len(rows[i].ids) for i in caches)
    # Any: transformers types its cache layers as a union whose members differ; these are the
    # static layers StaticCache makes.
    cache: Any = StaticCache(config=model.config, max_cache_len=prompt_len + longest)
    first = next(iter(caches.values())).layers[0].keys
    cache.early_initialization(len(rows), first.shape[1], first.shape[3], first.dtype, device)
    mask = torch.zeros((len(rows), prompt_len + longest), dtype=torch.long, device=device)
    for index, row_cache in caches.items():
        start = prompt_len - len(rows[index].ids)
        for target, source in zip(cache.layers, row_cache.layers, strict=True):
            target.keys[index, :, start:prompt_len] = source.keys[0]
            target.values[index, :, start:prompt_len] = source.values[0]
        mask[index, start:] = 1
    for layer in cache.layers:
        layer.cumulative_length.fill_(prompt_len)
    return cache, mask


def _forward(model: Any, peft_model: Any, adapters: list[str] | None, **inputs: Any) -> Any:
    if peft_model is not None and adapters is not None:
        out = peft_model(**inputs, adapter_names=adapters, use_cache=True, logits_to_keep=1)
    else:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits


def _sampler(sampling: Sampling, device: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Next-token choice for a [rows, vocabulary] logits tensor, with transformers' warpers."""
    if sampling.temperature <= 0:
        return lambda logits: logits.argmax(dim=-1)
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        scores = warpers(None, logits.float())  # type: ignore[arg-type]
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return pick


# -- attention for one new token per row -----------------------------------------------------------
def use_fast_attention(model: Any) -> None:
    """Give a CPU model that uses PyTorch's SDPA our attention function (through transformers'
    public AttentionInterface): SDPA for reading prompts, two small matrix products for
    decoding. PyTorch's CPU SDPA kernel took 0.4-1.4 ms per call for one bfloat16 query against
    a cache of 870 tokens here, against 0.1 ms for the products: 12 ms of a 37 ms step."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if query.shape[2] != 1 or dropout:
            return sdpa_attention_forward(
                module,
                query,
                key,
                value,
                attention_mask,
                dropout=dropout,
                scaling=scaling,
                **kwargs,
            )
        rows, heads, _, dim = query.shape
        groups = key.shape[1]  # grouped-query attention: each key head serves heads // groups
        scale = scaling if scaling is not None else dim**-0.5
        grouped = (query * scale).reshape(rows, groups, heads // groups, dim)
        scores = torch.matmul(grouped, key.transpose(-1, -2)).float()
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores.masked_fill_(_inverted(attention_mask), float("-inf"))
            else:
                scores.add_(attention_mask)
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        out = torch.matmul(probs, value).reshape(rows, heads, 1, dim)
        return out.transpose(1, 2).contiguous(), None

    last: list[torch.Tensor] = []  # (mask, its inverse): every layer of a step gets the same mask

    def _inverted(mask: torch.Tensor) -> torch.Tensor:
        if not last or last[0] is not mask:
            last[:] = [mask, ~mask]
        return last[1]

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)


# -- the fast mixed-adapter path for decoding ------------------------------------------------------
@contextmanager
def _fast_lora(peft_model: Any, adapters: Sequence[str]) -> Iterator[bool]:
    """While active, PEFT's LoRA layers are replaced by the plain layers they wrap, and a forward
    hook on each adapted one adds `(x A^T) (scaling B)^T` to the rows of that adapter, which lie
    side by side; call the base model then. Yields False (and changes nothing) when PEFT's path
    must be used instead."""
    if peft_model is None:
        yield True
        return
    used = sorted({name for name in adapters if name != BASE})
    layers = _lora_layers(peft_model, used) if used else []
    if layers is None:
        yield False
        return
    spans = {
        name: (adapters.index(name), len(adapters) - adapters[::-1].index(name)) for name in used
    }
    # Layers of one parent that take inputs of one width (q, k, v and o; gate and up) share a
    # product: the first to see an input computes x A^T for all of them.
    members: dict[tuple[str, int, str], list[tuple[Any, torch.Tensor, torch.Tensor]]] = {}
    for path, layer in layers:
        for name, (down, up) in _low_rank(layer, used).items():
            key = (path.rpartition(".")[0], down.shape[1], name)
            members.setdefault(key, []).append((layer, down, up))
    updates: dict[int, list[tuple[int, int, _SharedProduct, slice, torch.Tensor]]] = {}
    for (_, _, name), group in members.items():
        shared = _SharedProduct(torch.cat([down for _, down, _ in group]))
        offset = 0
        for layer, down, up in group:
            columns = slice(offset, offset + down.shape[0])
            updates.setdefault(id(layer), []).append((*spans[name], shared, columns, up))
            offset += down.shape[0]
    # PEFT's wrappers step aside while decoding: their own forward costs about 2 ms a step even
    # with adapters disabled. The plain layers they wrap take their place, hooks and all.
    from peft.tuners.lora import LoraLayer

    wrappers = [(p, m) for p, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
    handles = []
    try:
        for _, layer in layers:
            handles.append(layer.base_layer.register_forward_hook(_adder(updates[id(layer)])))
        for path, wrapper in wrappers:
            parent, _, attribute = path.rpartition(".")
            setattr(peft_model.get_submodule(parent), attribute, wrapper.base_layer)
        yield True
    finally:
        for path, wrapper in wrappers:
            parent, _, attribute = path.rpartition(".")
            setattr(peft_model.get_submodule(parent), attribute, wrapper)
        for handle in handles:
            handle.remove()


class _SharedProduct:
    """x A^T for the stacked A of several layers, computed once per input tensor."""

    def __init__(self, down: torch.Tensor) -> None:
        self.down = down
        self.seen: torch.Tensor | None = None  # held, so its identity cannot be reused
        self.value = down

    def of(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if self.seen is not x:
            rows = x[start:end]
            flat = rows.reshape(-1, rows.shape[-1]).to(self.down.dtype)
            self.value = torch.nn.functional.linear(flat, self.down)
            self.seen = x
        return self.value


def _adder(updates: list[tuple[int, int, _SharedProduct, slice, torch.Tensor]]) -> Any:
    def hook(module: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        for start, end, shared, columns, up in updates:
            low = shared.of(x, start, end)[:, columns]
            target = output[start:end]
            target.view(-1, target.shape[-1]).add_(torch.mm(low, up).to(output.dtype))
        return output

    return hook


def _lora_layers(peft_model: Any, used: Sequence[str]) -> list[tuple[str, Any]] | None:
    """PEFT's LoRA layers of the used adapters with their paths, or None when one is not a plain
    linear LoRA."""
    from peft.tuners.lora import Linear, LoraLayer

    layers = []
    for path, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        present = [name for name in used if name in module.lora_A]
        if not present:
            continue
        if not isinstance(module, Linear) or any(n in module.lora_variant for n in present):
            return None
        if getattr(module, "fan_in_fan_out", False) or module.merged:
            return None
        layers.append((path, module))
    return layers


def _low_rank(layer: Any, used: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per adapter: A, and (scaling * B) transposed, in float32: products this small run about
    twice as fast in float32 as in bfloat16 on a CPU (measured: 14 against 32 us per layer)."""
    cached = layer.__dict__.setdefault("_studio_low_rank", {})
    found = {}
    for name in used:
        if name not in layer.lora_A:
            continue
        if name not in cached:
            down = layer.lora_A[name].weight.detach().float()
            up = layer.lora_B[name].weight.detach().float() * layer.scaling[name]
            cached[name] = (down.contiguous(), up.t().contiguous())
        found[name] = cached[name]
    return found


def forget_low_rank(peft_model: Any, name: str) -> None:
    """Drop the decoding copies of an adapter's weights (when it is unloaded)."""
    for module in peft_model.modules():
        cached = module.__dict__.get("_studio_low_rank")
        if cached:
            cached.pop(name, None)
