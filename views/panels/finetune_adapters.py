"""The Fine-tune page's adapters: try one beside the base model, and a card per adapter
(rename, download, delete)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import streamlit as st

from core.answering import round as question_round
from core.errors import StudioError
from core.settings import Settings
from core.training import adapters, model_export
from core.training.config import PRESETS
from core.wording import format_duration
from views.panels.finetune_run import check_panel, loss_chart
from views.support import resources, state, widgets
from views.support.widgets import markdown_escape


def try_it(settings: Settings, choices: list[adapters.AdapterInfo]) -> None:
    """One question, the base answer beside the tuned answer."""
    st.subheader("Try it")
    by_id = {a.run_id: a for a in choices}
    chosen = widgets.adapter_picker(st, choices, "ft_try_adapter", "The adapter to try.")
    picked = by_id[str(chosen)]
    with st.form("ft_try_form", border=False):
        question_column, ask_column = st.columns([5, 1], vertical_alignment="bottom")
        question = question_column.text_input(
            "Question", key="ft_try_question", placeholder="What is your name?"
        )
        asked = ask_column.form_submit_button("Ask both", icon=":material/send:", width="stretch")
    if not asked:
        st.caption(
            "Ask something your examples teach, and see the base model and the tuned model "
            "answer the same question with the same settings."
        )
        return
    if not question.strip():
        st.warning("Type a question first.")
        return
    model = resources.chat_model(settings)
    with st.spinner("Loading the adapter…"):
        adapter, problem = question_round.attach_adapter(settings, model, picked.run_id)
    if adapter is None:
        st.error(markdown_escape(problem), icon=":material/error:")
        return
    # The base model answers under the adapter's instructions too: the same question, the same
    # settings, only the adapter differs.
    asked = question_round.prepare(
        question.strip(), ["base", "tuned"], system_prompt=adapter.system_prompt, adapter=adapter
    )
    try:
        question_round.start(model, [asked], state.sampling_params())
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        return
    columns = st.columns(2, border=True)
    slots = []
    for column, label in zip(columns, ("Base model", f"Tuned: {picked.name}"), strict=True):
        column.markdown(f"**{markdown_escape(label)}**")
        slots.append(column.empty())
    streams = [asked.streams["base"], asked.streams["tuned"]]
    errors = widgets.stream_side_by_side(slots, streams)
    for column, stream, error in zip(columns, streams, errors, strict=True):
        if error:
            column.error(error, icon=":material/error:")
        elif stream.answer is not None:
            column.caption(stream.answer.timings.summary())


def adapter_card(settings: Settings, adapter: adapters.AdapterInfo) -> None:
    key = adapter.run_id
    with st.container(border=True):
        title, badge = st.columns([4, 1])
        title.markdown(f"**{markdown_escape(adapter.name)}**")
        if not adapter.compatible:
            badge.badge("Incompatible", icon=":material/block:", color="red")
        when = datetime.fromtimestamp(adapter.created).strftime("%Y-%m-%d %H:%M")
        loss = (
            f" · held-out loss {adapter.final_eval_loss:.3f}"
            if adapter.final_eval_loss is not None
            else ""
        )
        st.caption(
            f"{when} · from {markdown_escape(adapter.dataset_name)} · "
            f"{PRESETS[adapter.preset].label if adapter.preset in PRESETS else 'custom'} · "
            f"trained in {format_duration(adapter.duration_s)} · "
            f"{adapter.size_bytes / 1e6:.1f} MB{loss}"
        )
        if not adapter.compatible:
            st.caption(markdown_escape(adapter.incompatibility))
        if adapter.reads_documents:
            st.caption(
                "Trained to read your documents: pick it in the Arena or on Evaluate, and its "
                "Fine-tuned + RAG answers read the passages with it."
            )
        check_panel(adapter.check, compact=True)
        with st.expander("Loss curve", icon=":material/show_chart:"):
            loss_chart(adapter.train_loss, adapter.eval_loss)
        if adapter.compatible:
            with st.expander("Take it out of the studio", icon=":material/output:"):
                take_away(settings, adapter)
        rename, download, delete = st.columns(3)
        with rename.popover("Rename", icon=":material/edit:", width="stretch"):
            new_name = st.text_input("New name", value=adapter.name, key=f"ft_rename_to_{key}")
            if st.button("Rename", key=f"ft_rename_{key}", type="primary"):
                try:
                    adapters.rename(settings, key, new_name)
                except StudioError as error:
                    st.error(markdown_escape(error))
                else:
                    st.rerun()
        download.download_button(
            "Adapter (.zip)",
            data=lambda: adapters.zip_bytes(settings, key),
            file_name=f"adapter-{key}.zip",
            mime="application/zip",
            key=f"ft_download_{key}",
            icon=":material/download:",
            on_click="ignore",
            width="stretch",
            help="The LoRA adapter alone (PEFT's files): for transformers + PEFT or a vLLM "
            "server with the same base model.",
        )
        with delete.popover("Delete", icon=":material/delete:", width="stretch"):
            sure = st.checkbox(
                f"Yes, delete '{markdown_escape(adapter.name)}'", key=f"ft_delete_sure_{key}"
            )
            if st.button("Delete adapter", key=f"ft_delete_{key}", disabled=not sure):
                adapters.delete(settings, key)
                st.toast(
                    f"Deleted the adapter '{markdown_escape(adapter.name)}'.",
                    icon=":material/delete:",
                )
                st.rerun()


def take_away(settings: Settings, adapter: adapters.AdapterInfo) -> None:
    """The tuned model as files other tools run: merged weights, and GGUF for llama.cpp and
    Ollama. Made once on request (with progress), then offered for download."""
    key = adapter.run_id
    st.caption(
        "The base model with this adapter merged into its weights: a model folder that "
        "transformers loads with `from_pretrained`, and a GGUF file with a ready Ollama "
        "Modelfile for llama.cpp and Ollama (weights in 8 bits)."
    )
    made = model_export.exported(settings, key)
    problem = model_export.gguf_support(settings)
    if made.merged_zip is None or (made.gguf_zip is None and not problem):
        if not st.button("Make the files", key=f"ft_export_{key}", icon=":material/build:"):
            if problem:
                st.info(markdown_escape(problem), icon=":material/info:")
            return
        bar = st.progress(0.0, text="Starting")
        try:
            for step in model_export.export(settings, key):
                bar.progress(step.fraction, text=step.message)
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
            return
        st.rerun()  # the downloads in place of the button and the progress bar
    merged_column, gguf_column = st.columns(2)
    if made.merged_zip is not None:
        _download_file(
            merged_column, "Merged model (.zip)", made.merged_zip, f"merged-model-{key}.zip", key
        )
    if made.gguf_zip is not None:
        _download_file(
            gguf_column, "GGUF + Modelfile (.zip)", made.gguf_zip, f"gguf-{key}.zip", key
        )
    elif problem:
        gguf_column.info(markdown_escape(problem), icon=":material/info:")


def _download_file(column, label: str, path: Path, file_name: str, key: str) -> None:  # type: ignore[no-untyped-def]
    size = path.stat().st_size / 1e6
    column.download_button(
        f"{label} · {size:,.0f} MB",
        data=lambda: path.read_bytes(),
        file_name=file_name,
        mime="application/zip",
        key=f"ft_download_{file_name}_{key}",
        icon=":material/download:",
        on_click="ignore",
        width="stretch",
    )
