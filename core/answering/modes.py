"""The four ways of answering, what each needs, and how the reading modes ask.

- base:   the base model as it is
- tuned:  the base model with a LoRA adapter
- rag:    the base model reading the passages retrieved from a knowledge base
- hybrid: the tuned model reading the same passages
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.answering.reading import Sentence
from core.model.chat import Favour, Message


@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    description: str
    uses_adapter: bool
    uses_passages: bool


MODES: dict[str, Mode] = {
    mode.key: mode
    for mode in (
        Mode(
            "base", "Base model", "The model as it is: no documents, no fine-tuning.", False, False
        ),
        Mode("tuned", "Fine-tuned (LoRA)", "The model with your adapter.", True, False),
        Mode("rag", "RAG", "The model reading passages found in your documents.", False, True),
        Mode("hybrid", "Fine-tuned + RAG", "Your adapter, reading the same passages.", True, True),
    )
}

# What a mode that cannot answer yet is missing, and what to do about it.
UNAVAILABLE = {
    "adapter": "Train an adapter first to see fine-tuned answers.",
    "knowledge": "Create a knowledge base first to see answers that read your documents.",
}
NO_PASSAGES = (
    "No passages were found in the knowledge base for this question: this answer did not read "
    "your documents."
)


def missing(key: str, has_adapter: bool, has_knowledge: bool) -> str:
    """What mode `key` lacks to answer: "adapter", "knowledge" or "" (it can answer)."""
    mode = MODES[key]
    if mode.uses_adapter and not has_adapter:
        return "adapter"
    if mode.uses_passages and not has_knowledge:
        return "knowledge"
    return ""


def available(keys: Iterable[str], has_adapter: bool, has_knowledge: bool) -> list[str]:
    """The modes of `keys` that can answer, in the studio's order. The one place that decides."""
    wanted = set(keys)
    return [k for k in MODES if k in wanted and not missing(k, has_adapter, has_knowledge)]


# How the reading modes ask (chosen with bench/quality.py, see core.answering.reading): the
# sentences that answer, each marked with its passage's number, the question after them, and an
# instruction to keep the text's own words and numbers; before it, three worked examples of the
# same form (a number, a name, a code, each beside a sentence that does not answer), which the
# default model follows far better than any instruction. On the held-out questions, four whole
# passages and a request to cite them: RAG right on 29% of the questions whose answer was found;
# this way: see the note in bench/quality.py.
RAG_ANSWER = "Answer in one short sentence, with the exact words and numbers of the text."
# Where a reading answer ends if the model goes on (measured with bench/quality.py on the dev
# set: a quarter of the wrong answers went on): at the end of its line (the next one was a
# question of its own making, "Question: How many...", or the same answer again), and at a
# third passage number in a row ("EUR 42 [1] [2] [3] [4] ..." until the answer's length ran
# out), keeping the first.
READING_ENDS = re.compile(r"\n|(?<=\])(?:\s*\[\d+\]){2,}")
# The words of the sentences read get this much added to their scores (logits) at every step:
# a small model otherwise writes the number it expects ("12 characters") instead of the one it
# read ("14"). Chosen on the dev set of bench/quality.py (RAG right when the answer was found:
# 0 -> 68%, 1 -> 79%, 2 -> 79%, 3 -> 83%, with answers a median 9, 11 and 14.5 words long and
# 0, 2 and 5 of 48 cut for repeating themselves): 2.
READING_BONUS = 2.0


def reading_favour(sentences: Sequence[Sentence]) -> Favour:
    """What a reading answer should take its words from: the sentences read (without their
    passage numbers)."""
    return Favour(" ".join(quoted(s.text) for s in sentences), READING_BONUS)


# Each example's sentences carry passage numbers as a real question's do (the answering one
# last), and the answers cite the number beside the sentence they use: with the same number in
# every example, the model cited it whatever it read.
READING_EXAMPLES = (
    (
        (
            ("The museum opens at 9:30 and closes at 17:00.", 2),
            ("Adult tickets cost EUR 12 and children enter free.", 1),
        ),
        "How much does an adult ticket cost?",
        "An adult ticket costs EUR 12 [1].",
    ),
    (
        (
            ("The club's treasurer is Anna Berg.", 1),
            ("The chairman, Paul Weiss, was elected in 2019.", 3),
        ),
        "Who chairs the club?",
        "Paul Weiss chairs the club [3].",
    ),
    (
        (
            ("Order the blue model with code BX-310.", 2),
            ("The red model, code RX-220, is sold out.", 2),
        ),
        "What is the code of the red model?",
        "The red model's code is RX-220 [2].",
    ),
)
# Anything in a passage or its source that could pose as our own structure loses its power: a
# line starting like a passage number ("[2] ...") or like the question line ("Question: ...").
_NUMBER_LINE = re.compile(r"^(\s*)\[(\d+)\]", re.MULTILINE)
_QUESTION_LINE = re.compile(r"^(\s*)question\s*:", re.IGNORECASE | re.MULTILINE)


def quoted(text: str) -> str:
    """`text` as it may stand among the numbered passages: no line posing as another passage's
    number or as the question."""
    text = _NUMBER_LINE.sub(r"\1(\2)", text)
    return _QUESTION_LINE.sub(r"\1(question)", text).strip()


def reading_message(question: str, sentences: Sequence[Sentence]) -> str:
    """The question as the reading modes ask it: the sentences that answer, each with its
    passage's number; nothing in a document can pose as the question or another passage."""
    lines = [f"{' '.join(quoted(s.text).split())} [{s.passage}]" for s in sentences]
    return "\n".join(lines) + f"\n\nQuestion: {question}\n{RAG_ANSWER}"


def rag_messages(question: str, sentences: Sequence[Sentence]) -> list[Message]:
    """The worked examples, then the question with its sentences; the question as it is when
    nothing was found."""
    if not sentences:
        return [{"role": "user", "content": question}]
    shown: list[Message] = []
    for texts, asked, answer in READING_EXAMPLES:
        example = [Sentence(text, number) for text, number in texts]
        shown += [
            {"role": "user", "content": reading_message(asked, example)},
            {"role": "assistant", "content": answer},
        ]
    return [*shown, {"role": "user", "content": reading_message(question, sentences)}]


def asked_question(content: str) -> str:
    """The question of a user message: as asked, or taken out of a reading modes' message
    (a training row of an adapter trained to read, core.answering.raft)."""
    if not is_reading(content):
        return content
    return content.removesuffix(RAG_ANSWER).rstrip().rsplit("\n\nQuestion: ", 1)[-1].strip()


def is_reading(content: str) -> bool:
    """Whether a user message is a reading modes' question (for tests' stand-in models)."""
    return content.endswith(RAG_ANSWER)
