"""Arena: one question, up to four answers side by side (base, fine-tuned, RAG, both).

The question round itself (retrieval, requests, one batch) is core.answering.round; this page
keeps the choices, the columns and the streaming."""

from __future__ import annotations

import secrets
from contextlib import nullcontext
from dataclasses import dataclass

import streamlit as st

from core.answering import conversations
from core.answering import round as question_round
from core.answering.conversations import BLIND_LABELS, Conversation
from core.answering.modes import MODES, NO_PASSAGES, available, missing
from core.errors import InvalidInputError, StudioError
from core.knowledge.store import KnowledgeStore
from core.model.chat import ChatModel
from core.settings import Settings
from core.training import adapters
from core.training.adapters import AdapterInfo
from core.wording import plural
from views.panels import arena_exchange
from views.support import resources, state, widgets
from views.support.widgets import markdown_escape

EXPORTS: list[widgets.Export] = [
    ("Markdown", conversations.to_markdown, "md", "text/markdown", ":material/download:"),
    ("JSON", conversations.to_json, "json", "application/json", ":material/data_object:"),
]


@dataclass
class Choices:
    """What this run of the page answers with."""

    settings: Settings
    store: KnowledgeStore
    adapter: AdapterInfo | None
    kb_name: str | None
    modes: list[str]
    blind: bool

    def missing(self, key: str) -> str:
        """Why mode `key` cannot answer now ("adapter", "knowledge"), or ''."""
        return missing(key, self.adapter is not None, self.kb_name is not None)


def new_conversation() -> None:
    st.session_state["arena_conversation"] = None
    st.query_params.pop("conversation", None)


def open_linked_conversation(
    settings: Settings, by_adapter: dict[str, AdapterInfo], kb_names: list[str]
) -> None:
    """A saved conversation named in the link (`?conversation=<id>`), opened once."""
    linked = st.query_params.get("conversation")
    current = st.session_state["arena_conversation"]
    if not linked or (current is not None and current.id == linked):
        return
    try:
        found = conversations.load(settings, linked)
    except InvalidInputError:
        st.warning("The conversation in this link was not found.", icon=":material/link_off:")
        st.query_params.pop("conversation", None)
        return
    st.session_state["arena_conversation"] = found
    if found.adapter in by_adapter:
        st.session_state["arena_adapter"] = found.adapter
    if found.knowledge_base in kb_names:
        st.session_state["arena_kb"] = found.knowledge_base


def choices(settings: Settings, store: KnowledgeStore) -> Choices:
    """The adapter, knowledge base, modes and blind toggle at the top of the page."""
    adapter_list = [a for a in adapters.list_adapters(settings) if a.compatible]
    by_adapter = {a.run_id: a for a in adapter_list}
    kb_names = store.names()
    open_linked_conversation(settings, by_adapter, kb_names)
    left, middle, blind_column, new_column = st.columns(
        [3, 3, 1.4, 1.6], vertical_alignment="bottom"
    )
    adapter_id = widgets.adapter_picker(
        left,
        adapter_list,
        "arena_adapter",
        "The LoRA adapter of the fine-tuned answers.",
        on_change=new_conversation,
    )
    if adapter_id is None:
        left.caption("No adapter yet.")
    kb_name = widgets.knowledge_picker(
        middle,
        kb_names,
        "arena_kb",
        "Where the RAG answers look up passages.",
        on_change=new_conversation,
    )
    if kb_name is None:
        middle.caption("No knowledge base yet.")
    picked = st.pills(
        "Answers to show",
        list(MODES),
        selection_mode="multi",
        format_func=lambda key: MODES[key].label,
        key="arena_modes",
        on_change=new_conversation,
    )
    if settings.read_only:
        st.session_state["arena_blind"] = False  # votes are stored: not in a read-only demo
    else:
        blind_column.toggle(
            "Blind mode",
            key="arena_blind",
            on_change=new_conversation,
            help="Hide which answer is which, vote for the best, then see the labels.",
        )
    new_column.button(
        "New conversation",
        icon=":material/add_comment:",
        key="arena_new",
        on_click=new_conversation,
        width="stretch",
    )
    widgets.answer_settings("arena")
    return Choices(
        settings,
        store,
        by_adapter.get(adapter_id) if adapter_id else None,
        kb_name,
        [key for key in MODES if key in (picked or [])],
        bool(st.session_state["arena_blind"]),
    )


def welcome(choice: Choices) -> None:
    st.info(
        "Ask something your documents or your training data answer, for example *What is the "
        "refund period?* Each column answers the same question its own way.",
        icon=":material/lightbulb:",
    )
    if choice.blind:
        return
    columns = st.columns(len(choice.modes), border=True)
    for column, key in zip(columns, choice.modes, strict=True):
        with column:
            st.markdown(f"**{MODES[key].label}**")
            st.caption(MODES[key].description)
            if reason := choice.missing(key):
                arena_exchange.show_missing(choice.settings, reason)


def leaderboard(settings: Settings) -> None:
    board = conversations.leaderboard(settings)
    if not any(row["votes"] for row in board):
        return
    with st.expander("Blind leaderboard", icon=":material/leaderboard:", expanded=False):
        st.dataframe(
            [
                {
                    "Answer": row["label"],
                    "Wins": row["wins"],
                    "Votes it was in": row["votes"],
                    "Win rate": f"{row['win_rate']:.0%}",
                }
                for row in board
            ],
            hide_index=True,
            key="arena_leaderboard",
        )


def start_conversation(choice: Choices, model_name: str) -> Conversation:
    adapter = choice.adapter
    conversation = Conversation(
        model=model_name,
        adapter=adapter.run_id if adapter else "",
        adapter_name=adapter.name if adapter else "",
        knowledge_base=choice.kb_name or "",
        params={
            "temperature": st.session_state["arena_temperature"],
            "top_p": st.session_state["arena_top_p"],
            "max_new_tokens": st.session_state["arena_max_new_tokens"],
        },
    )
    st.session_state["arena_conversation"] = conversation
    return conversation


def prepare_round(
    choice: Choices, model: ChatModel, conversation: Conversation, question: str
) -> question_round.Round:
    """The adapter loaded and the knowledge base searched, with progress; every request built."""
    adapter, problem = None, ""
    if choice.adapter is not None and any(MODES[k].uses_adapter for k in choice.modes):
        with st.spinner("Loading the adapter…"):
            adapter, problem = question_round.attach_adapter(
                choice.settings, model, choice.adapter.run_id
            )
    kb, kb_problem = None, ""
    if choice.kb_name is not None and any(MODES[k].uses_passages for k in choice.modes):
        try:
            kb = choice.store.open(choice.kb_name)
        except StudioError as error:
            kb_problem = str(error)
    with st.spinner("Searching the knowledge base…") if kb is not None else nullcontext():
        return question_round.prepare(
            question,
            choice.modes,
            conversation=conversation,
            system_prompt=st.session_state["arena_system_prompt"],
            adapter=adapter,
            adapter_problem=problem,
            kb=kb,
            kb_problem=kb_problem,
            top_k=int(st.session_state["kb_top_k"]),
        )


def stream_round(choice: Choices, asked: question_round.Round, order: list[str]) -> dict[str, str]:
    """The columns of a new question, its answers growing in them; the errors that ended any."""
    with st.chat_message("user"):
        st.markdown(markdown_escape(asked.question))
    if asked.passages and not choice.blind:
        st.caption(
            f"Retrieved {plural(len(asked.passages), 'passage')} in {asked.retrieval_s:.2f} s."
        )
    columns = st.columns(len(order), border=True)
    slots = {}
    for place, (column, key) in enumerate(zip(columns, order, strict=True)):
        with column:
            st.markdown(f"**{BLIND_LABELS[place] if choice.blind else MODES[key].label}**")
            if key in asked.unavailable:
                arena_exchange.show_missing(choice.settings, asked.unavailable[key])
                continue
            if key in asked.problems:
                st.error(markdown_escape(asked.problems[key]), icon=":material/error:")
            elif MODES[key].uses_passages and not asked.passages:
                st.warning(NO_PASSAGES, icon=":material/search_off:")
            stream = asked.streams.get(key)
            for notice in stream.notices if stream is not None else ():
                st.warning(markdown_escape(notice), icon=":material/content_cut:")
            slots[key] = st.empty()
    live = list(asked.streams)
    errors = widgets.stream_side_by_side([slots[k] for k in live], [asked.streams[k] for k in live])
    return dict(zip(live, errors, strict=True))


def ask(
    choice: Choices, model: ChatModel, conversation: Conversation | None, question: str
) -> None:
    """A new question, answered in every chosen mode at once, then saved."""
    if conversation is None:
        conversation = start_conversation(choice, model.name)
    if not available(choice.modes, choice.adapter is not None, choice.kb_name is not None):
        st.warning(
            "None of the chosen answers can be given yet: see what each column needs above.",
            icon=":material/block:",
        )
        st.stop()
    asked = prepare_round(choice, model, conversation, question)
    try:
        question_round.start(model, [asked], state.sampling_params("arena"))
    except StudioError as error:
        st.error(markdown_escape(error), icon=":material/error:")
        st.stop()
    # Out of blind mode, the modes that cannot answer yet keep their column, saying what to do.
    can_answer = [key for key in choice.modes if key not in asked.unavailable]
    order = (
        conversations.blind_order(can_answer, secrets.randbelow(1 << 30))
        if choice.blind
        else choice.modes
    )
    errors = stream_round(choice, asked, order)
    exchange = question_round.finish(asked, errors, order if choice.blind else ())
    conversation.exchanges.append(exchange)
    if not choice.settings.read_only:  # a demo's visitors leave nothing behind
        conversations.save(choice.settings, conversation)
        st.query_params["conversation"] = conversation.id  # this page's link opens it again
    st.rerun()


def main() -> None:
    settings = resources.get_settings()
    st.title("Arena")
    st.caption(
        "Ask one question and compare the answers side by side: the base model, your fine-tuned "
        "model, the base model reading your documents (RAG), and the fine-tuned model reading "
        "them. Same question, same settings, generated together."
    )
    choice = choices(settings, resources.knowledge_store(settings))
    if not choice.modes:
        st.info("Choose at least one kind of answer to show.", icon=":material/view_column:")
        return
    model = resources.chat_model(settings)
    conversation: Conversation | None = st.session_state["arena_conversation"]
    # Read first (it is drawn at the bottom wherever it is called): the welcome gives way at once.
    question = (st.chat_input("Ask all of them", key="arena_input") or "").strip()
    if conversation is not None and conversation.exchanges:
        widgets.download_buttons(conversation, EXPORTS, f"arena-{conversation.id}", "arena_export")
        for number in range(len(conversation.exchanges)):
            arena_exchange.show_exchange(settings, conversation, number)
    elif not question:
        welcome(choice)
    if choice.blind:
        leaderboard(settings)
    if question:
        ask(choice, model, conversation, question)


main()
