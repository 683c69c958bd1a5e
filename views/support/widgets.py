"""Pieces several pages draw: safe Markdown for words from users, documents and models, the
answer settings, answers streaming side by side, the adapter and knowledge-base pickers, and the
download buttons of an export."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import streamlit as st

from core.errors import StudioError
from core.model import loops
from core.model.chat import ChatStream
from core.settings import Settings


def help_for(field: str) -> str:
    """The plain-language help text of a setting, shown beside its widget."""
    return Settings.model_fields[field].description or ""


# Streamlit's Markdown turns web addresses into links by itself, backslashes and all: an address
# is shown as code instead, literally, copyable, and never a link.
_ADDRESS = re.compile(r"(?:https?://|www\.)[^\s`<>]*[^\s`<>.,;:!?)'\"]")


def markdown_escape(value: object) -> str:
    """The one way to show words from users, documents and bundles (file and adapter names,
    document text, any message that may quote them, an error included) in an element that
    renders Markdown: literally, with no formatting, links, images or HTML from them."""
    text, parts, last = str(value), [], 0
    for address in _ADDRESS.finditer(text):
        parts += [_escape_marks(text[last : address.start()]), f"`{address.group()}`"]
        last = address.end()
    return "".join([*parts, _escape_marks(text[last:])])


def _escape_marks(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$])", r"\\\1", text)


# A model's answer is shown as Markdown (never HTML), but a Markdown image loads its address as
# soon as it is shown: a document that tells the model to answer with ![](https://…?q=secret)
# would leak through the reader's browser. A zero-width space after "!" leaves a plain link.
_IMAGE = re.compile(r"!(?=\[)")


def answer_markdown(text: str) -> str:
    """A model's answer as Markdown that cannot load images (see _IMAGE)."""
    return _IMAGE.sub("!\u200b", text)


# A growing answer is drawn again at most this often. Each update re-renders the whole answer in
# the browser, and a studio used on its own machine shares its cores with that browser: drawn at
# every token, Chromium took about half a core and the studio decoded at 28 tokens/s.
UPDATE_S = 0.1


def in_updates(pieces: Iterable[str], every_s: float = UPDATE_S) -> Iterator[str]:
    """`pieces` joined into one chunk per `every_s` seconds at most (the first piece at once,
    whatever is left at the end)."""
    held: list[str] = []
    shown_at = -every_s
    for piece in pieces:
        held.append(piece)
        now = time.monotonic()
        if now - shown_at >= every_s:
            yield "".join(held)
            held, shown_at = [], now
    if held:
        yield "".join(held)


def answer_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """answer_markdown for an answer arriving in pieces ("!" may end one, "[" start the next)."""
    after_bang = False
    for piece in pieces:
        if after_bang and piece.startswith("["):
            piece = "\u200b" + piece
        after_bang = piece.endswith("!")
        yield answer_markdown(piece)


def answer_settings(page: str) -> None:
    """The decoding settings of a page (`chat`, `arena`), in an expander."""
    with st.expander("Answer settings", icon=":material/tune:"):
        st.text_area(
            "System prompt",
            key=f"{page}_system_prompt",
            help=help_for("system_prompt"),
            height=80,
        )
        left, middle, right, last = st.columns(4)
        left.slider(
            "Temperature",
            0.0,
            1.5,
            step=0.05,
            key=f"{page}_temperature",
            help=help_for("temperature"),
        )
        middle.slider("Top-p", 0.05, 1.0, step=0.05, key=f"{page}_top_p", help=help_for("top_p"))
        right.number_input(
            "Longest answer",
            min_value=16,
            max_value=2048,
            step=16,
            key=f"{page}_max_new_tokens",
            help=help_for("max_new_tokens"),
        )
        last.number_input(
            "Repetition penalty",
            min_value=1.0,
            max_value=2.0,
            step=0.05,
            placeholder="the model's own",
            key=f"{page}_repetition_penalty",
            help=help_for("repetition_penalty"),
        )


def stream_side_by_side(slots: list[Any], streams: list[ChatStream]) -> list[str]:
    """Show several answers growing at once, each in its placeholder (`st.empty()`).

    Returns, per stream, the plain message of a StudioError that ended it ('' when none)."""
    texts = [""] * len(streams)
    errors = [""] * len(streams)
    pieces = [iter(stream) for stream in streams]
    live = set(range(len(streams)))
    shown = [-1] * len(streams)
    drawn_at = -UPDATE_S
    while live:
        moved = ended = False
        for index in sorted(live):
            while index in live and streams[index].ready():
                try:
                    piece = next(pieces[index], None)
                except StudioError as error:
                    errors[index] = str(error)
                    piece = None
                if piece is None:
                    live.discard(index)
                    ended = True
                    answer = streams[index].answer
                    if answer is not None and answer.looped:  # cut back to its first time round
                        texts[index] = answer.text
                else:
                    texts[index] += piece
                moved = True
        if not ended and time.monotonic() - drawn_at < UPDATE_S:  # see UPDATE_S
            time.sleep(0.02)
            continue
        drawn_at = time.monotonic()
        for index, slot in enumerate(slots):
            size = len(texts[index]) + (index in live)
            if size != shown[index]:
                shown[index] = size
                cursor = " ▌" if index in live else ""
                text = answer_markdown(texts[index])
                answer = streams[index].answer
                if index not in live and answer is not None and answer.looped:
                    with slot.container():
                        st.markdown(text)
                        st.warning(loops.NOTICE, icon=":material/repeat:")
                else:
                    slot.markdown(text + cursor if text else cursor or " ")
        if not moved:
            time.sleep(0.05)
    return errors


def adapter_picker(
    container: Any,
    adapters: Sequence[Any],
    key: str,
    help: str,
    on_change: Callable[[], None] | None = None,
) -> str | None:
    """Choose one of `adapters` (core.training.adapters.AdapterInfo) by name; its run id, or
    None when there is none to choose. A choice that is gone falls back to the first."""
    by_id = {a.run_id: a for a in adapters}
    if not by_id:
        return None
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = next(iter(by_id))
    return container.selectbox(
        "Adapter",
        list(by_id),
        format_func=lambda run_id: (
            by_id[run_id].name + (" · reads documents" if by_id[run_id].reads_documents else "")
        ),
        key=key,
        on_change=on_change,
        help=help,
    )


def knowledge_picker(
    container: Any,
    names: Sequence[str],
    key: str,
    help: str,
    on_change: Callable[[], None] | None = None,
) -> str | None:
    """Choose one of the knowledge bases `names`; None when there is none."""
    if not names:
        return None
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[0]
    return container.selectbox(
        "Knowledge base", list(names), key=key, on_change=on_change, help=help
    )


# An export a page offers: its label, how to render the subject, file suffix, MIME type, icon.
Export = tuple[str, Callable[[Any], str], str, str, str]


def download_buttons(subject: Any, exports: Sequence[Export], file_stem: str, key: str) -> None:
    """One download button per export of `subject`, side by side; each file is rendered only
    when its button is pressed, and pressing one does not rerun the page."""
    columns = st.columns([1] * len(exports) + [3])
    for column, (label, render, suffix, mime, icon) in zip(columns, exports, strict=False):
        column.download_button(
            f"Download {label}",
            data=lambda render=render: render(subject),
            file_name=f"{file_stem}.{suffix}",
            mime=mime,
            icon=icon,
            on_click="ignore",
            key=f"{key}_{suffix}",
        )


def sources(passages: Sequence[dict[str, Any]], scores: bool = False) -> None:
    """The passages an answer read, in an expander, numbered as the answer cites them."""
    with st.expander(f"Sources ({len(passages)})", icon=":material/menu_book:"):
        for number, passage in enumerate(passages, 1):
            title = f"**[{number}] {markdown_escape(passage['citation'])}**"
            if scores:
                title += f" · score {passage['score']:.3f}"
                if passage.get("similarity") is not None:
                    title += f" · match {passage['similarity']:.2f}"
            st.markdown(title)
            st.markdown(markdown_escape(passage["text"]))
