"""Settings, presets and the checks before a run: pure functions, no model weights."""

import pytest
from transformers import AutoTokenizer

from core.errors import InvalidInputError
from core.training.config import (
    PRESETS,
    TrainConfig,
    estimate_seconds,
    eval_steps,
    help_for,
    passes,
    preflight,
    prepare_examples,
    split,
    total_steps,
    with_system_prompt,
)
from core.training.datasets import parse_dataset
from tests.support.training import alpaca_rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def examples(tokenizer, rows: int, max_length: int = 512, answer: str = "Paris."):
    dataset = parse_dataset("d.jsonl", alpaca_rows(rows, answer=answer))
    return prepare_examples(dataset.examples, tokenizer, max_length, "Be brief.")


def test_presets_are_valid_and_grow_in_effort() -> None:
    quick, balanced, thorough = (PRESETS[k].config for k in ("quick", "balanced", "thorough"))
    for config in (quick, balanced, thorough):
        config.validate()
    assert quick.epochs < balanced.epochs < thorough.epochs
    assert quick.min_steps < balanced.min_steps < thorough.min_steps
    assert quick.rank <= balanced.rank <= thorough.rank


def test_small_datasets_take_the_fewest_steps_and_large_ones_their_passes() -> None:
    config = TrainConfig(epochs=3, batch_size=8, min_steps=96)
    assert total_steps(81, config) == 96  # 11 batches x 3 passes = 33: too few to learn
    assert passes(81, config) == pytest.approx(96 / 11)
    assert total_steps(800, config) == 300  # 100 batches x 3 passes
    assert passes(800, config) == 3
    assert total_steps(81, TrainConfig(epochs=3, batch_size=8, min_steps=0)) == 33


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": 0}, "rank"),
        ({"learning_rate": 1.0}, "learning rate"),
        ({"eval_fraction": 0.9}, "held-out"),
        ({"max_length": 4}, "maximum length"),
        ({"target_modules": " "}, "layers"),
    ],
)
def test_bad_settings_are_named(change, message) -> None:
    with pytest.raises(InvalidInputError, match=message):
        TrainConfig(**change).validate()


def test_every_setting_has_help() -> None:
    for name in TrainConfig.__dataclass_fields__:
        assert len(help_for(name)) > 20, name


def test_target_modules_are_parsed() -> None:
    assert TrainConfig().lora_targets() == "all-linear"
    assert TrainConfig(target_modules="q_proj, v_proj").lora_targets() == ["q_proj", "v_proj"]


def test_the_split_is_reproducible_and_disjoint() -> None:
    train, held = split(100, 0.1, seed=7)
    assert (train, held) == split(100, 0.1, seed=7)
    assert len(held) == 10 and not set(train) & set(held)
    assert split(100, 0.1, seed=8) != (train, held)
    assert split(5, 0.0, seed=1)[1] == []


def test_rows_get_the_studio_system_prompt_unless_they_have_one() -> None:
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert with_system_prompt(chat, "Be brief.")[0] == {"role": "system", "content": "Be brief."}
    own = [{"role": "system", "content": "Pirate."}, *chat]
    assert with_system_prompt(own, "Be brief.") == own


def test_a_good_dataset_passes_without_warnings(tokenizer) -> None:
    config = TrainConfig(batch_size=8, eval_fraction=0.1, min_steps=96)
    check = preflight(examples(tokenizer, 120), config)
    assert check.blockers == [] and check.warnings == []
    assert (check.train_rows, check.eval_rows) == (108, 12)
    assert check.train_tokens > check.eval_tokens > 0


def test_a_run_unlikely_to_change_the_model_is_said_plainly(tokenizer) -> None:
    rows = examples(tokenizer, 120)
    quick = " ".join(preflight(rows, PRESETS["quick"].config).warnings)
    assert "32 learning steps may be too few to change the model" in quick
    assert "27 steps did not teach the default model its new name and 96 did" in quick
    for key in ("balanced", "thorough"):
        assert preflight(rows, PRESETS[key].config).warnings == []
    slow = preflight(rows, TrainConfig(learning_rate=2e-5, min_steps=96)).warnings
    assert any("changes a small model very slowly" in w for w in slow)


def test_fewer_rows_than_a_batch_block_the_run(tokenizer) -> None:
    check = preflight(examples(tokenizer, 5), TrainConfig(batch_size=8, eval_fraction=0.0))
    assert any("fewer than one batch (8)" in b for b in check.blockers)


def test_all_rows_too_long_block_the_run(tokenizer) -> None:
    check = preflight(examples(tokenizer, 40, max_length=16), TrainConfig(max_length=16))
    assert any("Every example is longer than the maximum length (16" in b for b in check.blockers)


def test_small_data_most_rows_cut_and_no_held_out_set_are_warned(tokenizer) -> None:
    rows = examples(tokenizer, 12)
    longest = max(e.full_length for e in rows)
    check = preflight(
        examples(tokenizer, 12, max_length=longest - 1),
        TrainConfig(batch_size=2, eval_fraction=0.0, max_length=longest - 1),
    )
    text = " ".join(check.warnings)
    assert check.blockers == []
    assert "too few to change the model" in text
    assert "held-out set is empty" in text


def test_most_rows_cut_is_warned(tokenizer) -> None:
    long_answer = "The quick brown fox jumps over the lazy dog. " * 6
    data = alpaca_rows(40, answer=long_answer) + b"\n" + alpaca_rows(20)
    messages = parse_dataset("d.jsonl", data).examples
    short = max(e.full_length for e in prepare_examples(messages[40:], tokenizer, 10**6, "x"))
    config = TrainConfig(max_length=short + 2)
    check = preflight(prepare_examples(messages, tokenizer, config.max_length, "x"), config)
    assert check.blockers == []
    assert any("40 of 60 examples are longer" in w for w in check.warnings), check


def test_duration_estimate_scales_with_epochs_and_speed(tokenizer) -> None:
    rows = examples(tokenizer, 100)
    config = TrainConfig()
    check = preflight(rows, config)
    one = estimate_seconds(check, TrainConfig(epochs=1), tokens_per_s=500)
    three = estimate_seconds(check, TrainConfig(epochs=3), tokens_per_s=500)
    assert three > 2.5 * (one - 8) and estimate_seconds(check, config, 1000) < three
    # the fewest steps count: 90 rows need 12 batches a pass, 96 steps are 8 passes
    steps = estimate_seconds(check, TrainConfig(epochs=1, min_steps=96), tokens_per_s=500)
    assert steps > 7 * (one - 8)


def test_eval_steps_end_at_the_last_step() -> None:
    assert eval_steps(24) == [3, 6, 9, 12, 15, 18, 21, 24]
    assert eval_steps(5)[-1] == 5 and eval_steps(1) == [1]
