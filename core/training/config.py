"""LoRA fine-tuning settings, presets, and the checks and estimates made before a run.

Pure Python: the page uses it to check a dataset, and the worker (core.training.worker) to train it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import InvalidInputError
from core.training.datasets import Message, encode

# -- settings -------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """What a user may change about a run. Each help text is shown beside its widget."""

    rank: int = field(
        default=8,
        metadata={
            "help": "Size of the learned change. Higher learns more detail, trains slower "
            "and makes a larger adapter. 8-16 suits most tasks."
        },
    )
    alpha: int = field(
        default=16,
        metadata={"help": "Strength of the learned change; usually twice the rank."},
    )
    dropout: float = field(
        default=0.05,
        metadata={
            "help": "Share of the learned change switched off at random while training, "
            "so that the model does not just memorise the examples."
        },
    )
    target_modules: str = field(
        default="all-linear",
        metadata={
            "help": "Which layers learn: 'all-linear' (all of them, best), or names such "
            "as 'q_proj,v_proj' (fewer, faster, weaker)."
        },
    )
    learning_rate: float = field(
        default=5e-4,
        metadata={
            "help": "Size of each learning step. Too high and the loss jumps around; too "
            "low and nothing changes."
        },
    )
    epochs: float = field(
        default=3.0,
        metadata={"help": "How many times training reads the whole dataset."},
    )
    min_steps: int = field(
        default=0,
        metadata={
            "help": "Fewest learning steps, whatever the number of passes: a small dataset is "
            "read more times until the model has taken this many steps (a small model needs "
            "about sixty to take on a new name). 0: the passes alone decide."
        },
    )
    batch_size: int = field(
        default=8,
        metadata={"help": "Examples per learning step. Lower it if training runs out of memory."},
    )
    max_length: int = field(
        default=512,
        metadata={
            "help": "Longest example, in tokens; longer ones are cut. Lower it if "
            "training runs out of memory."
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Share of the examples kept out of training to check the model on "
            "text it has not seen (the held-out loss)."
        },
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Fixes the shuffling and the starting values: the same "
            "data and settings train the same adapter."
        },
    )

    def validate(self) -> TrainConfig:
        checks = [
            (1 <= self.rank <= 256, "rank must be between 1 and 256"),
            (self.alpha >= 1, "alpha must be at least 1"),
            (0 <= self.dropout < 1, "dropout must be between 0 and 1"),
            (0 < self.learning_rate <= 0.1, "learning rate must be between 0 and 0.1"),
            (0 < self.epochs <= 100, "epochs must be between 0 and 100"),
            (0 <= self.min_steps <= 100_000, "fewest steps must be between 0 and 100000"),
            (1 <= self.batch_size <= 512, "batch size must be between 1 and 512"),
            (16 <= self.max_length <= 32768, "maximum length must be between 16 and 32768"),
            (0 <= self.eval_fraction <= 0.5, "held-out share must be between 0 and 0.5"),
            (bool(self.target_modules.strip()), "name the layers to train, or 'all-linear'"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"Training settings: {message}.")
        return self

    def lora_targets(self) -> str | list[str]:
        names = [n.strip() for n in self.target_modules.split(",") if n.strip()]
        return "all-linear" if names == ["all-linear"] else names


def help_for(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(TrainConfig) if f.name == name)


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    description: str
    config: TrainConfig


# Calibrated with the default model on a persona set of 90 rows in five languages written for it
# (bench/data/persona: the name and maker in every answer; 10 held-out questions): what makes a
# small model take on what the examples show is the number of learning steps, at a learning rate
# suited to LoRA on a small model, not the number of passes. Balanced as it was (3 passes: 33
# steps at 4e-4) gave the new name in 6 of 10 held-out answers; 64 steps at 1e-3, 8 of 10; 96
# steps at 1e-3, 10 of 10 with two seeds, in about 100 s here. Quick (32 steps) gives 6 of 10,
# Thorough (128 steps, rank 32) 10 of 10 in about 130 s.
PRESETS = {
    preset.key: preset
    for preset in (
        Preset(
            "quick",
            "Quick try",
            "A short run to see the effect: a small adapter, at least 32 learning steps.",
            TrainConfig(rank=8, alpha=16, epochs=2, min_steps=32, learning_rate=1e-3),
        ),
        Preset(
            "balanced",
            "Balanced",
            "Good for most datasets: a medium adapter, at least 96 learning steps.",
            TrainConfig(rank=16, alpha=32, epochs=3, min_steps=96, learning_rate=1e-3),
        ),
        Preset(
            "thorough",
            "Thorough",
            "Learns the most from small datasets: a larger adapter, at least 128 steps.",
            TrainConfig(rank=32, alpha=64, epochs=5, min_steps=128, learning_rate=5e-4),
        ),
    )
}


# -- preparing the data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # before cutting to the maximum length

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


def with_system_prompt(messages: list[Message], system_prompt: str) -> list[Message]:
    """Rows without their own system message get the studio's, the one used when chatting:
    the model then learns under the same instructions it will answer with."""
    if not system_prompt.strip() or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt.strip()}, *messages]


def prepare_examples(
    examples: list[list[Message]], tokenizer: Any, max_length: int, system_prompt: str = ""
) -> list[Example]:
    prepared = []
    for messages in examples:
        ids, labels = encode(with_system_prompt(messages, system_prompt), tokenizer, 10**9)
        prepared.append(Example(ids[:max_length], labels[:max_length], len(ids)))
    return prepared


def split(count: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffled indices of the training and the held-out examples, the same for the same seed."""
    order = list(range(count))
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    held_out = round(count * eval_fraction) if eval_fraction > 0 else 0
    held_out = min(held_out, count - 1) if count > 1 else 0
    return sorted(order[held_out:]), sorted(order[:held_out])


def padding_share(lengths: list[int], batch_size: int, seed: int) -> float:
    """Share of the tokens computed that would be padding if batches were drawn at random."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible estimate, not a secret
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded if padded else 0.0


GROUP_ABOVE_PADDING = 0.15


def sampling_strategy(lengths: list[int], batch_size: int, seed: int) -> str:
    """Batches of similar length when random ones would waste much compute on padding.

    Grouping is not free: batches of similar length are also similar in content, which slows
    learning per step (measured on the example dataset: held-out loss 0.63 instead of 0.60
    after two epochs). So it is used only where it saves more than it costs.
    """
    waste = padding_share(lengths, batch_size, seed)
    return "group_by_length" if waste > GROUP_ABOVE_PADDING else "random"


@dataclass(frozen=True)
class Preflight:
    """What stands in the way of a run (blockers) and what the user should know (warnings)."""

    blockers: list[str]
    warnings: list[str]
    train_rows: int
    eval_rows: int
    train_tokens: int  # per pass over the data
    eval_tokens: int


MIN_USEFUL_ROWS = 30
MIN_USEFUL_ANSWER_TOKENS = 500
# Fewer learning steps than this rarely change a small model: on bench/data/persona, 27 steps
# taught the default model its new name in none of ten held-out answers, 96 in all ten.
FEW_STEPS = 60
SLOW_LEARNING_RATE = 1e-4


def preflight(examples: list[Example], config: TrainConfig) -> Preflight:
    train_index, eval_index = split(len(examples), config.eval_fraction, config.seed)
    train = [examples[i] for i in train_index]
    blockers, warnings = [], []
    cut = sum(1 for e in examples if e.full_length > config.max_length)
    if examples and cut == len(examples):
        blockers.append(
            f"Every example is longer than the maximum length ({config.max_length} tokens), so "
            "every one would be cut. Raise the maximum length in Advanced, or shorten the examples."
        )
    elif cut > len(examples) / 2:
        warnings.append(
            f"{cut} of {len(examples)} examples are longer than the maximum length "
            f"({config.max_length} tokens) and will be cut: the model would not learn how they "
            "end. Raise the maximum length in Advanced."
        )
    usable = [e for e in train if e.answer_tokens]
    if len(usable) < config.batch_size:
        blockers.append(
            f"Only {len(usable)} example(s) are left for training "
            + (f"after holding out {len(eval_index)} " if eval_index else "")
            + f"and that is fewer than one batch ({config.batch_size}). Add examples, or lower "
            "the batch size or the held-out share in Advanced."
        )
    if len(train) - len(usable) and not blockers:
        warnings.append(
            f"{len(train) - len(usable)} example(s) lose their whole answer to the maximum length "
            "and are left out."
        )
    answer_tokens = sum(e.answer_tokens for e in usable)
    if len(usable) < MIN_USEFUL_ROWS or answer_tokens < MIN_USEFUL_ANSWER_TOKENS:
        warnings.append(
            f"{len(usable)} examples with {answer_tokens} answer tokens are probably too few to "
            f"change the model noticeably. Aim for {MIN_USEFUL_ROWS * 2} or more examples, or "
            "choose Thorough."
        )
    steps = total_steps(len(usable), config)
    if usable and steps < FEW_STEPS:
        warnings.append(
            f"{steps} learning steps may be too few to change the model: on a persona set of 90 "
            "examples, 27 steps did not teach the default model its new name and 96 did. Fine "
            "for a first look; to make it stick, choose Balanced or raise 'Fewest learning "
            "steps' in Advanced."
        )
    if config.learning_rate < SLOW_LEARNING_RATE:
        warnings.append(
            f"At a learning rate of {config.learning_rate:g}, LoRA changes a small model very "
            "slowly: expect little difference. Presets use 0.0005 to 0.001."
        )
    if not eval_index:
        warnings.append(
            "The held-out set is empty, so there will be no held-out loss to tell learning from "
            "memorising. Raise the held-out share in Advanced, or add examples."
        )
    return Preflight(
        blockers,
        warnings,
        len(usable),
        len(eval_index),
        sum(len(e.input_ids) for e in usable),
        sum(len(examples[i].input_ids) for i in eval_index),
    )


def estimate_seconds(check: Preflight, config: TrainConfig, tokens_per_s: float) -> float:
    """Expected duration: training tokens and held-out checks at the measured speed, plus load."""
    steps = total_steps(check.train_rows, config)
    evaluations = len(eval_steps(steps)) + 1 if check.eval_rows else 0
    # Evaluation is a forward pass only: about a third of the work of a training step.
    work = (
        check.train_tokens * passes(check.train_rows, config) + evaluations * check.eval_tokens / 3
    )
    return 8.0 + work / max(tokens_per_s, 1e-6)


def total_steps(train_rows: int, config: TrainConfig) -> int:
    """Learning steps of a run: its passes over the data, or `min_steps` if that is more."""
    by_passes = math.ceil(math.ceil(train_rows / config.batch_size) * config.epochs)
    return max(1, by_passes, config.min_steps)


def passes(train_rows: int, config: TrainConfig) -> float:
    """How many times a run reads its training rows (more than `epochs` when `min_steps`
    decides)."""
    return total_steps(train_rows, config) / max(1, math.ceil(train_rows / config.batch_size))


def eval_steps(steps: int) -> list[int]:
    """About eight held-out checks spread over the run, the last at its end."""
    every = max(1, math.ceil(steps / 8))
    return sorted({*range(every, steps + 1, every), steps})
