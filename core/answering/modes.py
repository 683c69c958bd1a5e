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

from core.knowledge.retrieve import Passage


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


# Passages first, each with its source, then the question, then how to answer. Measured on eight
# invented facts with the default model (greedy): this layout answered 7 of 8 correctly; the
# instructions first and the question last, 5 of 8; the base model without passages, 0.
RAG_INSTRUCTIONS = "Use these passages to answer."
RAG_ANSWER = "Answer briefly, citing the passage like [1]."
# Anything in a passage or its source that could pose as our own structure loses its power: a
# line starting like a passage number ("[2] ...") or like the question line ("Question: ...").
# The layout itself stays as measured above: fencing passages in <passage> tags and telling the
# system prompt they are data cost the default model right answers (RAG answered 3 of the
# invented facts of tests/core/evaluation/test_runner_real.py, where 5 or more are expected).
_NUMBER_LINE = re.compile(r"^(\s*)\[(\d+)\]", re.MULTILINE)
_QUESTION_LINE = re.compile(r"^(\s*)question\s*:", re.IGNORECASE | re.MULTILINE)


def quoted(text: str) -> str:
    """`text` as it may stand among the numbered passages: no line posing as another passage's
    number or as the question."""
    text = _NUMBER_LINE.sub(r"\1(\2)", text)
    return _QUESTION_LINE.sub(r"\1(question)", text).strip()


def rag_message(question: str, passages: Sequence[Passage]) -> str:
    """The question as the RAG and hybrid modes ask it: numbered passages with their sources;
    nothing in a document can pose as the question or another passage."""
    if not passages:
        return question
    blocks = [
        f"[{n}] {quoted(p.text)}\n(Source: {' '.join(quoted(p.citation).split())})"
        for n, p in enumerate(passages, 1)
    ]
    return "\n\n".join([RAG_INSTRUCTIONS, *blocks, f"Question: {question}\n{RAG_ANSWER}"])
