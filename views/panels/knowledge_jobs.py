"""The Knowledge page's document jobs: files being added (live, with Cancel) and the outcome of
jobs that ended."""

from __future__ import annotations

import time

import streamlit as st

from core.knowledge import adding
from core.settings import Settings
from core.wording import short_duration
from views.support.widgets import markdown_escape

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


def file_line(entry: adding.FileEntry) -> str:
    icon = ICONS.get(entry.state, WAITING_ICONS.get(entry.state, ""))
    message = entry.message or WAITING_TEXTS.get(entry.state, "")
    return f"{icon} **{markdown_escape(entry.name)}**: {markdown_escape(message)}"


def show_running(settings: Settings, job: adding.AddJob) -> None:
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


@st.fragment(run_every=1.0)
def live_jobs(settings: Settings, kb_name: str) -> None:
    """This knowledge base's document jobs, refreshed every second while one is running; when
    the last one ends, the whole page runs again to list the new documents."""
    jobs = adding.jobs_for(settings, kb_name)
    running = [job for job in jobs if adding.alive(job)]
    if st.session_state.get("kb_watching") and not running:
        st.session_state["kb_watching"] = False
        st.rerun()  # the documents table and the search below see the new documents
    st.session_state["kb_watching"] = bool(running)
    for job in running:
        if job.id not in st.session_state["kb_seen_jobs"]:  # started elsewhere: watched here
            st.session_state["kb_seen_jobs"].append(job.id)
        show_running(settings, job)
