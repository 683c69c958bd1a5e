"""Knowledge base: documents the model can look things up in, and a preview of what it finds."""

import time
from datetime import datetime

import streamlit as st

from core import adding
from core.errors import StudioError
from core.ingest import FILE_TYPES, ChunkSettings, UploadedFile, recover
from core.retrieve import search
from core.train import short_duration
from views import common
from views.common import markdown_escape

ICONS = {
    "added": ":material/check_circle:",
    "replaced": ":material/published_with_changes:",
    "redone": ":material/restart_alt:",
    "skipped": ":material/skip_next:",
    "failed": ":material/error:",
    "cancelled": ":material/block:",
}
WAITING_ICONS = {"waiting": ":material/schedule:", "reading": ":material/progress_activity:"}
RECENT_S = 900
KEPT = ("added", "replaced", "redone", "skipped")
ALERTS = {"failed": st.error, "cancelled": st.warning}
WAITING_TEXTS = {"waiting": "waiting", "reading": "being read and added…"}

settings = common.get_settings()
st.title("Knowledge base")
st.caption(
    "Documents the model can look things up in before it answers (RAG). Answers then cite the "
    "file and page they came from."
)
store = common.knowledge_store(settings)
read_only = settings.read_only


def create_form(key: str) -> None:
    name = st.text_input("Name", key=f"{key}_name", placeholder="for example: HR policies")
    if st.button("Create", key=f"{key}_create", type="primary", icon=":material/add:"):
        try:
            created = store.create(name)
        except StudioError as error:
            st.error(common.markdown_escape(error))
        else:
            # Chosen on the next run: the picker may already be on screen in this one.
            st.session_state["kb_select_next"] = created.name
            st.rerun()


names = store.names()
if not names and read_only:
    st.info("This demo has no knowledge base.", icon=":material/library_books:")
    st.stop()
if not names:
    st.info(
        "Create a knowledge base to start: give it a name, then drop your documents into it.",
        icon=":material/library_books:",
    )
    create_form("kb_first")
    st.stop()

if st.session_state.get("kb_select_next") in names:
    st.session_state["kb_selected"] = st.session_state.pop("kb_select_next")
if st.session_state.get("kb_selected") not in names:
    st.session_state["kb_selected"] = names[0]
pick, new, remove = st.columns([4, 1, 1], vertical_alignment="bottom")
selected = pick.selectbox("Knowledge base", names, key="kb_selected")


def delete_form() -> None:
    name = markdown_escape(selected)
    st.warning(f"This deletes '{name}' with all its documents and passages.")
    # The confirmation belongs to this knowledge base: ticking it never carries over to another.
    sure = st.checkbox(f"Yes, delete '{name}'", key=f"kb_delete_confirm_{selected}")
    adding_now = adding.busy(settings, selected)
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


if read_only:
    st.caption("A read-only demo: search the documents here; adding and deleting are turned off.")
else:
    with new.popover("New", icon=":material/add:", width="stretch"):
        create_form("kb_new")
    with remove.popover("Delete", icon=":material/delete:", width="stretch"):
        delete_form()

try:
    kb = store.open(selected)
except StudioError as error:
    st.error(common.markdown_escape(error), icon=":material/error:")
    st.stop()

chunking = ChunkSettings(
    int(st.session_state["kb_chunk_size"]), int(st.session_state["kb_chunk_overlap"])
)
jobs = adding.jobs_for(settings, kb.name)  # documents being added, or added lately
recovered = []
# Left by a run that stopped; a document job running now finishes its own.
if kb.catalog.documents(status="pending") and not any(adding.alive(job) for job in jobs):
    with st.spinner("Finishing documents that an interrupted run left half-added…"):
        recovered = recover(kb, chunking)
for event in recovered:
    st.info(f"{markdown_escape(event.file_name)}: {event.message}", icon=ICONS.get(event.status))


# -- adding documents -------------------------------------------------------------------------
def add_documents() -> None:
    st.subheader("Add documents")
    uploads = st.file_uploader(
        "Drop files here: PDF, Word (DOCX), text, Markdown or HTML",
        type=[*FILE_TYPES, "htm"],
        accept_multiple_files=True,
        key=f"kb_uploads_{st.session_state['kb_upload_round']}",
        max_upload_size=settings.max_upload_mb,
    )
    with st.expander("Advanced: how documents are cut into passages", icon=":material/tune:"):
        left, right = st.columns(2)
        left.number_input(
            "Passage length (characters)",
            min_value=100,
            max_value=8000,
            step=100,
            key="kb_chunk_size",
            help=common.help_for("chunk_size"),
        )
        right.number_input(
            "Overlap (characters)",
            min_value=0,
            max_value=2000,
            step=50,
            key="kb_chunk_overlap",
            help=common.help_for("chunk_overlap"),
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


def file_line(entry: adding.FileEntry) -> str:
    icon = ICONS.get(entry.state, WAITING_ICONS.get(entry.state, ""))
    message = entry.message or WAITING_TEXTS.get(entry.state, "")
    return f"{icon} **{markdown_escape(entry.name)}**: {markdown_escape(message)}"


def show_running(job: adding.AddJob) -> None:
    """A job still adding: progress, an estimate of the time left, each file, and Cancel."""
    with st.container(border=True):
        done = job.finished_files
        st.markdown(
            f"**Adding {len(job.files)} file(s)** · {done} of {len(job.files)} done"
            + (" · picked up again after a restart" if job.resumed else "")
        )
        spent = time.time() - job.created
        left = ""
        if 0.05 < job.fraction < 1.0:
            left = f" · about {short_duration(spent * (1 - job.fraction) / job.fraction)} left"
        text = markdown_escape(job.message) + left if job.state == "adding" else job.message
        st.progress(job.fraction, text=text)
        for entry in job.files:
            st.markdown(file_line(entry))
        if adding.cancel_asked(settings, job.id):
            st.caption("Cancelling: the file being added now is taken back out…")
        elif st.button("Cancel adding", key=f"kb_cancel_{job.id}", icon=":material/stop_circle:"):
            adding.cancel(settings, job.id)
            st.rerun(scope="fragment")


def show_finished(job: adding.AddJob) -> None:
    """A job that ended: every file with its outcome, until this session hides it."""
    total = len(job.files)
    kept = sum(1 for entry in job.files if entry.state in KEPT)
    label = {
        "done": f"Done: {kept} of {total} file(s) in the knowledge base",
        "cancelled": f"Cancelled: {kept} of {total} file(s) were added before it stopped",
        "failed": f"Stopped: {kept} of {total} file(s) in the knowledge base",
    }[job.state]
    with st.container(border=True):
        top, hide = st.columns([5, 1], vertical_alignment="center")
        top.markdown(f"**{label}**")
        if hide.button("Hide", key=f"kb_hide_{job.id}", icon=":material/close:", width="stretch"):
            st.session_state["kb_hidden_jobs"].append(job.id)
            st.rerun()
        for entry in job.files:
            alert = ALERTS.get(entry.state, st.success)
            shown = f"**{markdown_escape(entry.name)}**: {markdown_escape(entry.message)}"
            alert(shown, icon=ICONS[entry.state])


def show_jobs() -> None:
    """This knowledge base's document jobs, refreshed every second while one is running; when
    the last one ends, the whole page runs again to list the new documents."""
    jobs = adding.jobs_for(settings, kb.name)
    running = [job for job in jobs if adding.alive(job)]
    if st.session_state.get("kb_watching") and not running:
        st.session_state["kb_watching"] = False
        st.rerun()  # the documents table and the search below see the new documents
    st.session_state["kb_watching"] = bool(running)
    for job in running:
        if job.id not in st.session_state["kb_seen_jobs"]:  # started elsewhere: watched here
            st.session_state["kb_seen_jobs"].append(job.id)
        show_running(job)


live_jobs = st.fragment(run_every=1.0)(show_jobs)

if not read_only:
    add_documents()
    for finished in jobs:
        if finished.id in st.session_state["kb_hidden_jobs"] or finished.active:
            continue
        # Shown to a session that started or watched it; to others (a tab opened again) when
        # it ended in the last quarter of an hour.
        recent = (finished.finished or 0) > time.time() - RECENT_S
        if recent or finished.id in st.session_state["kb_seen_jobs"]:
            show_finished(finished)
    if any(adding.alive(job) for job in jobs):
        live_jobs()

# -- documents ----------------------------------------------------------------------------------
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
                st.toast(f"Deleted {markdown_escape(gone.name)} and its {gone.passages} passages.")
                st.rerun()

# -- search preview -----------------------------------------------------------------------------
st.subheader("What would the model see?")
st.caption(
    "Ask a question the way a user would: these are the passages a RAG answer would be given."
)
query_column, k_column = st.columns([4, 1])
query = query_column.text_input(
    "Question", key="kb_query", placeholder="What is the refund period?"
)
k_column.number_input(
    "Passages", min_value=1, max_value=20, key="kb_top_k", help=common.help_for("top_k")
)
if query.strip():
    result = search(kb, query, int(st.session_state["kb_top_k"]))
    if not result.passages:
        st.info("No passages found: add documents first, or ask in other words.")
    st.caption(f"Searched in {result.seconds * 1000:.0f} ms.")
    for rank, passage in enumerate(result.passages, start=1):
        with st.container(border=True):
            found = " and ".join(passage.found_by)
            match = f" · match {passage.similarity:.2f}" if passage.similarity is not None else ""
            st.markdown(
                f"**{rank}. {markdown_escape(passage.citation)}**{match} · found by {found}"
            )
            st.markdown(markdown_escape(passage.text))
