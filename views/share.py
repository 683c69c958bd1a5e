"""Share: export a demo bundle, import one, and links to saved reports and conversations."""

from datetime import datetime
from pathlib import Path

import streamlit as st

from core import adapters, arena, evaluate, share
from core.bundle import read_bundle
from core.errors import InvalidInputError, StudioError
from views import common
from views.common import markdown_escape

settings = common.get_settings()
st.title("Share")
st.caption(
    "Show what you built to a colleague, a manager or a class: export a demo as one file, and "
    "open it in another studio, where it is presented read-only."
)
store = common.knowledge_store(settings)


def size_text(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} KB"


def conversation_label(conversation_id: str) -> str:
    try:
        found = arena.load(settings, conversation_id)
    except InvalidInputError:
        return conversation_id
    first = found.exchanges[0].question if found.exchanges else "(empty)"
    when = datetime.fromtimestamp(found.created).strftime("%d %b %Y, %H:%M")
    return f"{first[:60]} · {when}"


conversation_ids = arena.conversation_ids(settings)
reports = [r for r in evaluate.list_reports(settings) if evaluate.status(r) != "running"]
adapter_list = [a for a in adapters.list_adapters(settings) if a.compatible]
by_adapter = {a.run_id: a for a in adapter_list}
kb_names = store.names()

export_tab, import_tab, links_tab = st.tabs(
    [
        ":material/ios_share: Export a demo",
        ":material/download: Import a demo",
        ":material/link: Links",
    ]
)

# -- export ----------------------------------------------------------------------------------------
with export_tab:
    if not (kb_names or adapter_list or reports or conversation_ids):
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
    else:
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
            format_func=conversation_label,
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
        if st.button(
            "Build the demo file",
            key="share_build",
            type="primary",
            icon=":material/archive:",
            disabled=not (chosen_kbs or chosen_adapters or chosen_reports or chosen_conversations),
        ):
            target = (
                settings.data_dir / "exports" / datetime.now().strftime("demo-%Y%m%d-%H%M%S.zip")
            )
            choice = share.ExportChoice(
                chosen_kbs, chosen_adapters, chosen_conversations, chosen_reports, include_files
            )
            try:
                with st.status("Building the demo file…", expanded=True) as status:
                    bar = st.progress(0.0)
                    share.export_bundle(
                        settings, store, choice, target, lambda f, m: bar.progress(f, text=m)
                    )
                    status.update(label="Demo file ready", state="complete", expanded=False)
            except StudioError as error:
                st.error(common.markdown_escape(error), icon=":material/error:")
            else:
                st.session_state["share_bundle"] = str(target)
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

# -- import ----------------------------------------------------------------------------------------
with import_tab:
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
                plan = share.plan_import(settings, bundle)
        except StudioError as error:
            st.error(common.markdown_escape(error), icon=":material/gpp_bad:")
        else:
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
                    "Replace the existing ones instead (they are deleted once the import is "
                    "complete)",
                    key="share_replace",
                )
            if st.button("Import", key="share_import", type="primary", icon=":material/download:"):
                try:
                    with st.status("Importing…", expanded=True) as status:
                        bar = st.progress(0.0)
                        result = share.import_bundle(
                            settings,
                            store,
                            bundle,  # checked above, in this same run
                            replace=replace,
                            progress=lambda f, m: bar.progress(f, text=markdown_escape(m)),
                        )
                        status.update(label="Imported", state="complete", expanded=False)
                except StudioError as error:
                    st.error(common.markdown_escape(error), icon=":material/error:")
                else:
                    st.session_state["share_upload_round"] += 1
                    st.session_state["share_imported"] = result
                    st.rerun()
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

# -- links -----------------------------------------------------------------------------------------
with links_tab:
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
            label=f"Conversation: {markdown_escape(conversation_label(conversation_id))}",
            icon=":material/view_column:",
            query_params={"conversation": conversation_id},
        )
        right.code(f"/arena?conversation={conversation_id}", language=None)
