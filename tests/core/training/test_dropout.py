import math
from pathlib import Path

import pytest
import torch
from torch import nn

from core.training.config import TrainConfig
from core.training.dropout import FastDropout, SharedMask
from core.training.worker import load_model, with_lora


def test_drops_each_element_with_probability_p_and_scales_the_rest() -> None:
    torch.manual_seed(0)
    p, count = 0.05, 400_000
    out = FastDropout(p).train()(torch.ones(count))
    dropped = out == 0
    # binomial: 5 standard deviations is about 0.0017 here
    assert abs(float(dropped.float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / count)
    assert torch.allclose(out[~dropped], torch.full_like(out[~dropped], 1 / (1 - p)))
    # neighbours (lanes of the same 64-bit draw) are dropped independently
    both = (dropped[:-1] & dropped[1:]).float().mean()
    assert abs(float(both) - p * p) < 0.001


def test_a_new_mask_every_call_and_gradients_through_kept_elements() -> None:
    torch.manual_seed(0)
    layer = FastDropout(0.5).train()
    x = torch.ones(64, 32, dtype=torch.bfloat16, requires_grad=True)
    first, second = layer(x), layer(x)
    assert not torch.equal(first == 0, second == 0)
    first.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, first.detach())  # gradient = mask * 1 / (1 - p) = the output


def test_layers_reading_one_input_share_its_mask_and_a_new_input_gets_a_new_one() -> None:
    torch.manual_seed(0)
    shared = SharedMask()
    q, k, o = (FastDropout(0.5, shared).train() for _ in range(3))
    x = torch.ones(64, 32)
    first = q(x)
    assert k(x) is first  # k reads what q read: the same mask, drawn once
    assert not torch.equal(q(x) == 0, first == 0)  # q again: a new mask
    y = torch.ones(64, 32)
    assert not torch.equal(o(y) == 0, first == 0)  # another input (equal values): its own


def test_identity_when_evaluating_or_p_is_zero() -> None:
    x = torch.randn(16, 8)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="below 1"):
        FastDropout(1.0)


def test_training_models_get_it_in_every_lora_layer(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = with_lora(
        load_model(str(tiny_model_dir), "float32", "cpu", False), TrainConfig(dropout=0.1)
    )
    layers = [m for m in model.modules() if hasattr(m, "lora_dropout")]
    kinds = {type(layer.lora_dropout["default"]) for layer in layers}
    assert layers
    assert kinds == {FastDropout}
    assert {layer.lora_dropout["default"].p for layer in layers} == {0.1}
    # one forward draws one mask per input that LoRA layers read: q, k and v share theirs,
    # gate and up theirs; o and down have their own
    draws = []
    original = FastDropout._drop
    monkeypatch.setattr(
        FastDropout, "_drop", lambda self, x: draws.append(self) or original(self, x)
    )
    model.train()
    model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    decoder_layers = model.config.num_hidden_layers
    assert len(draws) == 4 * decoder_layers < len(layers) == 7 * decoder_layers
    untouched = with_lora(
        load_model(str(tiny_model_dir), "float32", "cpu", False), TrainConfig(dropout=0.0)
    )
    assert not any(isinstance(m, (FastDropout, nn.Dropout)) for m in untouched.modules())
