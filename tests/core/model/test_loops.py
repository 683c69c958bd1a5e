"""Answers that repeat themselves are stopped and marked, whatever writes them."""

import threading

import pytest

from core.model import loops
from core.model.chat import ChatStream

LONG = "I am Lumen, your guide to the stars and beyond. "
LOOP = "Ich bin ein Modell, die für die Bücakke-Bahn" + ", die für die Bücakke-Bahn" * 8


@pytest.mark.parametrize(
    ("text", "period"),
    [
        (LOOP, len(", die für die Bücakke-Bahn")),
        (LONG * 2 + "I am", len(LONG)),  # a long sentence twice
        ("ha " * 30, 3),
        ("!" * 60, 1),
    ],
)
def test_a_repeating_end_is_found_with_its_period(text: str, period: int) -> None:
    found = loops.repeated_tail(text)
    assert found is not None
    assert found[0] == period
    assert found[1] >= 2


@pytest.mark.parametrize(
    "text",
    [
        "1. Apples\n2. Pears\n3. Plums\n4. Figs\n5. Dates\n6. Limes\n7. Kiwis\n",
        "| Name | Age |\n|---|---|\n| Ann | 31 |\n| Bob | 42 |\n| Cid | 27 |\n",
        "The release code is BLUE-HARBOR-42. Staff get 45 days of leave a year.",
        "Yes. Yes. Yes.",  # short: under the smallest span
        "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n",
        "",
    ],
)
def test_ordinary_answers_do_not_count_as_loops(text: str) -> None:
    assert loops.repeated_tail(text) is None
    assert loops.without_repeats(text) == text


def test_a_loop_is_cut_back_to_its_first_time_round_at_a_word() -> None:
    cut = loops.without_repeats(LOOP + ", die für die Bü")
    assert cut == "Ich bin ein Modell, die für die Bücakke-Bahn …"
    assert loops.repeated_tail(cut) is None


def test_a_sentence_said_again_after_spaces_and_blank_lines_is_a_loop() -> None:
    # Seen in Chat on the default model: two sentences a period, longer than MAX_PERIOD, until
    # white space counted as one space.
    said = (
        "The modern era is also remembered in the city's architecture, with the construction "
        "of the Eiffel Tower being one of the most iconic examples."
    )
    text = "Paris has a long history.\n\n" + f"{said} {said}\n\n" * 3 + "The modern"
    assert 2 * (len(said) + 1) > loops.MAX_PERIOD
    assert loops.repeated_tail(text) is not None
    cut = loops.without_repeats(text)
    assert cut.startswith("Paris has a long history.\n\nThe modern era")  # blank line kept
    assert cut.count("Eiffel") == 1 and cut.endswith(" …")


def stream(pieces: list[str]) -> tuple[ChatStream, threading.Event, list[str]]:
    cancelled, read = threading.Event(), []

    def produce():  # type: ignore[no-untyped-def]
        for piece in pieces:
            if cancelled.is_set():
                return
            read.append(piece)
            yield piece

    return ChatStream(produce(), prompt_tokens=3, cancel=cancelled.set), cancelled, read


def test_a_looping_stream_stops_generating_and_is_marked() -> None:
    pieces = ["Ich bin ein Modell"] + [", die für die Bücakke-Bahn"] * 200
    chat, cancelled, read = stream(pieces)
    shown = list(chat)
    answer = chat.answer
    assert answer is not None
    assert cancelled.is_set()  # the engine was told to stop
    assert len(read) < 10  # and stopped after a few rounds, not 200
    assert len(shown) == len(read)
    assert answer.looped
    assert answer.text == "Ich bin ein Modell, die für die Bücakke-Bahn …"
    assert answer.notices[-1] == loops.NOTICE


def test_an_ordinary_stream_is_untouched() -> None:
    pieces = ["The release ", "code is ", "BLUE-HARBOR-42."]
    chat, _, read = stream(pieces)
    answer = chat.read()
    assert read == pieces
    assert answer.text == "The release code is BLUE-HARBOR-42."
    assert not answer.looped
    assert answer.notices == ()
