"""Evaluate: score the four modes on your own questions and get a recommendation."""

from datetime import datetime

import pandas as pd
import streamlit as st

from core import adapters, evalset, evaluate, freshness, report
from core.arena import MODES
from core.errors import StudioError
from core.evalset import EvalItem
from core.evaluate import REASONS, Report
from core.generate import SamplingParams
from core.train import short_duration
from views import common
from views.common import markdown_escape

STATE_TEXT = {
    "completed": ("Finished", ":material/check_circle:"),
    "cancelled": ("Cancelled", ":material/cancel:"),
    "interrupted": ("Interrupted (the app stopped)", ":material/pause_circle:"),
    "failed": ("Stopped on a problem", ":material/error:"),
    "running": ("Running", ":material/hourglass_top:"),
}
SOURCES = {
    "upload": "Upload a file",
    "generate": "Generate from the knowledge base",
    "held_out": "Held-out fine-tune examples",
}
COLUMNS = {"question": "Question", "reference": "Reference answer", "accepted": "Also accepted"}

settings = common.get_settings()
st.title("Evaluate")
st.caption(
    "Fine-tune or RAG? Ask your own questions with known answers in all four modes, see which "
    "answers are right, and get a recommendation in plain words."
)
store = common.knowledge_store(settings)
adapter_list = [a for a in adapters.list_adapters(settings) if a.compatible]
by_adapter = {a.run_id: a for a in adapter_list}
kb_names = store.names()


def set_items(items: list[EvalItem], source: str) -> None:
    st.session_state["eval_items"] = [
        {"question": i.question, "reference": i.reference, "accepted": " | ".join(i.accepted)}
        for i in items
    ]
    st.session_state["eval_source"] = source
    st.session_state["eval_round"] += 1  # a fresh editor for the new questions


def edited_items() -> list[EvalItem]:
    """The questions as the user left them in the editor; rows without a question are dropped."""
    frame = st.session_state.get("eval_frame")
    if frame is None:
        return []
    items = []
    for row in frame.to_dict("records"):
        question = str(row.get("question") or "").strip()
        accepted = evalset.split_accepted(str(row.get("accepted") or ""))
        reference = str(row.get("reference") or "").strip()
        if question and (reference or accepted):
            items.append(EvalItem(question, reference, accepted))
    return items


def open_report(report_id: str | None) -> None:
    st.session_state["eval_report_id"] = report_id
    if report_id:
        st.query_params["report"] = report_id  # the page's link opens this report
    else:
        st.query_params.pop("report", None)


read_only = settings.read_only
linked = st.query_params.get("report")
if linked and linked != st.session_state["eval_report_id"]:
    st.session_state["eval_report_id"] = linked  # opened by a link (?report=<id>)


# -- saved reports ---------------------------------------------------------------------------------
saved = evaluate.list_reports(settings)
if saved:
    with st.expander(f"Saved evaluations ({len(saved)})", icon=":material/history:"):
        for old in saved[:30]:
            when = datetime.fromtimestamp(old.created).strftime("%d %b %Y, %H:%M")
            text, icon = STATE_TEXT[evaluate.status(old)]
            label, open_column, delete_column = st.columns([6, 1, 1], vertical_alignment="center")
            if read_only:
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
                    evaluate.delete(settings, old.id)
                except StudioError as error:
                    st.error(common.markdown_escape(error))
                else:
                    if st.session_state["eval_report_id"] == old.id:
                        open_report(None)
                    st.rerun()


# -- a report ------------------------------------------------------------------------------------
def show_progress(report_id: str) -> None:
    live = evaluate.running_report(report_id)
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
        evaluate.cancel(report_id)
        st.toast("Cancelling after the current questions…")


live_progress = st.fragment(run_every=1.0)(show_progress)


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
            st.markdown(common.answer_markdown(answer.text) or "-")
            if mode in result.reasons:
                st.caption(REASONS[result.reasons[mode]][1])
            if MODES[mode].uses_passages and result.passages:
                with st.expander(f"Sources ({len(result.passages)})", icon=":material/menu_book:"):
                    for n, passage in enumerate(result.passages, 1):
                        st.markdown(f"**[{n}] {markdown_escape(passage['citation'])}**")
                        st.markdown(markdown_escape(passage["text"]))


def show_freshness(shown: Report) -> None:
    st.subheader("Freshness check")
    st.caption(
        "Facts change. Change one answer in (a copy of) your documents and ask again: RAG should "
        "follow at once, a fine-tuned model keeps what it learned until it is trained again. "
        "Your knowledge base itself is not changed."
    )
    if read_only:
        show_freshness_result(shown)
        return
    if not shown.knowledge_base:
        st.info("Choose a knowledge base for the evaluation to run this check.")
        return
    if shown.knowledge_base not in kb_names:
        st.warning(
            f"The knowledge base '{markdown_escape(shown.knowledge_base)}' no longer exists."
        )
        return
    right_with_rag = [
        i for i, r in enumerate(shown.results) if r.correct("rag") or r.correct("hybrid")
    ]
    choices = right_with_rag or list(range(shown.done))
    left, middle, right = st.columns([4, 2, 1.4], vertical_alignment="bottom")
    index = left.selectbox(
        "Question",
        choices,
        format_func=lambda i: f"{i + 1}. {shown.results[i].question}",
        key=f"eval_fresh_q_{shown.id}",
        help="Questions RAG answered right come first: they show the change best.",
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
                model = common.chat_model(settings)
                freshness.check(
                    settings, model, store.open(shown.knowledge_base), shown, index, new
                )
        except StudioError as error:
            st.error(common.markdown_escape(error), icon=":material/error:")
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
                st.markdown(common.answer_markdown(text) or "-")
        for line in found.summary:
            st.markdown(f"- {markdown_escape(line)}")


def show_report(shown: Report) -> None:
    state = evaluate.status(shown)
    text, icon = STATE_TEXT[state]
    st.subheader(markdown_escape(shown.name))
    st.caption(
        f"{text} · {shown.done} of {shown.total} questions · {len(shown.modes)} modes · "
        f"{short_duration(shown.elapsed_s)} of answering"
    )
    if state == "running":
        live_progress(shown.id)
        return
    if state == "failed":
        st.error(shown.error, icon=icon)
    if (
        not read_only
        and state in ("cancelled", "interrupted", "failed")
        and shown.done < shown.total
        and st.button(
            f"Resume ({shown.total - shown.done} questions left)",
            key="eval_resume",
            icon=":material/replay:",
        )
    ):
        start(shown)
    if shown.seen_in_training:
        count = len(shown.seen_in_training)
        numbers = ", ".join(str(i + 1) for i in shown.seen_in_training[:20])
        st.warning(
            f"{count} of the questions (number {numbers}) {'is' if count == 1 else 'are'} in "
            "the adapter's training data: on those its score shows what it memorised, not what "
            "it learned.",
            icon=":material/content_copy:",
        )
    if not shown.results:
        st.info("No question has been answered yet.")
        return
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

    exports = (
        ("HTML", report.to_html, "html", "text/html", ":material/html:"),
        ("Markdown", report.to_markdown, "md", "text/markdown", ":material/download:"),
    )
    for column, (label, render, suffix, mime, icon) in zip(
        st.columns([1, 1, 3]), exports, strict=False
    ):
        column.download_button(
            f"Download {label}",
            data=lambda render=render: render(shown),
            file_name=f"evaluation-{shown.id}.{suffix}",
            mime=mime,
            icon=icon,
            on_click="ignore",
            key=f"eval_export_{suffix}",
        )
    if state != "running" and (not read_only or shown.freshness):
        show_freshness(shown)


def start(shown: Report) -> None:
    """Start (or resume) the report's run in the background."""
    try:
        model = common.chat_model(settings)
        kb = store.open(shown.knowledge_base) if shown.knowledge_base else None
        if shown.adapter:
            with st.spinner("Loading the adapter…"):
                adapters.attach(model, settings, shown.adapter)
        evaluate.start(settings, model, shown, kb)
    except StudioError as error:
        st.error(common.markdown_escape(error), icon=":material/error:")
        return
    open_report(shown.id)
    st.rerun()


# -- a new evaluation ---------------------------------------------------------------------------
def new_evaluation() -> None:
    st.subheader("1. What to compare")
    left, right = st.columns(2)
    adapter_id = None
    if adapter_list:
        if st.session_state.get("eval_adapter") not in by_adapter:
            st.session_state["eval_adapter"] = adapter_list[0].run_id
        adapter_id = left.selectbox(
            "Adapter",
            list(by_adapter),
            format_func=lambda run_id: by_adapter[run_id].name,
            key="eval_adapter",
            help="The LoRA adapter of the fine-tuned modes.",
        )
    else:
        left.info("No adapter yet: the fine-tuned modes are left out.", icon=":material/school:")
    kb_name = None
    if kb_names:
        if st.session_state.get("eval_kb") not in kb_names:
            st.session_state["eval_kb"] = kb_names[0]
        kb_name = right.selectbox(
            "Knowledge base",
            kb_names,
            key="eval_kb",
            help="Where the RAG modes look up passages.",
        )
    else:
        right.info(
            "No knowledge base yet: the RAG modes are left out.", icon=":material/library_books:"
        )
    if adapter_id is None and kb_name is None:
        st.info(
            "Train an adapter or create a knowledge base first: with neither, there is nothing "
            "to compare the base model with.",
            icon=":material/info:",
        )
        return

    st.subheader("2. Questions with their right answers")
    source = st.segmented_control(
        "Where do the questions come from?",
        list(SOURCES),
        format_func=SOURCES.get,
        key="eval_source_choice",
        required=True,  # a second click on the chosen source keeps it, never empties the section
    )
    if source == "upload":
        upload = st.file_uploader(
            "Drop a file of questions: JSONL, JSON or CSV",
            type=["jsonl", "json", "csv"],
            key=f"eval_upload_{st.session_state['eval_round']}",
            max_upload_size=settings.max_upload_mb,
            help="Each row: 'question' and 'reference' (or 'answer'); optional 'accepted' "
            "answers, a list or one text with | between them.",
        )
        if upload is not None:
            try:
                found = evalset.parse_eval_set(upload.name, upload.getvalue())
            except StudioError as error:
                st.error(common.markdown_escape(error), icon=":material/error:")
            else:
                set_items(found.items, f"the file {upload.name}")
                if found.problems:
                    st.session_state["eval_problems"] = [str(p) for p in found.problems[:5]]
                st.rerun()
    elif source == "generate":
        if kb_name is None:
            st.info("Create a knowledge base first.", icon=":material/library_books:")
        else:
            count_column, button_column = st.columns([1, 2], vertical_alignment="bottom")
            count = count_column.number_input(
                "How many questions", 1, 100, key="eval_generate_count"
            )
            if button_column.button(
                f"Generate questions from '{kb_name}'",
                key="eval_generate",
                icon=":material/auto_awesome:",
            ):
                with st.spinner("Picking facts from your passages and writing questions…"):
                    try:
                        model = common.chat_model(settings)
                        passages = evalset.knowledge_passages(store.open(kb_name))
                        items = evalset.generate_questions(model, passages, int(count))
                    except StudioError as error:
                        st.error(common.markdown_escape(error), icon=":material/error:")
                        items = None
                if items == []:
                    st.warning(
                        "No fact (a number, date, code or name) was found to ask about. Upload "
                        "questions instead.",
                        icon=":material/search_off:",
                    )
                elif items:
                    set_items(items, f"generated from {kb_name}")
                    st.rerun()
    elif source == "held_out":
        if adapter_id is None:
            st.info("Train an adapter first.", icon=":material/school:")
        elif st.button(
            f"Use the held-out examples of '{by_adapter[adapter_id].name}'",
            key="eval_held_out",
            icon=":material/call_split:",
        ):
            try:
                items = evalset.held_out_items(settings, adapter_id)
            except StudioError as error:
                st.error(common.markdown_escape(error), icon=":material/error:")
            else:
                set_items(items, f"held-out examples of {by_adapter[adapter_id].name}")
                st.rerun()

    for problem in st.session_state.get("eval_problems") or []:
        st.warning(f"Skipped: {markdown_escape(problem)}", icon=":material/warning:")
    rows = st.session_state["eval_items"]
    if not rows:
        st.caption("The questions appear here, to check and edit before the run.")
        return
    st.caption(
        f"{len(rows)} questions from {st.session_state['eval_source']}. Edit them, add rows or "
        "delete them before running. An answer counts as right when it contains the reference "
        "answer or one of the accepted ones."
    )
    st.session_state["eval_frame"] = st.data_editor(
        pd.DataFrame(rows, columns=list(COLUMNS)),
        num_rows="dynamic",
        hide_index=True,
        key=f"eval_editor_{st.session_state['eval_round']}",
        column_config={
            "question": st.column_config.TextColumn(COLUMNS["question"], width="large"),
            "reference": st.column_config.TextColumn(COLUMNS["reference"]),
            "accepted": st.column_config.TextColumn(
                COLUMNS["accepted"], help="Other right answers, with | between them."
            ),
        },
    )
    items = edited_items()
    adapter = by_adapter.get(adapter_id) if adapter_id else None
    if adapter is not None and items:
        try:
            seen = evalset.seen_in_training(items, settings, adapter.run_id)
        except StudioError:
            seen = []
        if seen:
            st.warning(
                f"{len(seen)} of these questions {'is' if len(seen) == 1 else 'are'} in the "
                "adapter's training data: its score on them would show memory, not learning. "
                "Remove them, or use the held-out examples.",
                icon=":material/content_copy:",
            )

    st.subheader("3. Run")
    left, right = st.columns([1, 2])
    left.number_input(
        "Longest answer (tokens)",
        16,
        1024,
        step=16,
        key="eval_max_new_tokens",
        help="Evaluations always pick the most likely words (temperature 0), so that a run "
        "gives the same answers again. " + common.help_for("max_new_tokens"),
    )
    right.text_input("Name", key="eval_name", placeholder="Evaluation of today")
    modes = sum(
        1
        for m in MODES.values()
        if (adapter or not m.uses_adapter) and (kb_name or not m.uses_passages)
    )
    if st.button(
        f"Evaluate {len(items)} questions in {modes} modes",
        key="eval_run",
        type="primary",
        icon=":material/play_arrow:",
        disabled=not items,
    ):
        try:
            model = common.chat_model(settings)
            kb = store.open(kb_name) if kb_name else None
            params = SamplingParams(0.0, 1.0, int(st.session_state["eval_max_new_tokens"]))
            shown = evaluate.new_report(
                settings,
                model,
                items,
                adapter=adapter,
                kb=kb,
                params=params,
                source=st.session_state["eval_source"],
                name=st.session_state["eval_name"].strip(),
            )
        except StudioError as error:
            st.error(common.markdown_escape(error), icon=":material/error:")
            return
        start(shown)


report_id = st.session_state["eval_report_id"]
current = None
if report_id:
    current = evaluate.running_report(report_id)
    if current is None:
        try:
            current = evaluate.load(settings, report_id)
        except StudioError:
            st.warning("The evaluation in this link was not found.", icon=":material/link_off:")
            open_report(None)
if current is not None:
    if not read_only and st.button("New evaluation", key="eval_new", icon=":material/add:"):
        open_report(None)
        st.rerun()
    show_report(current)
elif read_only:
    st.info(
        "Open one of the saved evaluations above to see its scores and recommendation."
        if saved
        else "This demo has no saved evaluation.",
        icon=":material/fact_check:",
    )
else:
    new_evaluation()
