"""The Fine-tune page's training run: live progress, metrics, the loss curve, Cancel and
Resume, and the runs that did not finish."""

from __future__ import annotations

import contextlib

import pandas as pd
import streamlit as st

from core.answering.modes import asked_question
from core.errors import StudioError
from core.settings import Settings
from core.training import adapters, jobs, run_folder
from core.training.check import Check
from core.wording import format_duration, short_duration
from views.support.widgets import markdown_escape

NONE = "-"  # a metric with no value yet
STATE_ICONS = {
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/pause_circle:",
}


def loss_chart(train_loss: list, eval_loss: list) -> None:
    rows = [{"Step": s, "Loss": v, "Curve": "Training"} for s, v in train_loss]
    rows += [{"Step": s, "Loss": v, "Curve": "Held-out"} for s, v in eval_loss]
    if rows:
        st.line_chart(pd.DataFrame(rows), x="Step", y="Loss", color="Curve", height=220)
    else:
        st.caption("The loss curve appears after the first step.")


def check_panel(checked: Check | None, compact: bool = False) -> None:
    """The after-training check in one sentence, and one held-out question with the base and
    the tuned model's answers side by side (in an expander when `compact`)."""
    if checked is None:
        return
    sentence = markdown_escape(checked.sentence)
    if compact:
        st.caption(sentence)
    elif checked.took:
        st.success(sentence, icon=":material/fact_check:")
    else:
        st.warning(sentence, icon=":material/fact_check:")
    with (
        st.expander("A held-out example", icon=":material/compare:") if compact else st.container()
    ):
        # An adapter trained to read documents was asked the reading modes' whole message:
        # the question is its last line.
        question = asked_question(checked.question)
        st.markdown(f"**Held-out question:** {markdown_escape(question)}")
        base, tuned = st.columns(2, border=True)
        base.markdown("**Base model**")
        base.markdown(markdown_escape(checked.base_answer) or "*(no answer)*")
        tuned.markdown("**Tuned model**")
        tuned.markdown(markdown_escape(checked.tuned_answer) or "*(no answer)*")
        st.caption(f"Your example's answer: {markdown_escape(checked.expected)}")


def run_message(run: jobs.RunStatus) -> None:
    """Progress while it runs, else how it ended, in plain words."""
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


def run_metrics(run: jobs.RunStatus) -> None:
    """Six tiles: passes, losses, speed, time spent and left."""
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


def run_buttons(settings: Settings, run: jobs.RunStatus) -> None:
    """Cancel while it runs; Resume when it stopped with a checkpoint."""
    run_id = run.run_id
    if run.active:
        cancelling = run.state == "cancelling" or (run.folder / run_folder.CANCEL_FILE).exists()
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
            st.error(markdown_escape(error))
        else:
            st.rerun()


def show_run(settings: Settings, run_id: str) -> None:
    run = jobs.read(jobs.runs_dir(settings) / run_id)
    with st.container(border=True):
        icon = STATE_ICONS.get(run.state, ":material/model_training:")
        st.markdown(f"#### {icon} {markdown_escape(run.name)}")
        run_message(run)
        if run.state == "completed":
            with contextlib.suppress(StudioError):  # an adapter deleted since
                check_panel(adapters.get(settings, run_id).check)
        run_metrics(run)
        loss_chart(run.train_loss, run.eval_loss)
        run_buttons(settings, run)
    if not run.active and st.session_state.get("ft_watching") == run_id:
        st.session_state["ft_watching"] = None
        st.rerun()  # the whole page: the new adapter and the "Try it" box appear


live_run = st.fragment(run_every=1.0)(show_run)


def show_training(settings: Settings) -> None:
    """The run in progress, or the one this session started, or one the app stopped."""
    latest = jobs.latest_run(settings)
    shown = None
    if latest is not None and (
        latest.active
        or latest.run_id == st.session_state["ft_run_id"]
        or latest.state == "interrupted"
    ):
        shown = latest
    if shown is not None:
        st.subheader("Training")
        if shown.active:
            # Adopted, even if another session or an earlier server started it: its end shows here.
            st.session_state["ft_run_id"] = st.session_state["ft_watching"] = shown.run_id
            live_run(settings, shown.run_id)
        else:
            show_run(settings, shown.run_id)


def unfinished_runs(settings: Settings) -> None:
    """Runs that failed, were cancelled or were stopped: resume or delete them."""
    unfinished = [r for r in jobs.all_runs(settings) if not r.active and r.state != "completed"]
    if not unfinished:
        return
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
                    st.error(markdown_escape(error))
                else:
                    st.session_state["ft_run_id"] = run.run_id
                    st.rerun()
            if remove.button("Delete", key=f"ft_delete_run_{run.run_id}"):
                jobs.delete_run(settings, run.run_id)
                st.rerun()
