"""Packed copies of a model's frozen weights for decoding on a CPU.

Decoding one token reads every weight of the model once, so on a CPU its speed is the speed of
reading the weights. PyTorch ships weight-only kernels for CPUs that take bfloat16 inputs:
- int4 in groups of 32 with a scale and an offset per group (`_weight_int4pack_mm_for_cpu`):
  exactly the numbers of a GGUF file's Q4_1 weights, such as the embedded default model's, so
  for such a model nothing changes but the speed (measured here: 4.6 ms for the 210 linear
  layers of one token, against 21.7 ms in bfloat16);
- int8 with a scale per output row (`_weight_int8pack_mm`): for weights that are not already
  4-bit, about half the bytes of bfloat16, within a fraction of a percent of its numbers.

The bfloat16 weights stay where they are: prompts (many tokens at once) and large batches are
faster on them, and training and LoRA never see the packed copies. LoRA updates are added in
float32 on top of a packed layer's output (core.model.fast_paths), so an adapter means what it
meant when it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from core.memory import release_freed_memory

WeightsSetting = Literal["auto", "int8", "full"]
GROUP = 32  # weights per int4 group: GGUF's Q4_1 block
# Rows above which the bfloat16 weights are faster than the packed ones (measured here: for 16
# rows int4 took 24 ms a token against 22 ms in bfloat16; for 4 rows 7 ms against 22 ms).
MAX_PACKED_ROWS = 8


@dataclass(frozen=True)
class PackInfo:
    """What was packed, for the Home page."""

    int4: int  # weight matrices
    int8: int
    full: int

    @property
    def text(self) -> str:
        """'int4', 'int8', 'int4 + int8' or '' (nothing packed)."""
        kinds = [name for name, count in (("int4", self.int4), ("int8", self.int8)) if count]
        return " + ".join(kinds)

    @staticmethod
    def of(kinds: list[str]) -> PackInfo:
        return PackInfo(kinds.count("int4"), kinds.count("int8"), kinds.count("full"))


class Packed:
    """One weight matrix for decoding: int4, int8, or as it is ('full')."""

    def __init__(self, kind: str, weight: torch.Tensor, packed: Any = None, scales: Any = None):
        self.kind = kind
        self.out_features = weight.shape[0]
        self.weight = weight if kind == "full" else None  # the packed copy replaces it
        self.packed = packed
        self.scales = scales

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """x [rows, in] @ weight^T."""
        if self.kind == "int4":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales)
        if self.kind == "int8":
            return torch._weight_int8pack_mm(x, self.packed, self.scales)
        assert self.weight is not None
        return torch.nn.functional.linear(x, self.weight)


def pack_weight(weight: torch.Tensor, setting: str) -> Packed:
    """`weight` packed as `setting` says ('auto': int4 when it is 4-bit already, else int8;
    'int8'; 'full': as it is), or as it is where no kernel fits its shape."""
    out_features, in_features = weight.shape
    if setting == "auto" and in_features % GROUP == 0 and out_features % 16 == 0:
        four_bit = _as_int4(weight)
        if four_bit is not None:
            return Packed("int4", weight, *four_bit)
    if setting in ("auto", "int8") and in_features % 8 == 0:
        return Packed("int8", weight, *_as_int8(weight))
    return Packed("full", weight)


class PackedLinear(torch.nn.Module):
    """A frozen linear layer that decodes through a packed copy of its weight and reads prompts
    and large batches through the original (models that core.model.llama_step does not serve).
    Forward hooks registered on it see its output."""

    def __init__(self, linear: torch.nn.Linear, packed: Packed):
        super().__init__()
        self.linear = linear
        self.packed = packed
        self.kind = packed.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > MAX_PACKED_ROWS or x.dtype != torch.bfloat16:
            return self.linear(x)
        out = self.packed.mm(flat)
        if self.linear.bias is not None:
            out = out + self.linear.bias
        return out.reshape(*x.shape[:-1], self.packed.out_features)


@dataclass
class DecodeWeights:
    """How a model decodes: through the fused Llama step (core.model.llama_step), through its
    own forward with packed layers swapped in (by module path), or as it is (neither)."""

    step: Any = None  # a LlamaStep
    layers: dict[str, PackedLinear] = field(default_factory=dict)
    info: PackInfo = PackInfo(0, 0, 0)


def supported(model: Any) -> bool:
    """Whether packed weights can serve this model: bfloat16 on a CPU whose PyTorch has the
    kernels. Anywhere else (a GPU, float32) decoding uses the model's own weights."""
    return (
        model.device.type == "cpu"
        and model.dtype == torch.bfloat16
        and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and hasattr(torch, "_weight_int8pack_mm")
    )


def prepare(model: Any, setting: WeightsSetting) -> DecodeWeights:
    """The decoding weights of `model` for the `decode_weights` setting: nothing for 'full' or
    where the kernels do not apply; the fused step for Llama models; else packed layers."""
    if setting == "full" or not supported(model):
        return DecodeWeights()
    from core.model.llama_step import LlamaStep

    step = LlamaStep.build(model, setting)
    if step is not None:
        prepared = DecodeWeights(step=step, info=PackInfo.of(step.kinds))
    else:
        layers = pack_layers(model, setting)
        prepared = DecodeWeights(layers=layers, info=PackInfo.of([p.kind for p in layers.values()]))
    release_freed_memory()  # the float32 copies made on the way
    return prepared


def pack_layers(model: Any, setting: WeightsSetting) -> dict[str, PackedLinear]:
    """Packed copies of the linear layers of `model`'s decoder and output head, by module path.
    Layers that do not fit a kernel's shape stay as they are."""
    packed: dict[str, PackedLinear] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            # PEFT's own layers are never packed; a layer it wraps is swapped at its own place.
            path = name.removesuffix(".base_layer")
            if (
                type(module) is not torch.nn.Linear
                or ".lora_" in name
                or not _is_decoder_weight(model, name)
            ):
                continue
            weight = pack_weight(module.weight.detach(), setting)
            if weight.kind != "full":
                packed[path] = PackedLinear(module, weight)
    return packed


def _is_decoder_weight(model: Any, name: str) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return ".layers." in f".{name}" or (head is not None and model.get_submodule(name) is head)


# Rows packed at a time: the float32 copies made on the way stay small (the output head of the
# default model is 49,152 rows; packing it whole took 440 MB of memory for a moment).
ROWS_AT_ONCE = 4096


def _as_int4(
    weight: torch.Tensor, lossless: bool = True
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The int4 packing of `weight` when it loses nothing: every group of 32 is min + k * step
    for k in 0..15 (within bfloat16's rounding); else None. With `lossless` off, rounded."""
    codes, steps, lows = [], [], []
    for part in weight.split(ROWS_AT_ONCE):
        found = _four_bit_levels(part, lossless)
        if found is None:
            return None
        codes.append(found[0])
        steps.append(found[1])
        lows.append(found[2])
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.cat(codes), 1)
    step, low = torch.cat(steps), torch.cat(lows)
    # The kernel computes (code - 8) * scale + zero: zero = min + 8 * scale.
    zeros = low + 8 * step
    scales_and_zeros = torch.cat([step, zeros], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_and_zeros.to(torch.bfloat16)


def rounded_int4(weight: torch.Tensor) -> Packed | None:
    """`weight` rounded to 16 levels per group of 32 (llama.cpp's Q4_1), for a first pass whose
    best candidates are scored again exactly (core.model.llama_step's output head); None where
    the kernel does not fit its shape."""
    out_features, in_features = weight.shape
    if in_features % GROUP or out_features % 16:
        return None
    packed = _as_int4(weight, lossless=False)
    assert packed is not None  # rounding always succeeds
    return Packed("int4", weight, *packed)


def _four_bit_levels(
    weight: torch.Tensor, lossless: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(codes [rows, in] int32, step and min [rows, groups, 1]) of rows that are 4-bit, or None;
    with `lossless` off, every row rounded to its group's 16 levels."""
    out_features, in_features = weight.shape
    groups = weight.float().reshape(out_features, in_features // GROUP, GROUP)
    low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    step = (high - low) / 15
    safe = torch.where(step > 0, step, torch.ones_like(step))
    levels = ((groups - low) / safe).round().clamp_(0, 15)
    error = (levels * step + low - groups).abs()
    # bfloat16 keeps 8 significant bits: the group's ends and each weight read back from it are
    # off by at most 2^-9 of their size; a weight further off was not 4-bit to begin with (the
    # rounding of random weights to 16 levels is off by up to step / 2, about 0.13 of their
    # spread, against the 0.016 allowed here).
    tolerance = (low.abs() + high.abs() + groups.abs()) * 2**-8 + 1e-12
    if lossless and bool((error > tolerance).any()):
        return None
    return levels.to(torch.int32).reshape(out_features, in_features), step, low


def _as_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale per output row."""
    codes, scales = [], []
    for part in weight.split(ROWS_AT_ONCE):
        rows = part.float()
        scale = rows.abs().amax(dim=1).clamp(min=1e-8) / 127
        codes.append((rows / scale[:, None]).round().clamp_(-127, 127).to(torch.int8))
        scales.append(scale)
    return torch.cat(codes).contiguous(), torch.cat(scales).to(torch.bfloat16)
