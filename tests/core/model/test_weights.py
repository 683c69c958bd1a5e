"""Packed weights and the fused Llama step: the answers they give are the reference path's."""

from __future__ import annotations

import pytest
import torch

from core.model import decode, weights
from core.model.decode import BASE, Row
from core.model.llama_step import LlamaStep, RescoredHead
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.training import adapters

PROMPTS = [
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval augmented generation reads your documents.",
    "You are a helpful assistant. Answer briefly and plainly.",
]
NEW_TOKENS = 24


def four_bit(weight: torch.Tensor) -> torch.Tensor:
    """`weight` rounded as llama.cpp's Q4_1 rounds it: in groups of 32, min + k * step, k in
    0..15, with the group's ends kept."""
    rows, columns = weight.shape
    groups = weight.float().reshape(rows, columns // 32, 32)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15
    levels = ((groups - low) / step.clamp(min=1e-12)).round()
    return (levels * step + low).reshape(rows, columns).to(weight.dtype)


def eight_bit(weight: torch.Tensor) -> torch.Tensor:
    """`weight` rounded to 255 levels per row, symmetric around zero."""
    rows = weight.float()
    scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127  # the pad row is 0
    return ((rows / scale).round() * scale).to(weight.dtype)


def snap_to_four_bits(model) -> None:
    """Make the decoder's linear weights 4-bit and the output head's 8-bit, as the embedded
    default's GGUF file has them: packing them then loses nothing, and what is left to compare
    is the arithmetic."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                module.weight.copy_(four_bit(module.weight))
        model.lm_head.weight.copy_(eight_bit(model.lm_head.weight))


@pytest.fixture(scope="module")
def bf16(tuned):
    """The tiny model in bfloat16 with 4-bit decoder weights, the trained adapter attached, and
    the fused step built for it."""
    _, run_id, settings = tuned
    settings = settings.model_copy(update={"dtype": "bfloat16"})
    loaded = load_chat_model(settings)
    snap_to_four_bits(loaded.model)
    chat = HFChatModel(loaded, weights="auto")
    adapters.attach(chat, settings, run_id)
    return chat, run_id


def token_ids(chat: HFChatModel, text: str) -> list[int]:
    ids, _, _ = chat.build_prompt([{"role": "user", "content": text}], "Be brief.", NEW_TOKENS)
    return ids


def greedy(chat, run_id, how: weights.DecodeWeights | None) -> dict[tuple[str, str], list[int]]:
    """Every prompt with and without the adapter, in one batch: the tokens of each row."""
    out: dict[tuple[str, str], list[int]] = {}
    rows = []
    for text in PROMPTS:
        for adapter in (BASE, run_id):
            tokens: list[int] = []
            out[(text, adapter)] = tokens
            rows.append(Row(token_ids(chat, text), NEW_TOKENS, tokens.append, adapter=adapter))
    decode.decode(chat.loaded.model, rows, set(), chat._peft, weights=how)
    return out


class Forced(decode.Batch):
    """A batch fed the reference's tokens (teacher forcing), keeping its scores at every step."""

    def __init__(self, *args, reference: dict[int, list[int]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reference = reference
        self.scores: list[torch.Tensor] = []  # per step: [rows, vocabulary]

    def _pick(self, logits: torch.Tensor) -> list[int]:
        self.scores.append(logits.float().clone())
        return [self.reference[id(row)][row.new_tokens] for row in self.rows]


def forced_scores(chat, reference, how: weights.DecodeWeights | None) -> torch.Tensor:
    """The scores of every step of every row, [steps, rows, vocabulary], reading `reference`'s
    answers so far."""
    rows, expected = [], {}
    for (text, adapter), tokens in reference.items():
        row = Row(token_ids(chat, text), NEW_TOKENS, lambda token: None, adapter=adapter)
        rows.append(row)
        expected[id(row)] = tokens
    batch = Forced(chat.loaded.model, set(), lambda: chat._peft, weights=how, reference=expected)
    with torch.inference_mode():
        batch.admit(rows)
        while batch.rows:
            batch.step()
    batch.pause()
    assert len(batch.scores) == NEW_TOKENS - 1
    return torch.stack(batch.scores)


def agreement(chat, run_id, how: weights.DecodeWeights, strict: bool = False) -> float:
    """The share of steps where `how` picks the token that the reference path picks, both
    reading the reference's answer so far. Unless `strict`, a pick whose reference score is
    within bfloat16's rounding of the best (1/128 of its size) counts as the same: a random tiny
    model has many near-ties, which any change of summation order breaks either way."""
    reference = greedy(chat, run_id, None)
    ours = forced_scores(chat, reference, how)
    theirs = forced_scores(chat, reference, None)
    picked = theirs.gather(-1, ours.argmax(-1, keepdim=True)).squeeze(-1)
    best = theirs.amax(-1)
    tolerance = 0 if strict else best.abs() / 128
    return float((picked >= best - tolerance).float().mean())


# -- packing ---------------------------------------------------------------------------------------
def test_four_bit_weights_pack_as_int4_without_loss_and_others_as_int8() -> None:
    torch.manual_seed(0)
    weight = four_bit(torch.randn(64, 128) * 0.05).to(torch.bfloat16)
    x = torch.randn(3, 128).to(torch.bfloat16)
    exact = x.float() @ weight.float().t()
    packed = weights.pack_weight(weight, "auto")
    assert packed.kind == "int4"
    assert torch.allclose(packed.mm(x).float(), exact, atol=0.02, rtol=0.02)
    plain = (torch.randn(64, 128) * 0.05).to(torch.bfloat16)  # not 4-bit: int8
    packed = weights.pack_weight(plain, "auto")
    assert packed.kind == "int8"
    exact = x.float() @ plain.float().t()
    assert (packed.mm(x).float() - exact).abs().max() < 0.02 * exact.abs().max()
    assert weights.pack_weight(weight, "int8").kind == "int8"
    assert weights.pack_weight(weight, "full").kind == "full"


def test_the_default_model_shape_is_packed_and_described(bf16) -> None:
    chat, _ = bf16
    info = chat.decoding.info
    assert isinstance(chat.decoding.step, LlamaStep)
    # Two layers of four fused matrices, all 4-bit; the output head (8-bit) gets a 4-bit first
    # pass, its best candidates scored exactly.
    assert (info.int4, info.int8, info.full) == (9, 0, 0)
    assert info.text == "int4"
    assert isinstance(chat.decoding.step.head, RescoredHead)
    assert weights.prepare(chat.loaded.model, "int8").info.text == "int8"  # as the setting says


def test_the_output_heads_best_candidates_are_scored_exactly(bf16) -> None:
    chat, _ = bf16
    head = chat.decoding.step.head
    weight = chat.loaded.model.lm_head.weight
    torch.manual_seed(0)
    x = torch.nn.functional.rms_norm(torch.randn(32, weight.shape[1]), (weight.shape[1],))
    x = x.to(torch.bfloat16)
    exact = torch.nn.functional.linear(x, weight).float()
    first = head.first.mm(x).float()
    scores = head.mm(x).float()
    rows = torch.arange(len(x))
    best = exact.argmax(-1)
    assert torch.equal(scores[rows, best], exact[rows, best])  # the best was a candidate
    assert torch.equal(scores.argmax(-1), best)
    assert not torch.equal(first, exact)  # the first pass alone is rounded
    assert (first - exact).abs().max() < 0.1 * exact.abs().max()  # but close everywhere


# -- the answers -----------------------------------------------------------------------------------
def test_the_fused_step_picks_the_reference_tokens_for_base_adapter_and_mixed_rows(bf16) -> None:
    chat, run_id = bf16
    assert agreement(chat, run_id, chat.decoding) >= 0.95
    assert agreement(chat, run_id, chat.decoding, strict=True) >= 0.85
    fast = greedy(chat, run_id, chat.decoding)
    assert fast[(PROMPTS[0], BASE)] != fast[(PROMPTS[0], run_id)]  # the adapter still counts


def test_the_fused_step_on_full_weights_computes_what_transformers_computes(tuned) -> None:
    chat, run_id, _ = tuned  # in float32: the same arithmetic, to within rounding
    full = weights.DecodeWeights(step=LlamaStep.build(chat.loaded.model, "full"))
    assert greedy(chat, run_id, full) == greedy(chat, run_id, None)
    assert agreement(chat, run_id, full, strict=True) == 1.0


# -- where a lever cannot apply, the plain path serves ---------------------------------------------
def test_another_architecture_decodes_through_its_own_forward_with_packed_layers(
    bf16, monkeypatch
) -> None:
    chat, run_id = bf16
    monkeypatch.setattr(chat.loaded.model.config, "model_type", "mistral")
    how = weights.prepare(chat.loaded.model, "auto")
    assert how.step is None
    assert {layer.kind for layer in how.layers.values()} == {"int4", "int8"}
    assert agreement(chat, run_id, how) >= 0.95


def test_an_adapter_the_step_cannot_apply_goes_through_the_models_forward(
    bf16, monkeypatch
) -> None:
    chat, run_id = bf16

    def refuse(self, peft_model, adapters):
        raise LookupError("not a plain LoRA")

    monkeypatch.setattr(LlamaStep, "deltas", refuse)
    reference = greedy(chat, run_id, None)
    assert greedy(chat, run_id, chat.decoding) == reference  # the plain path, exactly


def test_no_kernels_or_no_bfloat16_means_the_model_as_it_is(bf16, tuned, monkeypatch) -> None:
    chat, _ = bf16
    float32_chat, _, _ = tuned
    assert weights.prepare(float32_chat.loaded.model, "auto") == weights.DecodeWeights()
    assert weights.prepare(chat.loaded.model, "full") == weights.DecodeWeights()
    monkeypatch.delattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", raising=False)
    monkeypatch.setattr(weights, "supported", lambda model: False)
    assert weights.prepare(chat.loaded.model, "auto").info.text == ""


def test_the_output_head_gets_an_input_matmul_folds_into_one_product(tuned) -> None:
    from core.model import fast_paths

    chat, _, _ = tuned  # its weights are frozen (PEFT has loaded an adapter)
    model = chat.loaded.model
    assert not model.lm_head.weight.requires_grad
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        fast_paths.contiguous_head_input(model)
        fast_paths.contiguous_head_input(model)  # once is enough: no second copy
        with torch.inference_mode():
            model(input_ids=torch.tensor([[5, 6, 7, 8]]), logits_to_keep=1)
    finally:
        handle.remove()
    (given,) = seen
    # Strides a matmul folds into one matrix product: each is the product of the sizes after it.
    assert list(given.stride()) == [given.shape[1] * given.shape[2], given.shape[2], 1]


# -- the real default model ------------------------------------------------------------------------
@pytest.mark.slow
def test_the_default_model_decodes_int4_with_the_reference_tokens(
    fresh_real_data_dir, real_persona_run
) -> None:
    from core.settings import Settings
    from tests.support.training import copy_run

    settings = Settings(_env_file=None, data_dir=fresh_real_data_dir(), dtype="bfloat16")
    chat = HFChatModel(load_chat_model(settings), weights="auto")
    run_id = copy_run(real_persona_run, settings.data_dir)
    adapters.attach(chat, settings, run_id)
    info = chat.decoding.info
    # The GGUF file's 4-bit weights as they are; its 8-bit output head's first pass in int4.
    assert (info.int4, info.int8, info.full) == (121, 0, 0)
    agreed = agreement(chat, run_id, chat.decoding)
    print(f"token agreement with the bfloat16 reference: {agreed:.3f}")
    assert agreed >= 0.95  # (the real-model tests' questions go through this path too)
