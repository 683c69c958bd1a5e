"""Knowledge base: documents the model can look things up in, and a preview of what it finds."""

from __future__ import annotations

import time
from datetime import datetime

import streamlit as st

from core.errors import StudioError
from core.knowledge import adding
from core.knowledge.ingest import ChunkSettings, UploadedFile, recover
from core.knowledge.reading import FILE_TYPES
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeBase, KnowledgeStore
from core.settings import Settings
from views.panels import knowledge_jobs
from views.panels.knowledge_jobs import ICONS, RECENT_S
from views.support import resources
from views.support.widgets import help_for, markdown_escape


def create_form(store: KnowledgeStore, key: str) -> None:
    name = st.text_input("Name", key=f"{key}_name", placeholder="for example: HR policies")
    if st.button("Create", key=f"{key}_create", type="primary", icon=":material/add:"):
        try:
            created = store.create(name)
        except StudioError as error:
            st.error(markdown_escape(error))
        else:
            # Chosen on the next run: the picker may already be on screen in this one.
            st.session_state["kb_select_next"] = created.name
            st.rerun()


def delete_form(store: KnowledgeStore, selected: str, adding_now: bool) -> None:
    name = markdown_escape(selected)
    st.warning(f"This deletes '{name}' with all its documents and passages.")
    # The confirmation belongs to this knowledge base: ticking it never carries over to another.
    sure = st.checkbox(f"Yes, delete '{name}'", key=f"kb_delete_confirm_{selected}")
    if adding_now:
        st.caption("Documents are being added to it: wait for them, or cancel the adding first.")
    if st.button(
        "Delete knowledge base",
        key="kb_delete",
        disabled=not sure or adding_now,
        type="primary",
    ):
        store.delete(selected)
        st.session_state.pop("kb_selected", None)
        st.toast(f"Deleted the knowledge base '{name}'.", icon=":material/delete:")
        st.rerun()


def add_documents(
    store: KnowledgeStore, kb: KnowledgeBase, chunking: ChunkSettings, jobs: list[adding.AddJob]
) -> None:
    st.subheader("Add documents")
    uploads = st.file_uploader(
        "Drop files here: PDF, Word (DOCX), text, Markdown or HTML",
        type=[*FILE_TYPES, "htm"],
        accept_multiple_files=True,
        key=f"kb_uploads_{st.session_state['kb_upload_round']}",
        max_upload_size=store.settings.max_upload_mb,
    )
    with st.expander("Advanced: how documents are cut into passages", icon=":material/tune:"):
        left, right = st.columns(2)
        left.number_input(
            "Passage length (characters)",
            min_value=100,
            max_value=8000,
            step=100,
            key="kb_chunk_size",
            help=help_for("chunk_size"),
        )
        right.number_input(
            "Overlap (characters)",
            min_value=0,
            max_value=2000,
            step=50,
            key="kb_chunk_overlap",
            help=help_for("chunk_overlap"),
        )
        if chunking.chunk_overlap >= chunking.chunk_size:
            st.warning("The overlap must be smaller than the passage length.")

    can_add = bool(uploads) and chunking.chunk_overlap < chunking.chunk_size
    if st.button(
        "Add to knowledge base",
        key="kb_add",
        type="primary",
        disabled=not can_add,
        icon=":material/upload:",
    ):
        files = [UploadedFile(upload.name, upload.getvalue()) for upload in uploads or []]
        try:
            job = adding.start(store, kb.name, files, chunking)
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
        else:
            earlier = [old.id for old in jobs if not old.active]
            st.session_state["kb_hidden_jobs"] += earlier  # its outcome replaces earlier ones
            st.session_state["kb_seen_jobs"].append(job.id)
            st.session_state["kb_upload_round"] += 1  # a fresh, empty uploader
            st.rerun()


def pick(store: KnowledgeStore) -> list[str]:
    """The knowledge bases, the one to show chosen ([]: there is none yet, and the page said
    what to do)."""
    names = store.names()
    if not names and store.settings.read_only:
        st.info("This demo has no knowledge base.", icon=":material/library_books:")
        return []
    if not names:
        st.info(
            "Create a knowledge base to start: give it a name, then drop your documents into it.",
            icon=":material/library_books:",
        )
        create_form(store, "kb_first")
        return []

    if st.session_state.get("kb_select_next") in names:
        st.session_state["kb_selected"] = st.session_state.pop("kb_select_next")
    if st.session_state.get("kb_selected") not in names:
        st.session_state["kb_selected"] = names[0]
    return names


def recover_pending(kb: KnowledgeBase, chunking: ChunkSettings, jobs: list[adding.AddJob]) -> None:
    """Finish the documents a stopped run left half-added (a job running now finishes its own)."""
    recovered = []
    if kb.catalog.documents(status="pending") and not any(adding.alive(job) for job in jobs):
        with st.spinner("Finishing documents that an interrupted run left half-added…"):
            recovered = recover(kb, chunking)
    for event in recovered:
        st.info(
            f"{markdown_escape(event.file_name)}: {event.message}", icon=ICONS.get(event.status)
        )


def show_jobs(settings: Settings, kb_name: str, jobs: list[adding.AddJob]) -> None:
    """The outcome of ended document jobs this session should see, then the live ones."""
    for finished in jobs:
        if finished.id in st.session_state["kb_hidden_jobs"] or finished.active:
            continue
        # Shown to a session that started or watched it; to others (a tab opened again) when
        # it ended in the last quarter of an hour.
        recent = (finished.finished or 0) > time.time() - RECENT_S
        if recent or finished.id in st.session_state["kb_seen_jobs"]:
            knowledge_jobs.show_finished(finished)
    if any(adding.alive(job) for job in jobs):
        knowledge_jobs.live_jobs(settings, kb_name)


def show_documents(kb: KnowledgeBase, read_only: bool) -> None:
    """The documents of the knowledge base, and deleting one."""
    documents = [d for d in kb.documents() if d.status == "complete"]
    st.subheader(f"Documents ({len(documents)})")
    if not documents:
        st.caption("No documents yet." if read_only else "No documents yet: add some above.")
    else:
        st.dataframe(
            [
                {
                    "Name": d.name,
                    "Type": FILE_TYPES[d.file_type],
                    "Pages": str(d.pages) if d.file_type == "pdf" else "",
                    "Passages": d.passages,
                    "Size (KB)": round(d.size_bytes / 1024, 1),
                    "Added": datetime.fromtimestamp(d.added).strftime("%Y-%m-%d %H:%M"),
                }
                for d in documents
            ],
            hide_index=True,
            width="stretch",
            key="kb_table",
        )
        by_label = {f"{d.name} ({d.passages} passages)": d for d in documents}
        if not read_only:
            with st.popover("Delete a document", icon=":material/delete:"):
                label = st.selectbox("Document", list(by_label), key="kb_doc_to_delete")
                if st.button("Delete document", key="kb_doc_delete", type="primary"):
                    gone = kb.delete_document(by_label[label].doc_id)
                    st.toast(
                        f"Deleted {markdown_escape(gone.name)} and its {gone.passages} passages."
                    )
                    st.rerun()


def search_preview(kb: KnowledgeBase) -> None:
    """The passages a RAG answer would be given for a question."""
    st.subheader("What would the model see?")
    st.caption(
        "Ask a question the way a user would: these are the passages a RAG answer would be given."
    )
    query_column, k_column = st.columns([4, 1])
    query = query_column.text_input(
        "Question", key="kb_query", placeholder="What is the refund period?"
    )
    k_column.number_input(
        "Passages", min_value=1, max_value=20, key="kb_top_k", help=help_for("top_k")
    )
    if query.strip():
        result = search(kb, query, int(st.session_state["kb_top_k"]))
        if not result.passages:
            st.info("No passages found: add documents first, or ask in other words.")
        st.caption(f"Searched in {result.seconds * 1000:.0f} ms.")
        for rank, passage in enumerate(result.passages, start=1):
            with st.container(border=True):
                found = " and ".join(passage.found_by)
                match = (
                    f" · match {passage.similarity:.2f}" if passage.similarity is not None else ""
                )
                st.markdown(
                    f"**{rank}. {markdown_escape(passage.citation)}**{match} · found by {found}"
                )
                st.markdown(markdown_escape(passage.text))


def main() -> None:
    settings = resources.get_settings()
    st.title("Knowledge base")
    st.caption(
        "Documents the model can look things up in before it answers (RAG). Answers then cite "
        "the file and page they came from."
    )
    store = resources.knowledge_store(settings)
    if not (names := pick(store)):
        return
    picker, new, remove = st.columns([4, 1, 1], vertical_alignment="bottom")
    selected = picker.selectbox("Knowledge base", names, key="kb_selected")
    jobs = adding.jobs_for(settings, selected)  # documents being added, or added lately
    if not settings.read_only:
        adding_now = any(adding.alive(job) for job in jobs)
        with new.popover("New", icon=":material/add:", width="stretch"):
            create_form(store, "kb_new")
        with remove.popover("Delete", icon=":material/delete:", width="stretch"):
            delete_form(store, selected, adding_now)
    else:
        st.caption(
            "A read-only demo: search the documents here; adding and deleting are turned off."
        )
    try:
        kb = store.open(selected)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    chunking = ChunkSettings(
        int(st.session_state["kb_chunk_size"]), int(st.session_state["kb_chunk_overlap"])
    )
    recover_pending(kb, chunking, jobs)
    if not settings.read_only:
        add_documents(store, kb, chunking, jobs)
        show_jobs(settings, kb.name, jobs)
    show_documents(kb, settings.read_only)
    search_preview(kb)


main()
