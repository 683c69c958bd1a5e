"""Home: what the studio is for, when LoRA or RAG helps, and the state of this installation."""

import streamlit as st

from core.errors import StudioError
from core.knowledge.store import knowledge_base_names
from core.model import loading
from core.settings import Settings
from core.training.adapters import list_adapters
from core.training.jobs import active_run
from views.support import resources
from views.support.widgets import markdown_escape


def explain() -> None:
    """When LoRA, RAG or both help, in plain words."""
    st.title("LoRA-RAG Studio")
    st.markdown(
        "Should you **fine-tune** a model on your data, or **hand it your documents** when it "
        "answers? This studio lets you find out on your own data, in your browser, without code."
    )

    st.subheader("LoRA or RAG? When each one helps")
    rag, lora, hybrid = st.columns(3, border=True)
    with rag:
        st.markdown("#### :material/menu_book: RAG")
        st.markdown(
            "The model looks up passages from your documents before it answers.\n\n"
            "**Best for facts**, especially facts that change: prices, policies, manuals, "
            "product details. Answers can cite the file and page they came from, and updating "
            "knowledge is as simple as adding a document."
        )
    with lora:
        st.markdown("#### :material/tune: LoRA fine-tuning")
        st.markdown(
            "The model learns from examples of questions and answers.\n\n"
            "**Best for behaviour**: a tone of voice, an answer format, a persona, your domain's "
            "vocabulary. It is a poor way to teach new facts: a model needs many rephrasings of "
            "each fact, and it cannot say where an answer came from."
        )
    with hybrid:
        st.markdown("#### :material/join: Both")
        st.markdown(
            "A fine-tuned model that also reads retrieved passages.\n\n"
            "**Best when you need both**: your facts, in your style. It is not always better than "
            "RAG alone, which is why it pays to measure on your own questions."
        )
    st.caption(
        "Research agrees: for injecting new facts, retrieval beats fine-tuning consistently "
        "(Ovadia et al., 2023); fine-tuning shines at format and style."
    )


def next_steps(settings: Settings) -> None:
    """Where to go next: the demo's three pages, or the six steps of the studio."""
    if settings.read_only:
        st.subheader("This is a demo")
        st.markdown(
            "Someone prepared this studio to show what fine-tuning and RAG do on their data. It is "
            "read-only: ask questions and compare the answers, read the saved evaluations, search "
            "the documents. Nothing you do here changes it."
        )
        first, second, third = st.columns(3)
        first.page_link("views/arena.py", label="Ask in the Arena", icon=":material/view_column:")
        second.page_link(
            "views/evaluate.py", label="Read the evaluations", icon=":material/fact_check:"
        )
        third.page_link(
            "views/knowledge.py", label="Search the documents", icon=":material/library_books:"
        )
    else:
        st.subheader("Start here")
        st.markdown(
            "1. **Chat** with the base model: ask it about your field and see what it knows, "
            "and what it invents, before you give it anything.\n"
            "2. Build a **knowledge base**: drop your documents in and check that a search finds "
            "the right passages, with file and page.\n"
            "3. **Fine-tune** the model on examples of the behaviour you want, watch it learn, "
            "and ask it beside the base model.\n"
            "4. In the **Arena**, ask one question and compare four answers side by side: base, "
            "fine-tuned, RAG, and fine-tuned with RAG.\n"
            "5. **Evaluate** on your own questions with known answers: see which mode gets them "
            "right, and get a recommendation with its costs.\n"
            "6. **Share** what you built as a demo that others open read-only."
        )
        links = [
            ("views/chat.py", "Chat with the base model", ":material/chat:"),
            ("views/knowledge.py", "Build a knowledge base", ":material/library_books:"),
            ("views/finetune.py", "Fine-tune", ":material/model_training:"),
            ("views/arena.py", "Compare in the Arena", ":material/view_column:"),
            ("views/evaluate.py", "Evaluate and decide", ":material/fact_check:"),
            ("views/share.py", "Share a demo", ":material/share:"),
        ]
        for row in (links[:3], links[3:]):  # two rows of three: the labels stay whole
            for column, (page, label, icon) in zip(st.columns(3), row, strict=True):
                column.page_link(page, label=label, icon=icon)


def installation(settings: Settings) -> None:
    """The models, knowledge bases and adapters of this installation."""
    st.subheader("This installation")
    base, embedding = st.columns(2, border=True)
    with base:
        st.markdown("**Chat model**")
        try:
            source = loading.describe_model(settings.base_model, settings)
            name, note = (markdown_escape(t) for t in (source.display_name, source.note))
            st.markdown(f"{name}  \n:gray[{note}]")
            st.markdown(
                f"Runs on: {resources.device_text(settings)} · "
                f"weights: {resources.weights_text(settings)}"
            )
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
    with embedding:
        st.markdown("**Search model** (turns passages into vectors)")
        try:
            source = loading.describe_model(settings.embedding_model, settings)
            name, note = (markdown_escape(t) for t in (source.display_name, source.note))
            st.markdown(f"{name}  \n:gray[{note}]")
        except StudioError as error:
            st.error(markdown_escape(error), icon=":material/error:")
    st.markdown(f"**Answers come from** {markdown_escape(resources.engine_text(settings))}")
    knowledge_bases = knowledge_base_names(settings)
    where = (
        f"a Chroma server at {settings.chroma_host}:{settings.chroma_port}"
        if settings.chroma_host
        else "this machine"
    )
    st.markdown(f"**Knowledge bases:** {len(knowledge_bases)}, stored on {where}.")
    training = active_run(settings)
    st.markdown(
        f"**Adapters:** {len(list_adapters(settings))}"
        + (f"; training now: {markdown_escape(training.name)}" if training else "")
        + "."
    )
    if not settings.read_only:
        st.caption(f"Your data is kept in `{settings.data_dir.resolve()}`.")


def main() -> None:
    settings = resources.get_settings()
    explain()
    next_steps(settings)
    installation(settings)


main()
