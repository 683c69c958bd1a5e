"""The Evaluate page's report: live progress, the recommendation, the charts, every question's
answers, the exports and the freshness check."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.answering.modes import MODES
from core.errors import StudioError
from core.evaluation import freshness, report, runner
from core.evaluation.results import REASONS, Report
from core.training import adapters
from core.wording import short_duration
from views.support import resources, widgets
from views.support.resources import Studio
from views.support.widgets import markdown_escape

STATE_TEXT = {
    "completed": ("Finished", ":material/check_circle:"),
    "cancelled": ("Cancelled", ":material/cancel:"),
    "interrupted": ("Interrupted (the app stopped)", ":material/pause_circle:"),
    "failed": ("Stopped on a problem", ":material/error:"),
    "running": ("Running", ":material/hourglass_top:"),
}


def open_report(report_id: str | None) -> None:
    st.session_state["eval_report_id"] = report_id
    if report_id:
        st.query_params["report"] = report_id  # the page's link opens this report
    else:
        st.query_params.pop("report", None)


@st.fragment(run_every=1.0)
def live_progress(report_id: str) -> None:
    live = runner.running_report(report_id)
    if live is None:
        st.rerun()  # finished: the whole page shows the report
        return
    done, total = live.done, live.total
    per_question = live.elapsed_s / done if done else None
    left = f" · about {short_duration(per_question * (total - done))} left" if per_question else ""
    text = (
        f"{done} of {total} questions answered{left}"
        if done
        else f"Answering the first questions in all {len(live.modes)} modes…"
    )
    st.progress(done / total if total else 0.0, text=text)
    if st.button("Cancel", key="eval_cancel", icon=":material/stop_circle:"):
        runner.cancel(report_id)
        st.toast("Cancelling after the current questions…")


def show_answers(shown: Report, number: int) -> None:
    result = shown.results[number]
    st.markdown(f"**Question:** {markdown_escape(result.question)}")
    accepted = [result.reference, *result.accepted]
    st.markdown(
        "**Right answer:** " + " or ".join(markdown_escape(a) for a in accepted if a.strip())
    )
    if result.retrieval_hit is not None:
        st.caption(
            "The retrieved passages contained the answer."
            if result.retrieval_hit
            else "The retrieved passages did not contain the answer."
        )
    columns = st.columns(len(shown.modes), border=True)
    for column, mode in zip(columns, shown.modes, strict=True):
        answer = result.answers[mode]
        with column:
            st.markdown(f"**{MODES[mode].label}**")
            if result.correct(mode):
                st.badge("Right", icon=":material/check:", color="green")
            else:
                st.badge("Wrong", icon=":material/close:", color="red")
            if answer.error:
                st.error(answer.error, icon=":material/error:")
            st.markdown(widgets.answer_markdown(answer.text) or "-")
            if mode in result.reasons:
                st.caption(REASONS[result.reasons[mode]][1])
            if MODES[mode].uses_passages and result.passages:
                widgets.sources(result.passages)


def show_freshness(ctx: Studio, shown: Report) -> None:
    st.subheader("Freshness check")
    st.caption(
        "Facts change. Change one answer in (a copy of) your documents and ask again: RAG should "
        "follow at once, a fine-tuned model keeps what it learned until it is trained again. "
        "Your knowledge base itself is not changed."
    )
    if ctx.settings.read_only:
        show_freshness_result(shown)
        return
    if not shown.knowledge_base:
        st.info("Choose a knowledge base for the evaluation to run this check.")
        return
    if shown.knowledge_base not in ctx.kb_names:
        st.warning(
            f"The knowledge base '{markdown_escape(shown.knowledge_base)}' no longer exists."
        )
        return
    choices = freshness.candidates(shown)
    if not choices:
        st.info(
            "No question qualifies yet: the check needs one that RAG answered right, with the "
            "answer written in a retrieved passage, so that changing that passage shows "
            "something. Add the documents that answer your questions, or questions that your "
            "documents answer, and evaluate again.",
            icon=":material/info:",
        )
        show_freshness_result(shown)
        return
    left, middle, right = st.columns([4, 2, 1.4], vertical_alignment="bottom")
    index = left.selectbox(
        "Question",
        choices,
        format_func=lambda i: f"{i + 1}. {shown.results[i].question}",
        key=f"eval_fresh_q_{shown.id}",
        help="Only questions that RAG answered right from a passage that states the answer: "
        "changing that passage shows whether each mode follows. Those the fine-tuned model "
        "also got right come first.",
    )
    if index is None:
        return
    new = middle.text_input(
        f"New answer instead of '{markdown_escape(shown.results[index].reference)}'",
        value=freshness.suggest(shown.results[index].reference),
        key=f"eval_fresh_new_{shown.id}_{index}",
    )
    if right.button(
        "Run the check", key="eval_fresh_run", icon=":material/published_with_changes:"
    ):
        try:
            with st.spinner("Changing the fact in a copy of the documents and asking again…"):
                model = resources.chat_model(ctx.settings)
                freshness.check(
                    ctx.settings, model, ctx.store.open(shown.knowledge_base), shown, index, new
                )
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
            return
        st.rerun()
    show_freshness_result(shown)


def show_freshness_result(shown: Report) -> None:
    if shown.freshness:
        found = freshness.from_dict(shown.freshness)
        st.markdown(
            f"**{markdown_escape(found.question)}** — changed "
            f"'{markdown_escape(found.old_answer)}' to '{markdown_escape(found.new_answer)}' in "
            + ", ".join(markdown_escape(c) for c in found.edited)
        )
        columns = st.columns(len(found.answers), border=True)
        for column, (mode, text) in zip(columns, found.answers.items(), strict=True):
            with column:
                st.markdown(f"**{MODES[mode].label}**")
                follows = found.follows[mode]
                if follows == "new":
                    st.badge("Follows the change", icon=":material/check:", color="green")
                elif follows == "old":
                    st.badge("Says the old fact", icon=":material/history:", color="orange")
                else:
                    st.badge("Neither", icon=":material/help:", color="gray")
                st.markdown(widgets.answer_markdown(text) or "-")
        for line in found.summary:
            st.markdown(f"- {markdown_escape(line)}")


def run_state(ctx: Studio, shown: Report, state: str) -> None:
    """Why a run stopped, Resume, and a warning about questions the adapter trained on."""
    if state == "failed":
        st.error(shown.error, icon=STATE_TEXT[state][1])
    if (
        not ctx.settings.read_only
        and state in ("cancelled", "interrupted", "failed")
        and shown.done < shown.total
        and st.button(
            f"Resume ({shown.total - shown.done} questions left)",
            key="eval_resume",
            icon=":material/replay:",
        )
    ):
        start(ctx, shown)
    if shown.seen_in_training:
        count = len(shown.seen_in_training)
        numbers = ", ".join(str(i + 1) for i in shown.seen_in_training[:20])
        st.warning(
            f"{count} of the questions (number {numbers}) {'is' if count == 1 else 'are'} in "
            "the adapter's training data: on those its score shows what it memorised, not what "
            "it learned.",
            icon=":material/content_copy:",
        )


def show_verdict(shown: Report) -> None:
    """The recommendation, its cautions and costs, the charts and the score table."""
    found = report.verdict(shown)
    rec = found.recommendation
    with st.container(border=True):
        st.markdown(f"#### {markdown_escape(rec.headline)}")
        for line in rec.reasons:
            st.markdown(f"- {markdown_escape(line)}")
    for caution in rec.cautions:
        st.warning(caution, icon=":material/info:")
    if found.costs:
        with st.expander("What each option costs", icon=":material/payments:", expanded=True):
            for line in found.costs:
                st.markdown(f"- {markdown_escape(line)}")
    left, right = st.columns(2)
    left.altair_chart(report.correctness_chart(found.summaries), key="eval_chart_correct")
    right.altair_chart(report.latency_chart(found.summaries), key="eval_chart_time")
    st.dataframe(report.score_rows(found.summaries), hide_index=True, key="eval_scores")


def every_question(shown: Report) -> None:
    """A row per question with each mode's mark, and one question's answers in full."""
    st.markdown("**Every question**")
    table = pd.DataFrame(
        [
            {
                "#": n,
                "Question": r.question,
                "Reference": r.reference,
                **{MODES[m].label: report.mark(r, m) for m in shown.modes},
            }
            for n, r in enumerate(shown.results, 1)
        ]
    )
    st.dataframe(table, hide_index=True, key="eval_questions")
    number = st.selectbox(
        "See the answers to question",
        range(shown.done),
        format_func=lambda i: f"{i + 1}. {shown.results[i].question}",
        key=f"eval_detail_{shown.id}",
    )
    if number is not None:
        show_answers(shown, number)


EXPORTS: list[widgets.Export] = [
    ("HTML", report.to_html, "html", "text/html", ":material/html:"),
    ("Markdown", report.to_markdown, "md", "text/markdown", ":material/download:"),
]


def show_report(ctx: Studio, shown: Report) -> None:
    state = runner.status(shown)
    text, _ = STATE_TEXT[state]
    st.subheader(markdown_escape(shown.name))
    st.caption(
        f"{text} · {shown.done} of {shown.total} questions · {len(shown.modes)} modes · "
        f"{short_duration(shown.elapsed_s)} of answering"
    )
    if state == "running":
        live_progress(shown.id)
        return
    run_state(ctx, shown, state)
    if not shown.results:
        st.info("No question has been answered yet.")
        return
    show_verdict(shown)
    every_question(shown)
    widgets.download_buttons(shown, EXPORTS, f"evaluation-{shown.id}", "eval_export")
    if not ctx.settings.read_only or shown.freshness:
        show_freshness(ctx, shown)


def start(ctx: Studio, shown: Report) -> None:
    """Start (or resume) the report's run in the background."""
    try:
        model = resources.chat_model(ctx.settings)
        kb = ctx.store.open(shown.knowledge_base) if shown.knowledge_base else None
        if shown.adapter:
            with st.spinner("Loading the adapter…"):
                adapters.attach(model, ctx.settings, shown.adapter)
        runner.start(ctx.settings, model, shown, kb)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    open_report(shown.id)
    st.rerun()
