"""The Arena's finished exchanges: a column per mode, its answer, timings, sources and prompt,
and in blind mode the vote."""

from __future__ import annotations

import streamlit as st

from core.answering import conversations
from core.answering.conversations import BLIND_LABELS, Conversation, Exchange, ModeAnswer
from core.answering.modes import MODES, UNAVAILABLE
from core.settings import Settings
from core.wording import plural
from views.support import widgets
from views.support.widgets import markdown_escape


def show_missing(settings: Settings, reason: str) -> None:
    if settings.read_only:
        st.info(f"This demo has no {'adapter' if reason == 'adapter' else 'knowledge base'}.")
    elif reason == "adapter":
        st.info(UNAVAILABLE[reason], icon=":material/school:")
        st.page_link("views/finetune.py", label="Go to Fine-tune", icon=":material/arrow_forward:")
    else:
        st.info(UNAVAILABLE[reason], icon=":material/library_books:")
        st.page_link(
            "views/knowledge.py", label="Go to Knowledge base", icon=":material/arrow_forward:"
        )


def timing_line(answer: ModeAnswer) -> str:
    return (
        f"First token {answer.time_to_first_token_s:.2f} s · {answer.tokens_per_s:.1f} tokens/s · "
        f"{answer.total_s:.1f} s in all · {answer.new_tokens} tokens"
    )


def column_title(exchange: Exchange, key: str, place: int) -> str:
    if exchange.blind_order and not exchange.vote:
        return f"Answer {BLIND_LABELS[place]}"
    if exchange.blind_order:
        return f"Answer {BLIND_LABELS[place]} · {MODES[key].label}"
    return MODES[key].label


def vote_button(settings: Settings, conversation: Conversation, number: int, key: str) -> None:
    exchange = conversation.exchanges[number]
    place = exchange.blind_order.index(key)
    if st.button(
        "This one is best",
        key=f"arena_vote_{number}_{key}",
        icon=":material/thumb_up:",
        width="stretch",
    ):
        conversations.record_vote(settings, exchange, key)
        conversations.save(settings, conversation)
        st.toast(f"Voted: answer {BLIND_LABELS[place]} was {MODES[key].label}.")
        st.rerun()


def show_answer(exchange: Exchange, key: str, hidden: bool) -> None:
    """One finished answer in its column (the vote button apart)."""
    answer = exchange.answers[key]
    for notice in answer.notices:
        st.warning(markdown_escape(notice), icon=":material/info:")
    if answer.error:
        st.error(answer.error, icon=":material/error:")
    if answer.text:
        st.markdown(widgets.answer_markdown(answer.text))
    if hidden:
        return
    if answer.new_tokens:
        st.caption(timing_line(answer))
    if MODES[key].uses_passages and exchange.passages:
        widgets.sources(exchange.passages, scores=True)
    if answer.prompt:
        with st.expander("Prompt", icon=":material/description:"):
            st.code(answer.prompt, language=None, wrap_lines=True)
    if exchange.vote == key:
        st.badge("Your vote", icon=":material/thumb_up:", color="green")


def show_exchange(settings: Settings, conversation: Conversation, number: int) -> None:
    exchange = conversation.exchanges[number]
    with st.chat_message("user"):
        st.markdown(markdown_escape(exchange.question))
    hidden = bool(exchange.blind_order) and not exchange.vote
    order = exchange.blind_order or list(exchange.answers)
    if exchange.passages and not hidden:
        found = plural(len(exchange.passages), "passage")
        st.caption(
            f"Retrieved {found} in {exchange.retrieval_s:.2f} s "
            f"from {markdown_escape(conversation.knowledge_base)}."
        )
    columns = st.columns(len(order), border=True)
    for place, (column, key) in enumerate(zip(columns, order, strict=True)):
        with column:
            st.markdown(f"**{column_title(exchange, key, place)}**")
            if exchange.answers[key].unavailable:
                show_missing(settings, exchange.answers[key].unavailable)
                continue
            show_answer(exchange, key, hidden)
            if hidden:
                vote_button(settings, conversation, number, key)
