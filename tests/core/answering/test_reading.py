"""The sentences the reading modes read: the ones that answer, best nearest the question."""

from __future__ import annotations

import re

import numpy as np

from core.answering import reading
from core.answering.reading import Sentence, select, sentences
from core.knowledge.retrieve import Passage

VOCABULARY = [
    "refund",
    "refunds",
    "days",
    "code",
    "release",
    "harbour",
    "master",
    "fuel",
    "pier",
    "sold",
    "weeks",
]


class WordEmbeddings:
    """Vectors that count the vocabulary's words: sentences sharing words are close."""

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def _vector(self, text: str) -> list[float]:
        words = re.findall(r"\w+", text.lower())
        return [float(words.count(word)) for word in VOCABULARY] + [0.1]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.embedded += texts
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def passage(text: str, source: str = "handbook.txt") -> Passage:
    return Passage(text, source, 0, 0, source, 0.0, None, ("meaning",))


PASSAGES = [
    passage("Fuel is sold on the north pier. The harbour master is Ingrid Solberg."),
    passage("Refunds are possible within 45 days.\n\nThe release code is BLUE-HARBOR-42."),
]


def test_passages_are_cut_into_sentences_and_lines() -> None:
    assert sentences(
        "## Fees\nRefunds take 45 days. Ask at the front desk!  Thanks.\n- Late fee: 5 EUR a day"
    ) == [
        "Refunds take 45 days.",
        "Ask at the front desk!",  # "Thanks." is too short to answer anything
        "Late fee: 5 EUR a day",
    ]
    assert sentences("Short") == ["Short"]  # nothing long enough: the passage stays whole
    assert sentences("   ") == []


def test_a_title_or_abbreviation_does_not_end_a_sentence_and_headings_are_left_out() -> None:
    text = (
        "# Helix Lab: Safety Rules\n\nThe lab safety officer is Dr. Tomasz Wierzbicki. "
        "Spills above 500 ml, e.g. of acids, are reported to J. Smith at once."
    )
    assert sentences(text) == [
        "The lab safety officer is Dr. Tomasz Wierzbicki.",
        "Spills above 500 ml, e.g. of acids, are reported to J. Smith at once.",
    ]
    assert sentences("# A heading alone") == ["# A heading alone"]  # kept whole, as before


def test_the_sentence_that_answers_is_read_last_with_its_passage_number() -> None:
    chosen = select("What is the release code?", PASSAGES, WordEmbeddings())
    assert chosen[-1] == Sentence("The release code is BLUE-HARBOR-42.", 2)
    assert len(chosen) <= reading.MOST
    assert select("Who is the harbour master?", PASSAGES, WordEmbeddings())[-1].passage == 1


def test_close_runners_up_are_kept_and_far_ones_are_not() -> None:
    close = [passage("Refunds take 45 days. Card refunds take 30 days.")]
    both = select("How many days do refunds take?", close, WordEmbeddings())
    assert len(both) == 2
    alone = select("What is the release code?", PASSAGES, WordEmbeddings())
    assert [s.text for s in alone] == ["The release code is BLUE-HARBOR-42."]
    assert select("Anything?", [], WordEmbeddings()) == []


def test_sentence_vectors_are_computed_once() -> None:
    embeddings = WordEmbeddings()
    select("What is the release code?", PASSAGES, embeddings)
    first = len(embeddings.embedded)
    select("Who is the harbour master?", PASSAGES, embeddings)
    assert first == 4 and len(embeddings.embedded) == first  # the second question embeds none
    assert np.isclose(
        np.linalg.norm(reading._vectors.get(embeddings, ["Fuel is sold on the north pier."])), 1.0
    )
