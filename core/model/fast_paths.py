"""The fast paths of decoding: attention for one new token per row, and the LoRA updates of a
mixed batch added by forward hooks instead of PEFT's gather and scatter (see core.model.decode).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
ATTENTION = "studio"  # our attention function's name in transformers' AttentionInterface
# The keyword argument, passed through the model's forward, that tells our attention function how
# many columns of a static cache are filled: it reads no further (the rest is empty room).
WINDOW = "studio_window"


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
        window = kwargs.get(WINDOW)
        if window is not None:  # the cache's filled columns: the rest is room for later tokens
            key, value = key[:, :, :window], value[:, :, :window]
            if attention_mask is not None:
                attention_mask = attention_mask[..., :window]
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


# -- the output head ----------------------------------------------------------------------------
def contiguous_head_input(model: Any) -> None:
    """Hand the output head a freshly laid out input. transformers gives it the prompt's last
    position as a slice, whose strides PyTorch's matmul does not fold into one matrix product
    when the weights are frozen (as once PEFT has loaded an adapter): it copied the 56 MB head
    weight on every call instead, 78 ms of each prompt chunk here."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_studio_contiguous", False):
        return

    def relaid(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].clone(memory_format=torch.contiguous_format), *args[1:])

    head.register_forward_pre_hook(relaid)
    head._studio_contiguous = True


# -- the fast mixed-adapter path for decoding ------------------------------------------------------
@contextmanager
def fast_lora(
    model: Any,
    peft_model: Any,
    adapters: Sequence[str],
    packed: Mapping[str, torch.nn.Module] | None = None,
) -> Iterator[bool]:
    """While active, PEFT's LoRA layers are replaced by the plain layers they wrap (or by the
    packed copies of those, core.model.weights, by module path in `model`), and a forward hook
    on each adapted one adds `(x A^T) (scaling B)^T` to the rows of that adapter, which lie side
    by side; call the base model then. Yields False (and changes nothing) when PEFT's path must
    be used instead."""
    used = sorted({name for name in adapters if name != BASE})
    layers = lora_layers(peft_model, used) if used and peft_model is not None else []
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
            # By the plain layer it wraps: that layer, or its packed copy, takes its place.
            updates.setdefault(id(layer.base_layer), []).append((*spans[name], shared, columns, up))
            offset += down.shape[0]
    # PEFT's wrappers step aside while decoding: their own forward costs about 2 ms a step even
    # with adapters disabled. The plain layers they wrap take their place, hooks and all.
    from peft.tuners.lora import LoraLayer

    places = {
        path: module
        for path, module in model.named_modules()
        if isinstance(module, LoraLayer) or path in (packed or {})
    }
    handles, swapped = [], []
    try:
        for path, module in places.items():
            plain = module.base_layer if isinstance(module, LoraLayer) else module
            replacement = (packed or {}).get(path, plain)
            if getattr(replacement, "linear", plain) is not plain:
                replacement = plain  # packed from other weights than those now in place
            if id(plain) in updates:
                handles.append(replacement.register_forward_hook(_adder(updates[id(plain)])))
            if replacement is not module:
                parent, _, attribute = path.rpartition(".")
                setattr(model.get_submodule(parent), attribute, replacement)
                swapped.append((parent, attribute, module))
        yield True
    finally:
        for parent, attribute, module in swapped:
            setattr(model.get_submodule(parent), attribute, module)
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


def lora_layers(peft_model: Any, used: Sequence[str]) -> list[tuple[str, Any]] | None:
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
    """Per used adapter of `layer`: its `low_rank` pair."""
    return {name: low_rank(layer, name) for name in used if name in layer.lora_A}


def low_rank(layer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter `name` of a PEFT LoRA layer as (A, (scaling * B) transposed), in float32:
    products this small run about twice as fast in float32 as in bfloat16 on a CPU (measured:
    14 against 32 us per layer). Kept on the layer until `forget_low_rank`."""
    cached = layer.__dict__.setdefault("_studio_low_rank", {})
    if name not in cached:
        down = layer.lora_A[name].weight.detach().float()
        up = layer.lora_B[name].weight.detach().float() * layer.scaling[name]
        cached[name] = (down.contiguous(), up.t().contiguous())
    return cached[name]


def forget_low_rank(peft_model: Any, name: str) -> None:
    """Drop the decoding copies of an adapter's weights (when it is unloaded)."""
    for module in peft_model.modules():
        cached = module.__dict__.get("_studio_low_rank")
        if cached:
            cached.pop(name, None)
