"""The Evaluate page's new evaluation: what to compare, where the questions come from, the
table to check and edit them in, and the run button."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.answering.modes import MODES, available
from core.errors import StudioError
from core.evaluation import questions, runner
from core.evaluation.questions import EvalItem
from core.model.chat import SamplingParams
from core.training.adapters import AdapterInfo
from views.panels import evaluate_report
from views.support import resources, widgets
from views.support.resources import Studio
from views.support.widgets import help_for, markdown_escape

SOURCES = {
    "upload": "Upload a file",
    "generate": "Generate from the knowledge base",
    "held_out": "Held-out fine-tune examples",
}
COLUMNS = {"question": "Question", "reference": "Reference answer", "accepted": "Also accepted"}


def set_items(items: list[EvalItem], source: str, problems: list[str] | None = None) -> None:
    st.session_state["eval_items"] = [
        {"question": i.question, "reference": i.reference, "accepted": " | ".join(i.accepted)}
        for i in items
    ]
    st.session_state["eval_source"] = source
    st.session_state["eval_problems"] = problems or []
    st.session_state["eval_round"] += 1  # a fresh editor for the new questions


def what_to_compare(ctx: Studio) -> tuple[AdapterInfo | None, str | None]:
    st.subheader("1. What to compare")
    left, right = st.columns(2)
    adapter_id = widgets.adapter_picker(
        left, ctx.adapters, "eval_adapter", "The LoRA adapter of the fine-tuned modes."
    )
    if adapter_id is None:
        left.info("No adapter yet: the fine-tuned modes are left out.", icon=":material/school:")
    kb_name = widgets.knowledge_picker(
        right, ctx.kb_names, "eval_kb", "Where the RAG modes look up passages."
    )
    if kb_name is None:
        right.info(
            "No knowledge base yet: the RAG modes are left out.", icon=":material/library_books:"
        )
    return (ctx.by_adapter[adapter_id] if adapter_id else None), kb_name


def from_upload(ctx: Studio) -> None:
    upload = st.file_uploader(
        "Drop a file of questions: JSONL, JSON or CSV",
        type=["jsonl", "json", "csv"],
        key=f"eval_upload_{st.session_state['eval_round']}",
        max_upload_size=ctx.settings.max_upload_mb,
        help="Each row: 'question' and 'reference' (or 'answer'); optional 'accepted' "
        "answers, a list or one text with | between them.",
    )
    if upload is None:
        return
    try:
        found = questions.parse_eval_set(upload.name, upload.getvalue())
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    set_items(found.items, f"the file {upload.name}", [str(p) for p in found.problems[:5]])
    st.rerun()


def from_knowledge(ctx: Studio, kb_name: str | None) -> None:
    if kb_name is None:
        st.info("Create a knowledge base first.", icon=":material/library_books:")
        return
    count_column, button_column = st.columns([1, 2], vertical_alignment="bottom")
    count = count_column.number_input("How many questions", 1, 100, key="eval_generate_count")
    if not button_column.button(
        f"Generate questions from '{kb_name}'",
        key="eval_generate",
        icon=":material/auto_awesome:",
    ):
        return
    with st.spinner("Picking facts from your passages and writing questions…"):
        try:
            model = resources.chat_model(ctx.settings)
            passages = questions.knowledge_passages(ctx.store.open(kb_name))
            items = questions.generate_questions(model, passages, int(count))
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
            return
    if not items:
        st.warning(
            "No fact (a number, date, code or name) was found to ask about. Upload "
            "questions instead.",
            icon=":material/search_off:",
        )
        return
    set_items(items, f"generated from {kb_name}")
    st.rerun()


def from_held_out(ctx: Studio, adapter: AdapterInfo | None) -> None:
    if adapter is None:
        st.info("Train an adapter first.", icon=":material/school:")
        return
    if not st.button(
        f"Use the held-out examples of '{adapter.name}'",
        key="eval_held_out",
        icon=":material/call_split:",
    ):
        return
    try:
        items = questions.held_out_items(ctx.settings, adapter.run_id)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    set_items(items, f"held-out examples of {adapter.name}")
    st.rerun()


def question_table(ctx: Studio, adapter: AdapterInfo | None) -> list[EvalItem]:
    """The questions, to check and edit; the rows that can be used (the others are named)."""
    for problem in st.session_state["eval_problems"]:
        st.warning(f"Skipped: {markdown_escape(problem)}", icon=":material/warning:")
    rows = st.session_state["eval_items"]
    if not rows:
        st.caption("The questions appear here, to check and edit before the run.")
        return []
    st.caption(
        f"{len(rows)} questions from {st.session_state['eval_source']}. Edit them, add rows or "
        "delete them before running. An answer counts as right when it contains the reference "
        "answer or one of the accepted ones."
    )
    frame = st.data_editor(
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
    found = questions.from_rows(frame.to_dict("records"))
    for problem in found.problems:
        st.warning(
            f"Row {problem.line} is left out: {markdown_escape(problem.message)}",
            icon=":material/warning:",
        )
    if adapter is not None and found.items:
        try:
            seen = questions.seen_in_training(found.items, ctx.settings, adapter.run_id)
        except StudioError:
            seen = []
        if seen:
            st.warning(
                f"{len(seen)} of these questions {'is' if len(seen) == 1 else 'are'} in the "
                "adapter's training data: its score on them would show memory, not learning. "
                "Remove them, or use the held-out examples.",
                icon=":material/content_copy:",
            )
    return found.items


def run_section(
    ctx: Studio, items: list[EvalItem], adapter: AdapterInfo | None, kb_name: str | None
) -> None:
    st.subheader("3. Run")
    left, right = st.columns([1, 2])
    left.number_input(
        "Longest answer (tokens)",
        16,
        1024,
        step=16,
        key="eval_max_new_tokens",
        help="Evaluations always pick the most likely words (temperature 0), so that a run "
        "gives the same answers again. " + help_for("max_new_tokens"),
    )
    right.text_input("Name", key="eval_name", placeholder="Evaluation of today")
    modes = available(MODES, adapter is not None, kb_name is not None)
    if not st.button(
        f"Evaluate {len(items)} questions in {len(modes)} modes",
        key="eval_run",
        type="primary",
        icon=":material/play_arrow:",
        disabled=not items,
    ):
        return
    try:
        model = resources.chat_model(ctx.settings)
        kb = ctx.store.open(kb_name) if kb_name else None
        params = SamplingParams(0.0, 1.0, int(st.session_state["eval_max_new_tokens"]))
        shown = runner.new_report(
            ctx.settings,
            model,
            items,
            adapter=adapter,
            kb=kb,
            params=params,
            source=st.session_state["eval_source"],
            name=st.session_state["eval_name"].strip(),
        )
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    evaluate_report.start(ctx, shown)


def new_evaluation(ctx: Studio) -> None:
    adapter, kb_name = what_to_compare(ctx)
    if adapter is None and kb_name is None:
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
        from_upload(ctx)
    elif source == "generate":
        from_knowledge(ctx, kb_name)
    elif source == "held_out":
        from_held_out(ctx, adapter)
    items = question_table(ctx, adapter)
    if st.session_state["eval_items"]:
        run_section(ctx, items, adapter, kb_name)
