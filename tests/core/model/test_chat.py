"""The chat-model protocol's types: clean conversations, timings in plain words, and a stream
that can be read once to its end."""

import re

import pytest

from core.errors import InvalidInputError
from core.model.chat import ChatStream, Timings, clean_messages


def test_empty_turns_are_dropped_and_a_conversation_must_end_with_a_question() -> None:
    messages = [
        {"role": "system", "content": "ignored here"},
        {"role": "user", "content": "  Hello  "},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Code?"},
    ]
    assert clean_messages(messages) == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Code?"},
    ]
    with pytest.raises(InvalidInputError, match="Type a question first"):
        clean_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    with pytest.raises(InvalidInputError):
        clean_messages([{"role": "user", "content": "   "}])


def test_speed_counts_the_tokens_after_the_first() -> None:
    timings = Timings(prompt_tokens=10, new_tokens=11, time_to_first_token_s=1.0, total_s=3.0)
    assert timings.tokens_per_s == pytest.approx(5.0)
    assert timings.summary() == (
        "11 tokens · first token after 1.00 s · 5.0 tokens/s · 3.0 s in all"
    )
    assert Timings(3, 1, 0.5, 0.5).tokens_per_s == 2.0  # one token: over the whole time
    assert Timings(3, 0, 0.0, 0.0).tokens_per_s == 0.0


def test_a_stream_gives_its_pieces_then_the_whole_answer() -> None:
    stream = ChatStream(iter(["The ", "code ", "is 42."]), prompt_tokens=5, prompt="user: Code?")
    assert stream.answer is None
    answer = stream.read()
    assert answer.text == "The code is 42."
    assert stream.answer is answer and answer.timings.prompt_tokens == 5


ENDS = re.compile(r"\n\s*\n|(?<=\])(?:\s*\[\d+\]){2,}")


@pytest.mark.parametrize(
    ("pieces", "text", "passed_on"),
    [
        # The end inside a piece: the part before it is kept and passed on.
        (["It is ", "EUR 58 [1]\n", "\nQuestion: What", " else?"], "It is EUR 58 [1]", 2),
        # The end made of several pieces: the answer is cut back to where it began.
        (["It is EUR 42 [1]", " [2]", " [3]", " [4]"], "It is EUR 42 [1]", 2),
        # Two citations are no end; an end before any text is none either.
        (["\n\nIt is ", "EUR 42 [1] [2]."], "It is EUR 42 [1] [2].", 2),
    ],
)
def test_an_answer_stops_where_its_request_says_it_ends(
    pieces: list[str], text: str, passed_on: int
) -> None:
    cancelled: list[bool] = []
    stream = ChatStream(
        iter(pieces), prompt_tokens=5, ends=ENDS, cancel=lambda: cancelled.append(True)
    )
    shown = list(stream)
    assert stream.answer is not None and stream.answer.text == text
    assert len(shown) == passed_on and cancelled == [True]  # generation is stopped there
    assert not stream.answer.notices  # the format's end, nothing to tell the user
