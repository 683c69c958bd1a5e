"""One decoding step of a Llama-family model, written out for a CPU: every row of a batch makes
one token through packed weights (core.model.weights), with the LoRA updates of each row's
adapter added on top in float32.

transformers' own forward spends most of a decoding step on a CPU outside the arithmetic: about
50 small operations and a dozen Python calls per layer, 30 layers a token. Here the projections
that read the same input are one product each (q, k and v; gate and up), the rotary embedding is
computed once per step for all layers and applied to queries and keys together, each layer's new
key and value are written into the static cache in place, and attention reads only the cache's
filled columns. Measured on the default model here, one answer: 22.8 ms a token through
transformers' forward with packed weights, 9.1 ms through this step (bfloat16 weights through
transformers' forward: 45 ms).

It serves models whose layers are exactly Llama's (SmolLM2, Llama 2 and 3, TinyLlama and their
fine-tunes): `LlamaStep.build` returns None for anything else, and decoding then goes through
transformers' forward (core.model.decode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.model import fast_paths
from core.model.fast_paths import BASE
from core.model.weights import Packed, pack_weight, rounded_int4

# The projections that read one input, computed as one product each.
QKV = ("q_proj", "k_proj", "v_proj")
O = ("o_proj",)  # noqa: E741
GATE_UP = ("gate_proj", "up_proj")
DOWN = ("down_proj",)


@dataclass
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: Packed
    o: Packed
    gate_up: Packed
    down: Packed


# The output head scores the whole vocabulary through a 4-bit copy of itself, then each row's
# CANDIDATES best again through the model's own weights, so the scores that decide are exact.
# Measured here on the default model, one answer: 10.8 ms a token against 11.4 with the head in
# int8 (half the bytes to read; the second pass costs about 0.14 ms). On 64 random states the
# exact best was among the first pass's best 16 every time (the first pass alone picked it in 49).
CANDIDATES = 64


class RescoredHead:
    """The output head: a first pass in int4, the best candidates of each row scored exactly."""

    kind = "int4"

    def __init__(self, first: Packed, exact: torch.Tensor) -> None:
        self.first = first
        self.exact = exact  # [vocabulary, width], the model's own (tied) weights: no copy

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [rows, vocabulary] for x [rows, width]: exact for each row's best candidates,
        the first pass's elsewhere (they count only when sampling, far below the best)."""
        scores = self.first.mm(x)
        best = scores.topk(min(CANDIDATES, scores.shape[-1]), dim=-1).indices
        exact = torch.bmm(self.exact[best], x.unsqueeze(-1)).squeeze(-1)
        return scores.scatter_(1, best, exact.to(scores.dtype))


@dataclass
class _Delta:
    """The LoRA update of one fused projection for the rows start:end: (x A^T) B, with the A of
    each member stacked and the B of each placed in its member's columns."""

    start: int
    end: int
    down: torch.Tensor  # A^T: [in, ranks], float32
    up: torch.Tensor  # [ranks, out], float32


class LlamaStep:
    """The decoding step of one Llama model, on packed copies of its weights."""

    def __init__(self, model: Any, layers: list[_Layer], head: Packed | RescoredHead) -> None:
        config = model.config
        self.model = model
        self.layers = layers
        self.head = head
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5

    @property
    def kinds(self) -> list[str]:
        """The packing of every weight matrix, for the Home page."""
        parts = [
            p for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
        ]
        return [p.kind for p in [*parts, self.head]]

    @staticmethod
    def build(model: Any, setting: str) -> LlamaStep | None:
        """The step for `model` with weights packed as `setting` says (core.model.weights), or
        None when its layers are not exactly Llama's."""
        if not _is_plain_llama(model):
            return None
        layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                attention, mlp = layer.self_attn, layer.mlp
                layers.append(
                    _Layer(
                        input_norm=layer.input_layernorm.weight.detach(),
                        post_norm=layer.post_attention_layernorm.weight.detach(),
                        qkv=pack_weight(_stack(attention, QKV), setting),
                        o=pack_weight(_stack(attention, O), setting),
                        gate_up=pack_weight(_stack(mlp, GATE_UP), setting),
                        down=pack_weight(_stack(mlp, DOWN), setting),
                    )
                )
            weight = model.lm_head.weight.detach()
            head: Packed | RescoredHead = pack_weight(weight, setting)
            first = rounded_int4(weight) if setting == "auto" and head.kind != "int4" else None
            if first is not None:
                head = RescoredHead(first, weight)
        return LlamaStep(model, layers, head)

    # -- adapters -------------------------------------------------------------------------------
    def deltas(self, peft_model: Any, adapters: Sequence[str]) -> list[dict[str, list[_Delta]]]:
        """Per layer and fused projection, the LoRA updates of the rows' adapters (rows of one
        adapter lie side by side). Raises LookupError where an adapter is not a plain linear
        LoRA on these projections: transformers' forward with PEFT must serve it."""
        from peft.tuners.lora import LoraLayer

        used = sorted({name for name in adapters if name != BASE})
        plan: list[dict[str, list[_Delta]]] = [{} for _ in self.layers]
        if not used:
            return plan
        # The same test as the hooks' path (core.model.fast_paths), and on these projections only.
        adapted = fast_paths.lora_layers(peft_model, used) if peft_model is not None else None
        known = {f"{i}.{part}" for i in range(len(self.layers)) for part in _PARTS}
        if adapted is None or any(_layer_key(path) not in known for path, _ in adapted):
            raise LookupError("an adapter this step cannot apply")
        for name in used:
            start, end = adapters.index(name), len(adapters) - adapters[::-1].index(name)
            for index, layer in enumerate(self.model.model.layers):
                for group, parent in (
                    (QKV, layer.self_attn),
                    (O, layer.self_attn),
                    (GATE_UP, layer.mlp),
                    (DOWN, layer.mlp),
                ):
                    modules = [getattr(parent, part) for part in group]
                    pairs = [
                        fast_paths.low_rank(m, name)
                        if isinstance(m, LoraLayer) and name in m.lora_A
                        else None
                        for m in modules
                    ]
                    if any(pair is not None for pair in pairs):
                        widths = [m.out_features for m in modules]
                        plan[index].setdefault(group[0], []).append(
                            _Delta(start, end, *_block_diagonal(pairs, widths))
                        )
        return plan

    # -- the step -------------------------------------------------------------------------------
    def __call__(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        mask: torch.Tensor,
        plan: list[dict[str, list[_Delta]]],
    ) -> torch.Tensor:
        """Logits [rows, vocabulary] for the next token of every row. `tokens` [rows, 1] are the
        rows' last tokens, `positions` [rows, 1] their positions; each layer of the static
        `cache` gets their keys and values at its write position; `mask` [rows, capacity] hides
        each row's padding."""
        model = self.model.model
        rows = tokens.shape[0]
        end = int(cache.layers[0].cumulative_length)
        window = end + 1
        hidden = model.embed_tokens(tokens)  # [rows, 1, width]
        cos, sin = model.rotary_emb(hidden, positions)  # [rows, 1, head_dim]
        x = hidden.view(rows, -1)
        spans = _attention_spans(mask[:, :window])
        # Where rows of different lengths attend together, each row's padding on the left is
        # hidden from attention: one additive mask for all layers.
        hidden_mask = None
        if any(last - first > 1 for first, last, _ in spans):
            hidden_mask = torch.zeros((rows, 1, 1, window), dtype=x.dtype, device=x.device)
            hidden_mask.masked_fill_(mask[:, None, None, :window] == 0, float("-inf"))
        q_width = self.heads * self.head_dim
        kv_width = self.kv_heads * self.head_dim
        for index, layer in enumerate(self.layers):
            deltas = plan[index]
            h = _norm(x, layer.input_norm, self.eps)
            qkv = _project(layer.qkv, h, deltas.get("q_proj"))
            qk = qkv[:, : q_width + kv_width].view(rows, self.heads + self.kv_heads, self.head_dim)
            qk = qk * cos + _rotate_half(qk) * sin
            q = qk[:, : self.heads]
            k = qk[:, self.heads :]
            v = qkv[:, q_width + kv_width :].view(rows, self.kv_heads, self.head_dim)
            cached = cache.layers[index]
            cached.keys[:, :, end].copy_(k)
            cached.values[:, :, end].copy_(v)
            # PyTorch's attention kernel, on the filled columns only: 20 us a layer for one row
            # and 200 tokens here, against 90 us for the same arithmetic in separate products.
            queries = q.reshape(rows, self.heads, 1, self.head_dim)
            parts = [
                F.scaled_dot_product_attention(
                    queries[first:last],
                    cached.keys[first:last, :, column:window],
                    cached.values[first:last, :, column:window],
                    attn_mask=None
                    if hidden_mask is None
                    else hidden_mask[first:last, ..., column:],
                    scale=self.scale,
                    enable_gqa=True,
                )
                for first, last, column in spans
            ]
            attended = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(rows, q_width)
            x = x + _project(layer.o, attended, deltas.get("o_proj"))
            h = _norm(x, layer.post_norm, self.eps)
            gate_up = _project(layer.gate_up, h, deltas.get("gate_proj"))
            gate, up = gate_up.chunk(2, dim=-1)
            x = x + _project(layer.down, F.silu(gate) * up, deltas.get("down_proj"))
        for cached in cache.layers:
            cached.cumulative_length.add_(1)
        return self.head.mm(_norm(x, model.norm.weight, self.eps))


_PARTS = (*QKV, *O, *GATE_UP, *DOWN)


# Up to this many rows, each row attends on its own, to its own columns: a short answer beside a
# long RAG prompt does not read the long one's padding (measured here: a step of 4 rows of 36 and
# 778 prompt tokens, 20.0 ms attending together, 18.9 ms on their own). Above it, one call for
# all rows reads from the first column any of them fills.
OWN_ATTENTION_ROWS = 4


def _attention_spans(filled: torch.Tensor) -> list[tuple[int, int, int]]:
    """(first row, last row + 1, first column) of each attention call, from the rows' mask of
    the cache's filled columns (each row's padding lies on its left)."""
    starts = (filled == 0).sum(dim=-1).tolist()
    if len(starts) <= OWN_ATTENTION_ROWS:
        return [(row, row + 1, start) for row, start in enumerate(starts)]
    return [(0, len(starts), min(starts))]


def _layer_key(path: str) -> str:
    """'…layers.3.self_attn.q_proj' -> '3.q_proj'."""
    parts = path.split(".")
    if "layers" not in parts:
        return path
    at = parts.index("layers")
    return f"{parts[at + 1]}.{parts[-1]}" if len(parts) > at + 1 else path


def _is_plain_llama(model: Any) -> bool:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama":
        return False
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return False
    if getattr(config, "hidden_act", "silu") != "silu":
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, name) for name in ("layers", "embed_tokens", "norm", "rotary_emb"))


def _base_weight(module: Any) -> torch.Tensor:
    base = getattr(module, "base_layer", module)  # under PEFT's wrapper, the plain layer
    return base.weight.detach()


def _stack(parent: Any, parts: Sequence[str]) -> torch.Tensor:
    weights = [_base_weight(getattr(parent, part)) for part in parts]
    return weights[0] if len(weights) == 1 else torch.cat(weights)


def _block_diagonal(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor] | None], widths: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    present = [pair for pair in pairs if pair is not None]
    down = torch.cat([d for d, _ in present])
    up = torch.zeros((down.shape[0], sum(widths)), dtype=torch.float32, device=down.device)
    row = column = 0
    for pair, width in zip(pairs, widths, strict=True):
        if pair is not None:
            rank = pair[0].shape[0]
            up[row : row + rank, column : column + width] = pair[1]
            row += rank
        column += width
    return down.t().contiguous(), up


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in one kernel (which computes in float32 inside)."""
    return F.rms_norm(x, (x.shape[-1],), weight=weight, eps=eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _project(weight: Packed, x: torch.Tensor, deltas: list[_Delta] | None) -> torch.Tensor:
    out = weight.mm(x)
    for delta in deltas or ():
        # In place, rounded once to the output's format; every row of one adapter (one answer,
        # or a batch of one adapter) needs no slices: each operation costs here.
        whole = delta.start == 0 and delta.end == x.shape[0]
        rows = x if whole else x[delta.start : delta.end]
        target = out if whole else out[delta.start : delta.end]
        target.add_(torch.mm(torch.mm(rows.float(), delta.down), delta.up))
    return out
