"""Share: export a demo bundle, import one, and links to saved reports and conversations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import streamlit as st

from core.answering import conversations
from core.errors import InvalidInputError, StudioError
from core.evaluation import runner
from core.evaluation.results import Report
from core.knowledge.store import KnowledgeStore
from core.settings import Settings
from core.sharing import export
from core.training import adapters
from views.panels import share_import
from views.support import resources
from views.support.widgets import markdown_escape


def size_text(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} KB"


def conversation_label(settings: Settings, conversation_id: str) -> str:
    try:
        found = conversations.load(settings, conversation_id)
    except InvalidInputError:
        return conversation_id
    first = found.exchanges[0].question if found.exchanges else "(empty)"
    when = datetime.fromtimestamp(found.created).strftime("%d %b %Y, %H:%M")
    return f"{first[:60]} · {when}"


def nothing_to_share() -> None:
    """Where to go to make something worth sharing."""
    st.info(
        "Nothing to share yet: build a knowledge base, train an adapter or run an evaluation "
        "first.",
        icon=":material/info:",
    )
    for column, (page, label, icon) in zip(
        st.columns(3),
        [
            ("views/knowledge.py", "Build a knowledge base", ":material/library_books:"),
            ("views/finetune.py", "Fine-tune", ":material/model_training:"),
            ("views/evaluate.py", "Evaluate", ":material/fact_check:"),
        ],
        strict=True,
    ):
        column.page_link(page, label=label, icon=icon)


def export_form(settings: Settings, catalog: Catalog) -> export.ExportChoice:
    """What goes into the demo file."""
    kb_names, by_adapter = catalog.kb_names, catalog.by_adapter
    reports, conversation_ids = catalog.reports, catalog.conversation_ids
    left, right = st.columns(2)
    chosen_kbs = left.multiselect(
        "Knowledge bases",
        kb_names,
        default=kb_names,
        key="share_kbs",
        help="Passages, their vectors and the list of documents.",
    )
    chosen_adapters = right.multiselect(
        "Adapters",
        list(by_adapter),
        default=list(by_adapter),
        format_func=lambda run_id: by_adapter[run_id].name,
        key="share_adapters",
        help="Only the weights (safetensors), the adapter's configuration and its metadata: "
        "never the training data.",
    )
    left, right = st.columns(2)
    chosen_reports = left.multiselect(
        "Evaluation reports",
        [r.id for r in reports],
        default=[r.id for r in reports],
        format_func=lambda i: next(r.name for r in reports if r.id == i),
        key="share_reports",
    )
    chosen_conversations = right.multiselect(
        "Arena conversations",
        conversation_ids,
        default=conversation_ids[:20],
        format_func=lambda i: conversation_label(settings, i),
        key="share_conversations",
    )
    include_files = st.checkbox(
        "Include the original documents",
        value=True,
        key="share_include_files",
        help="Lets the demo show and rebuild them. Leave it off to share the passages only.",
    )
    st.caption(
        f"The demo answers with the chat model {settings.base_model} and the search model "
        f"{settings.embedding_model}; whoever opens it needs the same models (the embedded "
        "defaults come with every installation)."
    )
    return export.ExportChoice(
        chosen_kbs, chosen_adapters, chosen_conversations, chosen_reports, include_files
    )


def build_button(settings: Settings, store: KnowledgeStore, choice: export.ExportChoice) -> None:
    """Build the demo file, with progress; it is kept for this session to download."""
    if not st.button(
        "Build the demo file",
        key="share_build",
        type="primary",
        icon=":material/archive:",
        disabled=not (
            choice.knowledge_bases or choice.adapters or choice.evaluations or choice.conversations
        ),
    ):
        return
    target = settings.data_dir / "exports" / datetime.now().strftime("demo-%Y%m%d-%H%M%S.zip")
    try:
        with st.status("Building the demo file…", expanded=True) as status:
            bar = st.progress(0.0)
            export.export_bundle(
                settings, store, choice, target, lambda f, m: bar.progress(f, text=m)
            )
            status.update(label="Demo file ready", state="complete", expanded=False)
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
    else:
        st.session_state["share_bundle"] = str(target)


def built_file(settings: Settings) -> None:
    """The demo file built in this session: its download and how to present it."""
    built = st.session_state.get("share_bundle")
    if built and Path(built).is_file():
        path = Path(built)
        st.success(
            f"**{path.name}** is ready ({size_text(path.stat().st_size)}).",
            icon=":material/check_circle:",
        )
        st.download_button(
            "Download the demo file",
            data=path.read_bytes,
            file_name=path.name,
            mime="application/zip",
            icon=":material/download:",
            on_click="ignore",
            key="share_download",
        )
        st.markdown(
            "To present it read-only, start a studio with it:\n\n"
            f"```bash\nLRS_DEMO_BUNDLE={path.name} make run\n```\n"
            "Add `LRS_DEMO_PASSWORD=...` to ask visitors for a password. Or import it "
            "into another studio on the *Import a demo* tab there."
        )


def links_tab(reports: list[Report], conversation_ids: list[str], settings: Settings) -> None:
    """A link to every saved evaluation and arena conversation."""
    st.caption(
        "Every saved evaluation and arena conversation has a link of its own: copy it from the "
        "browser's address bar after opening it, or send the path below with this studio's "
        "address in front."
    )
    if not reports and not conversation_ids:
        st.info("No saved evaluation or conversation yet.", icon=":material/link_off:")
    for report in reports[:50]:
        left, right = st.columns([3, 2], vertical_alignment="center")
        left.page_link(
            "views/evaluate.py",
            label=f"Evaluation: {markdown_escape(report.name)} · "
            + datetime.fromtimestamp(report.created).strftime("%d %b %Y, %H:%M"),
            icon=":material/fact_check:",
            query_params={"report": report.id},
        )
        right.code(f"/evaluate?report={report.id}", language=None)
    for conversation_id in conversation_ids[:50]:
        left, right = st.columns([3, 2], vertical_alignment="center")
        left.page_link(
            "views/arena.py",
            label=f"Conversation: {markdown_escape(conversation_label(settings, conversation_id))}",
            icon=":material/view_column:",
            query_params={"conversation": conversation_id},
        )
        right.code(f"/arena?conversation={conversation_id}", language=None)


@dataclass
class Catalog:
    """What this studio holds that a demo can carry."""

    kb_names: list[str]
    by_adapter: dict[str, adapters.AdapterInfo]
    reports: list[Report]
    conversation_ids: list[str]

    @classmethod
    def read(cls, settings: Settings, store: KnowledgeStore) -> Catalog:
        return cls(
            store.names(),
            {a.run_id: a for a in adapters.list_adapters(settings) if a.compatible},
            [r for r in runner.list_reports(settings) if runner.status(r) != "running"],
            conversations.conversation_ids(settings),
        )

    @property
    def empty(self) -> bool:
        return not (self.kb_names or self.by_adapter or self.reports or self.conversation_ids)


def main() -> None:
    settings = resources.get_settings()
    st.title("Share")
    st.caption(
        "Show what you built to a colleague, a manager or a class: export a demo as one file, "
        "and open it in another studio, where it is presented read-only."
    )
    store = resources.knowledge_store(settings)
    catalog = Catalog.read(settings, store)
    export_tab, import_tab_, links_tab_ = st.tabs(
        [
            ":material/ios_share: Export a demo",
            ":material/download: Import a demo",
            ":material/link: Links",
        ]
    )
    with export_tab:
        if catalog.empty:
            nothing_to_share()
        else:
            build_button(settings, store, export_form(settings, catalog))
            built_file(settings)
    with import_tab_:
        share_import.import_tab(settings, store)
    with links_tab_:
        links_tab(catalog.reports, catalog.conversation_ids, settings)


main()
