"""Arena: one question, up to four answers side by side (base, fine-tuned, RAG, both)."""

import secrets

import streamlit as st

from core import adapters, arena
from core.arena import MODES, Conversation, Exchange
from core.errors import InvalidInputError, StudioError
from core.retrieve import search
from views import common
from views.common import markdown_escape

settings = common.get_settings()
st.title("Arena")
st.caption(
    "Ask one question and compare the answers side by side: the base model, your fine-tuned "
    "model, the base model reading your documents (RAG), and the fine-tuned model reading them. "
    "Same question, same settings, generated together."
)
store = common.knowledge_store(settings)
adapter_list = [a for a in adapters.list_adapters(settings) if a.compatible]
by_adapter = {a.run_id: a for a in adapter_list}
kb_names = store.names()


def new_conversation() -> None:
    st.session_state["arena_conversation"] = None
    st.query_params.pop("conversation", None)


def open_linked_conversation() -> None:
    """A saved conversation named in the link (`?conversation=<id>`), opened once."""
    linked = st.query_params.get("conversation")
    current = st.session_state["arena_conversation"]
    if not linked or (current is not None and current.id == linked):
        return
    try:
        found = arena.load(settings, linked)
    except InvalidInputError:
        st.warning("The conversation in this link was not found.", icon=":material/link_off:")
        st.query_params.pop("conversation", None)
        return
    st.session_state["arena_conversation"] = found
    if found.adapter in by_adapter:
        st.session_state["arena_adapter"] = found.adapter
    if found.knowledge_base in kb_names:
        st.session_state["arena_kb"] = found.knowledge_base


open_linked_conversation()


# -- choices ------------------------------------------------------------------------------------
left, middle, blind_column, new_column = st.columns([3, 3, 1.4, 1.6], vertical_alignment="bottom")
adapter_id = None
if adapter_list:
    if st.session_state.get("arena_adapter") not in by_adapter:
        st.session_state["arena_adapter"] = adapter_list[0].run_id
    adapter_id = left.selectbox(
        "Adapter",
        list(by_adapter),
        format_func=lambda run_id: by_adapter[run_id].name,
        key="arena_adapter",
        on_change=new_conversation,
        help="The LoRA adapter of the fine-tuned answers.",
    )
else:
    left.caption("No adapter yet.")
kb_name = None
if kb_names:
    if st.session_state.get("arena_kb") not in kb_names:
        st.session_state["arena_kb"] = kb_names[0]
    kb_name = middle.selectbox(
        "Knowledge base",
        kb_names,
        key="arena_kb",
        on_change=new_conversation,
        help="Where the RAG answers look up passages.",
    )
else:
    middle.caption("No knowledge base yet.")
modes = st.pills(
    "Answers to show",
    list(MODES),
    selection_mode="multi",
    format_func=lambda key: MODES[key].label,
    key="arena_modes",
    on_change=new_conversation,
)
modes = [key for key in MODES if key in (modes or [])]

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
common.answer_settings("arena")

if not modes:
    st.info("Choose at least one kind of answer to show.", icon=":material/view_column:")
    st.stop()

model = common.chat_model(settings)
conversation: Conversation | None = st.session_state["arena_conversation"]
blind = bool(st.session_state["arena_blind"])


def missing(key: str) -> str:
    """Why a mode cannot answer now, or ''."""
    mode = MODES[key]
    if mode.uses_adapter and adapter_id is None:
        return "adapter"
    if mode.uses_passages and kb_name is None:
        return "knowledge"
    return ""


def show_missing(reason: str) -> None:
    if settings.read_only:
        st.info(f"This demo has no {'adapter' if reason == 'adapter' else 'knowledge base'}.")
    elif reason == "adapter":
        st.info(arena.UNAVAILABLE[reason], icon=":material/school:")
        st.page_link("views/finetune.py", label="Go to Fine-tune", icon=":material/arrow_forward:")
    else:
        st.info(arena.UNAVAILABLE[reason], icon=":material/library_books:")
        st.page_link(
            "views/knowledge.py", label="Go to Knowledge base", icon=":material/arrow_forward:"
        )


def timing_line(answer: arena.ModeAnswer) -> str:
    return (
        f"First token {answer.time_to_first_token_s:.2f} s · {answer.tokens_per_s:.1f} tokens/s · "
        f"{answer.total_s:.1f} s in all · {answer.new_tokens} tokens"
    )


def show_sources(passages: list[dict]) -> None:
    with st.expander(f"Sources ({len(passages)})", icon=":material/menu_book:"):
        for number, passage in enumerate(passages, 1):
            match = (
                f" · match {passage['similarity']:.2f}"
                if passage.get("similarity") is not None
                else ""
            )
            st.markdown(
                f"**[{number}] {markdown_escape(passage['citation'])}** · score "
                f"{passage['score']:.3f}{match}"
            )
            st.markdown(markdown_escape(passage["text"]))


def column_title(exchange: Exchange, key: str, place: int) -> str:
    if exchange.blind_order and not exchange.vote:
        return f"Answer {arena.BLIND_LABELS[place]}"
    if exchange.blind_order:
        return f"Answer {arena.BLIND_LABELS[place]} · {MODES[key].label}"
    return MODES[key].label


def show_exchange(number: int, exchange: Exchange) -> None:
    with st.chat_message("user"):
        st.markdown(markdown_escape(exchange.question))
    hidden = bool(exchange.blind_order) and not exchange.vote
    order = exchange.blind_order or list(exchange.answers)
    if exchange.passages and not hidden:
        st.caption(
            f"Retrieved {len(exchange.passages)} passages in {exchange.retrieval_s:.2f} s "
            f"from {markdown_escape(conversation.knowledge_base if conversation else '')}."
        )
    columns = st.columns(len(order), border=True)
    for place, (column, key) in enumerate(zip(columns, order, strict=True)):
        answer = exchange.answers[key]
        with column:
            st.markdown(f"**{column_title(exchange, key, place)}**")
            if answer.unavailable:
                show_missing(answer.unavailable)
                continue
            for notice in answer.notices:
                st.warning(common.markdown_escape(notice), icon=":material/info:")
            if answer.error:
                st.error(answer.error, icon=":material/error:")
            if answer.text:
                st.markdown(common.answer_markdown(answer.text))
            if hidden:
                if st.button(
                    "This one is best",
                    key=f"arena_vote_{number}_{key}",
                    icon=":material/thumb_up:",
                    width="stretch",
                ):
                    arena.record_vote(settings, exchange, key)
                    arena.save(settings, conversation)  # type: ignore[arg-type]
                    st.toast(f"Voted: answer {arena.BLIND_LABELS[place]} was {MODES[key].label}.")
                    st.rerun()
                continue
            if answer.new_tokens:
                st.caption(timing_line(answer))
            if MODES[key].uses_passages and exchange.passages:
                show_sources(exchange.passages)
            if answer.prompt:
                with st.expander("Prompt", icon=":material/description:"):
                    st.code(answer.prompt, language=None, wrap_lines=True)
            if exchange.vote == key:
                st.badge("Your vote", icon=":material/thumb_up:", color="green")


# -- the conversation so far -----------------------------------------------------------------------
# Read first (it is drawn at the bottom wherever it is called): the welcome gives way at once.
question = (st.chat_input("Ask all of them", key="arena_input") or "").strip()
if conversation is not None and conversation.exchanges:
    exports = (
        ("Markdown", arena.to_markdown, "md", "text/markdown", ":material/download:"),
        ("JSON", arena.to_json, "json", "application/json", ":material/data_object:"),
    )
    for column, (label, render, suffix, mime, icon) in zip(
        st.columns([1, 1, 3]), exports, strict=False
    ):
        column.download_button(
            f"Download {label}",
            data=lambda render=render: render(conversation),
            file_name=f"arena-{conversation.id}.{suffix}",
            mime=mime,
            icon=icon,
            on_click="ignore",
            key=f"arena_export_{suffix}",
        )
    for number, exchange in enumerate(conversation.exchanges):
        show_exchange(number, exchange)
elif not question:
    st.info(
        "Ask something your documents or your training data answer, for example *What is the "
        "refund period?* Each column answers the same question its own way.",
        icon=":material/lightbulb:",
    )
    if not blind:
        columns = st.columns(len(modes), border=True)
        for column, key in zip(columns, modes, strict=True):
            with column:
                st.markdown(f"**{MODES[key].label}**")
                st.caption(MODES[key].description)
                if reason := missing(key):
                    show_missing(reason)

if blind:
    board = arena.leaderboard(settings)
    if any(row["votes"] for row in board):
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

# -- a new question ------------------------------------------------------------------------------
if not question:
    st.stop()
if conversation is None:
    adapter = by_adapter.get(adapter_id) if adapter_id else None
    conversation = Conversation(
        model=model.name,
        adapter=adapter.run_id if adapter else "",
        adapter_name=adapter.name if adapter else "",
        knowledge_base=kb_name or "",
        params={
            "temperature": st.session_state["arena_temperature"],
            "top_p": st.session_state["arena_top_p"],
            "max_new_tokens": st.session_state["arena_max_new_tokens"],
        },
    )
    st.session_state["arena_conversation"] = conversation

runnable = [key for key in modes if not missing(key)]
if not runnable:
    st.warning(
        "None of the chosen answers can be given yet: see what each column needs above.",
        icon=":material/block:",
    )
    st.stop()
problems: dict[str, str] = {key: "" for key in runnable}
adapter_info = by_adapter.get(adapter_id) if adapter_id else None
if adapter_info is not None and any(MODES[k].uses_adapter for k in runnable):
    try:
        with st.spinner("Loading the adapter…"):
            adapters.attach(model, settings, adapter_info.run_id)
    except StudioError as error:
        for key in runnable:
            if MODES[key].uses_adapter:
                problems[key] = str(error)

passages = []
retrieval_s = 0.0
if kb_name is not None and any(MODES[k].uses_passages for k in runnable):
    try:
        with st.spinner("Searching the knowledge base…"):
            result = search(store.open(kb_name), question, int(st.session_state["kb_top_k"]))
        passages, retrieval_s = result.passages, result.seconds
    except StudioError as error:
        for key in runnable:
            if MODES[key].uses_passages:
                problems[key] = str(error)

answering = [key for key in runnable if not problems[key]]
built = arena.requests(
    conversation,
    question,
    passages,
    answering,
    st.session_state["arena_system_prompt"],
    adapter_info.run_id if adapter_info else None,
    adapter_info.system_prompt if adapter_info else None,
)
try:
    streams = arena.ask(model, built, common.sampling_params("arena"))
except StudioError as error:
    st.error(common.markdown_escape(error), icon=":material/error:")
    st.stop()

# Out of blind mode, the modes that cannot answer yet keep their column, saying what to do.
order = arena.blind_order(runnable, secrets.randbelow(1 << 30)) if blind else modes
with st.chat_message("user"):
    st.markdown(markdown_escape(question))
if passages and not blind:
    st.caption(f"Retrieved {len(passages)} passages in {retrieval_s:.2f} s.")
columns = st.columns(len(order), border=True)
slots = {}
for place, (column, key) in enumerate(zip(columns, order, strict=True)):
    with column:
        st.markdown(f"**{arena.BLIND_LABELS[place] if blind else MODES[key].label}**")
        if missing(key):
            show_missing(missing(key))
            continue
        if problems[key]:
            st.error(common.markdown_escape(problems[key]), icon=":material/error:")
        elif MODES[key].uses_passages and not passages:
            st.warning(arena.NO_PASSAGES, icon=":material/search_off:")
        for notice in streams[key].notices if key in streams else ():
            st.warning(common.markdown_escape(notice), icon=":material/content_cut:")
        slots[key] = st.empty()
live = list(streams)
errors = common.stream_side_by_side([slots[k] for k in live], [streams[k] for k in live])

answers: dict[str, arena.ModeAnswer] = {}
for key in order:
    if key in streams:
        answers[key] = arena.record(streams[key], errors[live.index(key)])
        if MODES[key].uses_passages and not passages:
            answers[key].notices.insert(0, arena.NO_PASSAGES)
    elif missing(key):
        answers[key] = arena.ModeAnswer(
            error=arena.UNAVAILABLE[missing(key)], unavailable=missing(key)
        )
    else:
        answers[key] = arena.ModeAnswer(error=problems[key])
conversation.exchanges.append(
    Exchange(
        question=question,
        passages=arena.passage_dicts(passages),
        retrieval_s=round(retrieval_s, 3),
        answers=answers,
        blind_order=order if blind else [],
    )
)
if not settings.read_only:  # a demo's visitors leave nothing behind
    arena.save(settings, conversation)
    st.query_params["conversation"] = conversation.id  # this page's link opens it again
st.rerun()
