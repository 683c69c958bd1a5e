"""The Fine-tune page's step 2: the preset with its estimated duration, and every setting under
Advanced."""

from dataclasses import asdict

import streamlit as st

from core.errors import StudioError
from core.settings import Settings
from core.training import jobs
from core.training.config import (
    PRESETS,
    Example,
    TrainConfig,
    estimate_seconds,
    help_for,
    preflight,
)
from core.wording import format_duration
from views.support import resources


def apply_preset() -> None:
    """Runs before the widgets: the Advanced fields take the chosen preset's values."""
    key = st.session_state["ft_preset"] or "quick"
    st.session_state["ft_preset"] = key
    for name, value in asdict(PRESETS[key].config).items():
        st.session_state[f"ft_{name}"] = value


def advanced_fields() -> None:
    """Every training setting, filled in by the preset, each with its help."""
    with st.expander("Advanced", icon=":material/tune:"):
        st.caption("The preset fills these in; change any of them.")
        left, middle, right = st.columns(3)
        left.number_input("Rank", 1, 256, step=1, key="ft_rank", help=help_for("rank"))
        middle.number_input("Alpha", 1, 1024, step=1, key="ft_alpha", help=help_for("alpha"))
        right.number_input(
            "Dropout", 0.0, 0.9, step=0.05, key="ft_dropout", help=help_for("dropout")
        )
        left.number_input(
            "Learning rate",
            1e-6,
            0.1,
            step=1e-4,
            format="%.5f",
            key="ft_learning_rate",
            help=help_for("learning_rate"),
        )
        middle.number_input(
            "Epochs", 0.5, 100.0, step=0.5, key="ft_epochs", help=help_for("epochs")
        )
        right.number_input(
            "Batch size", 1, 512, step=1, key="ft_batch_size", help=help_for("batch_size")
        )
        middle.number_input(
            "Fewest learning steps",
            0,
            100_000,
            step=8,
            key="ft_min_steps",
            help=help_for("min_steps"),
        )
        left.number_input(
            "Maximum length (tokens)",
            16,
            32768,
            step=64,
            key="ft_max_length",
            help=help_for("max_length"),
        )
        middle.number_input(
            "Held-out share",
            0.0,
            0.5,
            step=0.05,
            key="ft_eval_fraction",
            help=help_for("eval_fraction"),
        )
        right.text_input(
            "Layers to train", key="ft_target_modules", help=help_for("target_modules")
        )
        st.text_area(
            "Instructions the examples are trained under (system prompt)",
            key="ft_system_prompt",
            height=68,
            help="Examples without their own system message get these instructions. Chat with the "
            "tuned model under the same ones.",
        )


def how_thoroughly(settings: Settings, examples: list[Example], config: TrainConfig) -> None:
    """Step 2: the preset (with its estimated duration) and the Advanced fields."""
    # -- step 2: settings
    st.subheader("2. How thoroughly to train")
    check = preflight(examples, config)
    try:
        with st.spinner("Measuring how fast this machine trains (once)…", show_time=True):
            speed: float | None = jobs.measure_speed(settings)
    except StudioError:
        speed = None

    def caption(key: str) -> str:
        preset = PRESETS[key]
        if speed is None:
            return preset.description
        seconds = estimate_seconds(preflight(examples, preset.config), preset.config, speed)
        return f"About {format_duration(seconds)}. {preset.description}"

    # The estimates change with the data (filling in a placeholder changes them): they stay in
    # the captions, since Streamlit knows a choice by its label, and a label that changed
    # between two runs would no longer name a preset.
    st.radio(
        "Preset",
        list(PRESETS),
        format_func=lambda key: PRESETS[key].label,
        captions=[caption(key) for key in PRESETS],
        horizontal=True,
        key="ft_preset",
        on_change=apply_preset,
        label_visibility="collapsed",
    )
    advanced_fields()

    for blocker in check.blockers:
        st.error(blocker, icon=":material/block:")
    for warning in check.warnings:
        st.warning(warning, icon=":material/warning:")
    if speed is not None and not check.blockers:
        estimate = format_duration(estimate_seconds(check, config, speed))
        st.caption(
            f"{check.train_rows} examples train, {check.eval_rows} are held out. Estimated "
            f"duration on {resources.device_text(settings)}: about {estimate}."
        )
    return bool(check.blockers)
