"""Chat: a streamed, multi-turn conversation with the base model."""

import itertools
from typing import Any

import streamlit as st

from core.errors import StudioError
from core.model import loops
from core.model.chat import ChatModel, Message
from views.support import resources, state, widgets
from views.support.widgets import markdown_escape


def show_history(history: list[dict[str, Any]]) -> None:
    """The conversation so far, with each answer's notices and timings."""
    for turn in history:
        with st.chat_message(turn["role"]):
            for notice in turn.get("notices", ()):
                st.warning(markdown_escape(notice), icon=":material/content_cut:")
            st.markdown(widgets.answer_markdown(turn["content"]))
            if turn.get("timings"):
                st.caption(turn["timings"])


def answer(model: ChatModel, history: list[dict[str, Any]], question: str) -> None:
    """The new question and its answer, streamed; both kept in the history."""
    history.append({"role": "user", "content": question.strip()})
    with st.chat_message("user"):
        st.markdown(question.strip())
    conversation: list[Message] = [{"role": t["role"], "content": t["content"]} for t in history]
    with st.chat_message("assistant"):
        try:
            stream = model.stream_chat(
                conversation, state.sampling_params(), st.session_state["chat_system_prompt"]
            )
            for notice in stream.notices:
                st.warning(markdown_escape(notice), icon=":material/content_cut:")
            pieces = iter(stream)
            # Reading a long conversation can take a while before the first word: say so.
            with st.spinner("Reading the conversation…", show_time=True):
                first = next(pieces, "")
            written = st.empty()
            with written:
                st.write_stream(
                    widgets.in_updates(widgets.answer_pieces(itertools.chain([first], pieces)))
                )
            answer = stream.answer
            assert answer is not None
            if answer.looped:  # cut back to its first time round, and said so
                written.markdown(widgets.answer_markdown(answer.text))
                st.warning(loops.NOTICE, icon=":material/repeat:")
            st.caption(answer.timings.summary())
            history.append(
                {
                    "role": "assistant",
                    "content": answer.text,
                    "timings": answer.timings.summary(),
                    "notices": list(answer.notices),
                }
            )
        except StudioError as error:
            history.pop()
            st.error(markdown_escape(error), icon=":material/error:")


def main() -> None:
    settings = resources.get_settings()
    st.title("Chat")
    st.caption(
        "Talk to the base model as it is: no documents, no fine-tuning. Later you will compare it "
        "with a tuned model and with answers that read your documents."
    )

    settings_column, button_column = st.columns([3, 1], vertical_alignment="top")
    with settings_column:
        widgets.answer_settings("chat")
    if button_column.button(
        "New chat", icon=":material/add_comment:", key="chat_new", width="stretch"
    ):
        st.session_state["chat_messages"] = []

    model = resources.chat_model(settings)

    history: list[dict] = st.session_state["chat_messages"]
    question = st.chat_input("Ask the model something", key="chat_input")
    if not history and not (question and question.strip()):
        st.info(
            "Ask anything, for example *What is the capital of France?* The model is small, so "
            "expect it to be right about common knowledge and to invent details about yours.",
            icon=":material/lightbulb:",
        )
    show_history(history)
    if question and question.strip():
        answer(model, history, question)


main()
