"""The Fine-tune page's choice of what to teach, and its step 1 for "to use your documents":
training rows built from a knowledge base (core.answering.raft)."""

from __future__ import annotations

import streamlit as st

from core.answering import raft
from core.errors import StudioError
from core.evaluation.questions import parse_eval_set
from core.settings import Settings
from views.support import resources, widgets
from views.support.widgets import markdown_escape

TEACH = {
    "examples": "From your examples",
    "documents": "To use your documents",
}


def choose_what_to_teach() -> str:
    """Examples of a behaviour, or reading a knowledge base's documents (RAFT)."""
    return str(
        st.segmented_control(
            "What should the model learn?",
            list(TEACH),
            format_func=TEACH.__getitem__,
            key="ft_teach",
            help="From your examples: a tone, a format, a persona, facts you write down. To use "
            "your documents: to answer from the passages a knowledge base finds (the "
            "Fine-tuned + RAG mode then reads with it).",
        )
        or "examples"
    )


def choose_documents(settings: Settings) -> None:
    """Step 1 for "use your documents": training rows built from a knowledge base (and the
    user's questions, when given), as RAFT builds them (core.answering.raft)."""
    st.subheader("1. Your documents")
    store = resources.knowledge_store(settings)
    names = store.names()
    if not names:
        st.info(
            "Create a knowledge base on the Knowledge base page first: the model learns to "
            "answer from the passages it finds there.",
            icon=":material/library_books:",
        )
        return
    kb_column, questions_column = st.columns(2)
    kb_name = widgets.knowledge_picker(
        kb_column, names, "ft_raft_kb", "The documents the model learns to read."
    )
    upload = questions_column.file_uploader(
        "Questions with answers (optional): JSONL, JSON or CSV",
        type=["jsonl", "json", "csv"],
        key=f"ft_raft_questions_{st.session_state['ft_upload_round']}",
        max_upload_size=settings.max_upload_mb,
        help="The Evaluate page's format: 'question' and 'reference' on each row. Without "
        "them, the questions are the facts your documents state, each left blank. Keep the "
        "questions you will evaluate with out of this file.",
    )
    st.caption(
        "Each training row is a question with the sentences retrieval finds for it: the one "
        "that answers and others that do not, so the model learns to pick the right one, copy "
        "its fact and cite it. Use this adapter in the Arena or on Evaluate: its Fine-tuned + "
        "RAG answers read your documents with it."
    )
    if not st.button("Build the training rows", key="ft_raft_build", icon=":material/build:"):
        return
    items, problems = [], []
    if upload is not None:
        try:
            found = parse_eval_set(upload.name, upload.getvalue())
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
            return
        items, problems = found.items, [str(p) for p in found.problems[:5]]
    with st.spinner("Finding the answering sentences of every question…"):
        try:
            kb = store.open(str(kb_name))
            built = raft.training_rows(kb, items)
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
            return
    if not built.rows:
        st.error(
            "No question found its answer in the knowledge base, so there is nothing to train "
            "on. Add documents that state facts, or questions whose answers they hold.",
            icon=":material/error:",
        )
        return
    st.session_state["ft_data"] = {
        "name": f"{kb_name} (reading).jsonl",
        "data": raft.jsonl(built.rows),
        "source": "documents",
        "skipped": built.skipped,
        "problems": problems,
    }
    st.session_state["ft_upload_round"] += 1
    st.rerun()
