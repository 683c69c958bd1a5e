"""Evaluate: score the four modes on your own questions and get a recommendation."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from core.errors import StudioError
from core.evaluation import runner
from core.evaluation.results import Report
from views.panels import evaluate_new, evaluate_report
from views.panels.evaluate_report import STATE_TEXT, open_report
from views.support import resources
from views.support.resources import Studio
from views.support.widgets import markdown_escape


def saved_reports(ctx: Studio) -> list[Report]:
    """The saved evaluations, each to open or delete."""
    saved = runner.list_reports(ctx.settings)
    if not saved:
        return saved
    with st.expander(f"Saved evaluations ({len(saved)})", icon=":material/history:"):
        for old in saved[:30]:
            when = datetime.fromtimestamp(old.created).strftime("%d %b %Y, %H:%M")
            text, icon = STATE_TEXT[runner.status(old)]
            label, open_column, delete_column = st.columns([6, 1, 1], vertical_alignment="center")
            if ctx.settings.read_only:
                delete_column = None
            label.markdown(
                f"{icon} **{markdown_escape(old.name)}** · {when} · {old.done} of {old.total} "
                f"questions · {text.lower()}"
            )
            if open_column.button("Open", key=f"eval_open_{old.id}", width="stretch"):
                open_report(old.id)
                st.rerun()
            if delete_column is not None and delete_column.button(
                "Delete", key=f"eval_delete_{old.id}", icon=":material/delete:", width="stretch"
            ):
                try:
                    runner.delete(ctx.settings, old.id)
                except StudioError as error:
                    st.error(markdown_escape(error))
                else:
                    if st.session_state["eval_report_id"] == old.id:
                        open_report(None)
                    st.rerun()

    return saved


def current_report(ctx: Studio) -> Report | None:
    """The evaluation this session looks at (a link may name it), running or saved."""
    linked = st.query_params.get("report")
    if linked and linked != st.session_state["eval_report_id"]:
        st.session_state["eval_report_id"] = linked  # opened by a link (?report=<id>)
    report_id = st.session_state["eval_report_id"]
    current = None
    if report_id:
        current = runner.running_report(report_id)
        if current is None:
            try:
                current = runner.load(ctx.settings, report_id)
            except StudioError:
                st.warning("The evaluation in this link was not found.", icon=":material/link_off:")
                open_report(None)
    return current


def main() -> None:
    settings = resources.get_settings()
    st.title("Evaluate")
    st.caption(
        "Fine-tune or RAG? Ask your own questions with known answers in all four modes, see "
        "which answers are right, and get a recommendation in plain words."
    )
    ctx = resources.studio(settings)
    saved = saved_reports(ctx)
    current = current_report(ctx)
    if current is not None:
        if not ctx.settings.read_only and st.button(
            "New evaluation", key="eval_new", icon=":material/add:"
        ):
            open_report(None)
            st.rerun()
        evaluate_report.show_report(ctx, current)
    elif ctx.settings.read_only:
        st.info(
            "Open one of the saved evaluations above to see its scores and recommendation."
            if saved
            else "This demo has no saved evaluation.",
            icon=":material/fact_check:",
        )
    else:
        evaluate_new.new_evaluation(ctx)


main()
