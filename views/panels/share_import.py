"""The Share page's import tab: a dropped demo file checked, what it holds and the names it gets
here, and the import with progress."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from core.errors import StudioError
from core.knowledge.store import KnowledgeStore
from core.settings import Settings
from core.sharing import importing
from core.sharing.bundle import Bundle, read_bundle
from views.support.widgets import markdown_escape


def import_tab(settings: Settings, store: KnowledgeStore) -> None:
    """Drop a demo file, see what it holds and where it goes, import it."""
    upload = st.file_uploader(
        "Drop a demo file (.zip) made on this page",
        type=["zip"],
        key=f"share_upload_{st.session_state['share_upload_round']}",
        max_upload_size=settings.max_bundle_mb,
    )
    if upload is not None:
        try:
            with st.spinner("Checking the demo file…"):
                bundle = read_bundle(upload.getvalue(), settings.max_bundle_mb * 1_000_000)
                plan = importing.plan_import(settings, bundle)
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/gpp_bad:")
        else:
            review_and_import(settings, store, bundle, plan)
    show_imported()


def review(bundle: Bundle, plan: importing.ImportPlan) -> bool:
    """What the bundle holds and the names it gets here; whether to replace what is taken."""
    manifest = bundle.manifest
    made = datetime.fromtimestamp(manifest.created).strftime("%d %b %Y")
    version = markdown_escape(manifest.app_version)
    st.markdown(f"Made on {made} with LoRA-RAG Studio {version}.")
    # st.table renders its cells as Markdown: every name from the bundle is escaped.
    rows = [
        {
            "What": "Knowledge base",
            "Name in the file": markdown_escape(old),
            "Name here": markdown_escape(new),
        }
        for old, new in plan.knowledge_bases.items()
    ] + [
        {
            "What": "Adapter",
            "Name in the file": markdown_escape(entry.name),
            "Name here": markdown_escape(new),
        }
        for entry, new in zip(bundle.adapters, plan.adapters.values(), strict=True)
    ]
    if rows:
        st.table(rows, hide_index=True)  # small: a plain table shows at once
    st.caption(
        f"{len(plan.evaluations)} evaluation reports and {len(plan.conversations)} arena "
        "conversations come along."
    )
    replace = False
    if plan.conflicts:
        st.warning(
            "Already here: "
            + ", ".join(markdown_escape(c) for c in plan.conflicts)
            + ". They are imported under new names, unless you replace them.",
            icon=":material/content_copy:",
        )
        replace = st.checkbox(
            "Replace the existing ones instead (they are deleted once the import is complete)",
            key="share_replace",
        )
    return replace


def review_and_import(
    settings: Settings, store: KnowledgeStore, bundle: Bundle, plan: importing.ImportPlan
) -> None:
    replace = review(bundle, plan)
    if st.button("Import", key="share_import", type="primary", icon=":material/download:"):
        try:
            with st.status("Importing…", expanded=True) as status:
                bar = st.progress(0.0)
                result = importing.import_bundle(
                    settings,
                    store,
                    bundle,  # checked above, in this same run
                    replace=replace,
                    progress=lambda f, m: bar.progress(f, text=markdown_escape(m)),
                )
                status.update(label="Imported", state="complete", expanded=False)
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
        else:
            st.session_state["share_upload_round"] += 1
            st.session_state["share_imported"] = result
            st.rerun()


def show_imported() -> None:
    """What the last import of this session brought."""
    result = st.session_state.get("share_imported")
    if result is not None:
        parts = [
            f"{len(result.knowledge_bases)} knowledge bases",
            f"{len(result.adapters)} adapters",
            f"{len(result.evaluations)} evaluation reports",
            f"{len(result.conversations)} conversations",
        ]
        st.success("Imported " + ", ".join(parts) + ".", icon=":material/check_circle:")
        left, right = st.columns(2)
        left.page_link("views/arena.py", label="Ask in the Arena", icon=":material/view_column:")
        right.page_link(
            "views/evaluate.py", label="Open the evaluations", icon=":material/fact_check:"
        )
