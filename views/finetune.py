"""Fine-tune: examples in, a LoRA adapter out, trained in a background process you can watch."""

import hashlib
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import adapters, jobs, runs
from core.datasets import SHAPES, Dataset, parse_dataset, render, summarise
from core.errors import StudioError
from core.generate import ChatRequest
from core.train import (
    PRESETS,
    Example,
    TrainConfig,
    estimate_seconds,
    format_duration,
    help_for,
    preflight,
    prepare_examples,
    short_duration,
    with_system_prompt,
)
from views import common
from views.common import markdown_escape

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "persona.jsonl"
NONE = "-"  # a metric with no value yet
STATE_ICONS = {
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/pause_circle:",
}

settings = common.get_settings()
st.title("Fine-tune")
st.caption(
    "Teach the model a behaviour from examples: a tone, an answer format, a persona. The base "
    "model is not changed; what it learns is kept as a small LoRA adapter that you can switch on."
)


def config_from_state() -> TrainConfig:
    return TrainConfig(**{f.name: st.session_state[f"ft_{f.name}"] for f in fields(TrainConfig)})


def apply_preset() -> None:
    """Runs before the widgets: the Advanced fields take the chosen preset's values."""
    key = st.session_state["ft_preset"] or "quick"
    st.session_state["ft_preset"] = key
    for name, value in asdict(PRESETS[key].config).items():
        st.session_state[f"ft_{name}"] = value


def loss_chart(train_loss: list, eval_loss: list) -> None:
    rows = [{"Step": s, "Loss": v, "Curve": "Training"} for s, v in train_loss]
    rows += [{"Step": s, "Loss": v, "Curve": "Held-out"} for s, v in eval_loss]
    if rows:
        st.line_chart(pd.DataFrame(rows), x="Step", y="Loss", color="Curve", height=220)
    else:
        st.caption("The loss curve appears after the first step.")


@st.cache_data(show_spinner=False, max_entries=4)
def parse(name: str, digest: str, _data: bytes) -> Dataset:
    return parse_dataset(name, _data)


@st.cache_data(show_spinner=False, max_entries=4)
def prepare(
    digest: str, max_length: int, system_prompt: str, _dataset: Dataset, _tokenizer: Any
) -> list[Example]:
    """The examples tokenised once per dataset, maximum length and system prompt, not on every
    click (thousands of rows take seconds)."""
    return prepare_examples(_dataset.examples, _tokenizer, max_length, system_prompt)


# -- a run in progress, or the last one ----------------------------------------------------------


def show_run(run_id: str) -> None:
    run = jobs.read(jobs.runs_dir(settings) / run_id)
    with st.container(border=True):
        icon = STATE_ICONS.get(run.state, ":material/model_training:")
        st.markdown(f"#### {icon} {markdown_escape(run.name)}")
        if run.active:
            label = f"{run.message or 'Starting'}"
            if run.total_steps:
                label += f" · step {run.step} of {run.total_steps}"
            st.progress(run.fraction, text=label)
        elif run.state == "completed":
            st.success(
                f"Finished in {format_duration(run.elapsed_s)}. Ask the tuned model something "
                "in Try it, just below, and see it answer beside the base model.",
                icon=STATE_ICONS["completed"],
            )
        elif run.state == "failed":
            st.error(run.error or run.message, icon=STATE_ICONS["failed"])
        elif run.state == "interrupted":
            st.warning(
                run.message
                + (
                    " It can carry on from its last checkpoint."
                    if run.can_resume
                    else " It had not saved a checkpoint yet: start it again."
                ),
                icon=STATE_ICONS["interrupted"],
            )
        else:
            st.info(run.message, icon=STATE_ICONS.get(run.state))
        cells = st.columns(6)
        epochs = f"{run.epoch:.1f} of {run.total_epochs:g}" if run.total_epochs else NONE
        cells[0].metric("Pass over the data", epochs)
        last_train = run.train_loss[-1][1] if run.train_loss else None
        cells[1].metric("Training loss", f"{last_train:.3f}" if last_train is not None else NONE)
        if run.eval_loss:
            first, last = run.eval_loss[0][1], run.eval_loss[-1][1]
            cells[2].metric(
                "Held-out loss",
                f"{last:.3f}",
                delta=f"{last - first:+.3f}" if len(run.eval_loss) > 1 else None,
                delta_color="inverse",
                help="Loss on examples kept out of training: falling means the model learns "
                "the pattern, not just the examples.",
            )
        else:
            cells[2].metric("Held-out loss", NONE)
        speed = f"{run.tokens_per_s:,.0f}" if run.tokens_per_s else NONE
        cells[3].metric("Tokens/s", speed)
        cells[4].metric("Elapsed", short_duration(run.elapsed_s))
        left = short_duration(run.eta_s) if run.active and run.eta_s is not None else NONE
        cells[5].metric("Time left", left)
        loss_chart(run.train_loss, run.eval_loss)
        if run.active:
            cancelling = run.state == "cancelling" or (run.folder / runs.CANCEL_FILE).exists()
            if st.button(
                "Cancelling…" if cancelling else "Cancel training",
                key=f"ft_cancel_{run_id}",
                icon=":material/stop_circle:",
                disabled=cancelling,
            ):
                jobs.cancel(settings, run_id)
                st.rerun()
        elif run.can_resume and st.button(
            "Resume from the last checkpoint", key=f"ft_resume_{run_id}", icon=":material/replay:"
        ):
            try:
                jobs.resume(settings, run_id)
            except StudioError as error:
                st.error(common.markdown_escape(error))
            else:
                st.rerun()
    if not run.active and st.session_state.get("ft_watching") == run_id:
        st.session_state["ft_watching"] = None
        st.rerun()  # the whole page: the new adapter and the "Try it" box appear


live_run = st.fragment(run_every=1.0)(show_run)

latest = jobs.latest_run(settings)
shown = None
if latest is not None and (
    latest.active or latest.run_id == st.session_state["ft_run_id"] or latest.state == "interrupted"
):
    shown = latest
if shown is not None:
    st.subheader("Training")
    if shown.active:
        # Adopted, even if another session or an earlier server started it: its end shows here.
        st.session_state["ft_run_id"] = st.session_state["ft_watching"] = shown.run_id
        live_run(shown.run_id)
    else:
        show_run(shown.run_id)


def new_run() -> None:
    """Steps 1-3: the data, the settings, the start button."""
    # -- step 1: data
    st.subheader("1. Your examples")
    upload_column, example_column = st.columns([3, 1], vertical_alignment="center")
    upload = upload_column.file_uploader(
        "Drop a dataset: JSONL, JSON or CSV",
        type=["jsonl", "json", "csv"],
        key=f"ft_upload_{st.session_state['ft_upload_round']}",
        max_upload_size=settings.max_upload_mb,
        help="Recognised shapes: " + "; ".join(SHAPES.values()) + ".",
    )
    if example_column.button(
        "Try with an example", key="ft_example", icon=":material/auto_awesome:", width="stretch"
    ):
        st.session_state["ft_data"] = {
            "name": EXAMPLE.name,
            "data": EXAMPLE.read_bytes(),
            "source": "example",
        }
        st.session_state["ft_upload_round"] += 1
        st.rerun()
    if upload is not None:
        st.session_state["ft_data"] = {
            "name": upload.name,
            "data": upload.getvalue(),
            "source": "upload",
        }
    elif (st.session_state["ft_data"] or {}).get("source") == "upload":
        st.session_state["ft_data"] = None  # the user removed the file

    chosen = st.session_state["ft_data"]
    if chosen is None:
        st.info(
            "Each example is a question and the answer you want, for example a JSONL line "
            '`{"instruction": "What is your name?", "output": "I am Captain Lumen."}`. '
            "About a hundred examples of one behaviour are enough to see it learned. No data at "
            "hand? **Try with an example**: 106 examples that give the assistant a new name.",
            icon=":material/dataset:",
        )
        return

    if chosen["source"] == "example":
        st.caption(
            f"Example dataset **{chosen['name']}**: the assistant learns to call itself "
            "Captain Lumen."
        )
    try:
        digest = hashlib.sha256(chosen["data"]).hexdigest()
        dataset = parse(chosen["name"], digest, chosen["data"])
    except StudioError as error:
        st.error(f"**{markdown_escape(chosen['name'])}**: {error}", icon=":material/error:")
        return

    if dataset.problems:
        shown_problems = dataset.problems[:5]
        more = len(dataset.problems) - len(shown_problems)
        st.error(
            f"**{markdown_escape(dataset.name)}** has problems; fix them and upload it again. "
            "Training cannot start until then.\n\n"
            + "\n".join(f"- {markdown_escape(str(p))}" for p in shown_problems)
            + (f"\n- … and {more} more" if more > 0 else ""),
            icon=":material/error:",
        )
        return

    tokenizer = common.tokenizer(settings)
    config = config_from_state()
    system_prompt = st.session_state["ft_system_prompt"]
    examples = prepare(digest, config.max_length, system_prompt, dataset, tokenizer)
    stats = summarise(
        [e.full_length for e in examples],
        sum(e.answer_tokens for e in examples),
        config.max_length,
    )
    st.success(
        f"**{markdown_escape(dataset.name)}**: {stats.rows} examples, recognised as "
        f"{SHAPES[dataset.shape]}.",
        icon=":material/check:",
    )
    cells = st.columns(5)
    cells[0].metric("Examples", stats.rows)
    cells[1].metric(
        "Tokens", f"{stats.total_tokens:,}", help="All tokens the model reads per pass."
    )
    cells[2].metric(
        "Answer tokens", f"{stats.answer_tokens:,}", help="The tokens it learns to write."
    )
    cells[3].metric("Median length", f"{stats.median} tokens")
    cells[4].metric("Longest", f"{stats.longest} tokens")
    with st.expander(
        "Preview: the first examples exactly as the model sees them", icon=":material/visibility:"
    ):
        st.caption(
            "Through the model's own chat template. The model learns to write the assistant's "
            "parts; the rest is context."
        )
        for number, messages in enumerate(dataset.examples[:3], start=1):
            st.markdown(f"**Example {number}** (line {dataset.lines[number - 1]})")
            st.code(render(with_system_prompt(messages, system_prompt), tokenizer), language=None)

    # -- step 2: settings
    st.subheader("2. How thoroughly to train")
    check = preflight(examples, config)
    try:
        with st.spinner("Measuring how fast this machine trains (once)…", show_time=True):
            speed: float | None = jobs.measure_speed(settings)
    except StudioError:
        speed = None

    def preset_label(key: str) -> str:
        preset = PRESETS[key]
        if speed is None:
            return preset.label
        seconds = estimate_seconds(preflight(examples, preset.config), preset.config, speed)
        return f"{preset.label} · about {format_duration(seconds)}"

    st.radio(
        "Preset",
        list(PRESETS),
        format_func=preset_label,
        captions=[p.description for p in PRESETS.values()],
        horizontal=True,
        key="ft_preset",
        on_change=apply_preset,
        label_visibility="collapsed",
    )
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

    for blocker in check.blockers:
        st.error(blocker, icon=":material/block:")
    for warning in check.warnings:
        st.warning(warning, icon=":material/warning:")
    if speed is not None and not check.blockers:
        estimate = format_duration(estimate_seconds(check, config, speed))
        st.caption(
            f"{check.train_rows} examples train, {check.eval_rows} are held out. Estimated "
            f"duration on {common.device_text(settings)}: about {estimate}."
        )

    # -- step 3: train
    st.subheader("3. Train")
    default_name = f"{Path(dataset.name).stem} ({PRESETS[st.session_state['ft_preset']].label})"
    name = st.text_input("Adapter name", placeholder=default_name, key="ft_name")
    active = jobs.active_run(settings)
    if active is not None:
        st.info(
            f"A training run is in progress ('{markdown_escape(active.name)}'): one run at a time. "
            "Start this one when it has finished, or cancel it above.",
            icon=":material/hourglass_top:",
        )
    if st.button(
        "Start training",
        key="ft_start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=bool(check.blockers) or active is not None,
    ):
        try:
            run = jobs.start(
                settings,
                dataset,
                config,
                name=name or default_name,
                preset=st.session_state["ft_preset"],
                system_prompt=system_prompt,
            )
        except StudioError as error:
            st.error(common.markdown_escape(error), icon=":material/error:")
        else:
            st.session_state["ft_run_id"] = run.run_id
            st.rerun()


def try_it(choices: list[adapters.AdapterInfo]) -> None:
    """One question, the base answer beside the tuned answer."""
    st.subheader("Try it")
    by_id = {a.run_id: a for a in choices}
    if st.session_state.get("ft_try_adapter") not in by_id:
        st.session_state["ft_try_adapter"] = choices[0].run_id
    picked = by_id[
        st.selectbox(
            "Adapter",
            list(by_id),
            format_func=lambda run_id: by_id[run_id].name,
            key="ft_try_adapter",
        )
    ]
    with st.form("ft_try_form", border=False):
        question_column, ask_column = st.columns([5, 1], vertical_alignment="bottom")
        question = question_column.text_input(
            "Question", key="ft_try_question", placeholder="What is your name?"
        )
        asked = ask_column.form_submit_button("Ask both", icon=":material/send:", width="stretch")
    if not asked:
        st.caption(
            "Ask something your examples teach, and see the base model and the tuned model "
            "answer the same question with the same settings."
        )
        return
    if not question.strip():
        st.warning("Type a question first.")
        return
    conversation = [{"role": "user", "content": question.strip()}]
    model = common.chat_model(settings)
    try:
        with st.spinner("Loading the adapter…"):
            adapters.attach(model, settings, picked.run_id)
        streams = model.stream_many(
            [
                ChatRequest(conversation, picked.system_prompt),
                ChatRequest(conversation, picked.system_prompt, picked.run_id),
            ],
            common.sampling_params(),
        )
    except StudioError as error:
        st.error(common.markdown_escape(error), icon=":material/error:")
        return
    columns = st.columns(2, border=True)
    slots = []
    for column, label in zip(columns, ("Base model", f"Tuned: {picked.name}"), strict=True):
        column.markdown(f"**{markdown_escape(label)}**")
        slots.append(column.empty())
    errors = common.stream_side_by_side(slots, streams)
    for column, stream, error in zip(columns, streams, errors, strict=True):
        if error:
            column.error(error, icon=":material/error:")
        elif stream.answer is not None:
            column.caption(stream.answer.timings.summary())


def adapter_card(adapter: adapters.AdapterInfo) -> None:
    key = adapter.run_id
    with st.container(border=True):
        title, badge = st.columns([4, 1])
        title.markdown(f"**{markdown_escape(adapter.name)}**")
        if not adapter.compatible:
            badge.badge("Incompatible", icon=":material/block:", color="red")
        when = datetime.fromtimestamp(adapter.created).strftime("%Y-%m-%d %H:%M")
        loss = (
            f" · held-out loss {adapter.final_eval_loss:.3f}"
            if adapter.final_eval_loss is not None
            else ""
        )
        st.caption(
            f"{when} · from {markdown_escape(adapter.dataset_name)} · "
            f"{PRESETS[adapter.preset].label if adapter.preset in PRESETS else 'custom'} · "
            f"trained in {format_duration(adapter.duration_s)} · "
            f"{adapter.size_bytes / 1e6:.1f} MB{loss}"
        )
        if not adapter.compatible:
            st.caption(markdown_escape(adapter.incompatibility))
        with st.expander("Loss curve", icon=":material/show_chart:"):
            loss_chart(adapter.train_loss, adapter.eval_loss)
        rename, download, delete = st.columns(3)
        with rename.popover("Rename", icon=":material/edit:", width="stretch"):
            new_name = st.text_input("New name", value=adapter.name, key=f"ft_rename_to_{key}")
            if st.button("Rename", key=f"ft_rename_{key}", type="primary"):
                try:
                    adapters.rename(settings, key, new_name)
                except StudioError as error:
                    st.error(common.markdown_escape(error))
                else:
                    st.rerun()
        download.download_button(
            "Download (.zip)",
            data=lambda: adapters.zip_bytes(settings, key),
            file_name=f"adapter-{key}.zip",
            mime="application/zip",
            key=f"ft_download_{key}",
            icon=":material/download:",
            on_click="ignore",
            width="stretch",
        )
        with delete.popover("Delete", icon=":material/delete:", width="stretch"):
            sure = st.checkbox(
                f"Yes, delete '{markdown_escape(adapter.name)}'", key=f"ft_delete_sure_{key}"
            )
            if st.button("Delete adapter", key=f"ft_delete_{key}", disabled=not sure):
                adapters.delete(settings, key)
                st.toast(
                    f"Deleted the adapter '{markdown_escape(adapter.name)}'.",
                    icon=":material/delete:",
                )
                st.rerun()


finished = adapters.list_adapters(settings)
usable = [a for a in finished if a.compatible]
if usable:  # right below the run that made the adapter, above the steps to train another
    try_it(usable)
new_run()
st.subheader(f"Your adapters ({len(finished)})")
if not finished:
    st.caption("Adapters you train appear here, with their loss curves.")
for adapter in finished:
    adapter_card(adapter)

unfinished = [r for r in jobs.all_runs(settings) if not r.active and r.state != "completed"]
if unfinished:
    with st.expander(f"Unfinished runs ({len(unfinished)})", icon=":material/history:"):
        for run in unfinished:
            text, resume, remove = st.columns([4, 1, 1], vertical_alignment="center")
            text.markdown(
                f"{STATE_ICONS.get(run.state, '')} **{markdown_escape(run.name)}**: "
                f"{markdown_escape(run.error or run.message)}"
            )
            if run.can_resume and resume.button("Resume", key=f"ft_resume_old_{run.run_id}"):
                try:
                    jobs.resume(settings, run.run_id)
                except StudioError as error:
                    st.error(common.markdown_escape(error))
                else:
                    st.session_state["ft_run_id"] = run.run_id
                    st.rerun()
            if remove.button("Delete", key=f"ft_delete_run_{run.run_id}"):
                jobs.delete_run(settings, run.run_id)
                st.rerun()
