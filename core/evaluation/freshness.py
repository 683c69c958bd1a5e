"""The freshness check: change one fact in the documents and ask again.

RAG reads the documents at question time, so it should follow the change at once; an adapter
learned the old fact into its weights and keeps saying it until it is trained again. The check
runs on a scratch copy of the knowledge base (vectors copied as they are, only the edited passages
embedded again), so the user's knowledge base is never touched; the copy is removed afterwards.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.answering.modes import MODES
from core.errors import InvalidInputError
from core.evaluation import runner
from core.evaluation.questions import EvalItem
from core.evaluation.results import Report
from core.knowledge.chroma import drop_collection
from core.knowledge.store import KnowledgeBase
from core.model.chat import ChatModel
from core.settings import Settings, check_writable
from core.text_match import contains


@dataclass
class FreshnessResult:
    question: str
    old_answer: str
    new_answer: str
    edited: list[str]  # citations of the passages that were changed
    answers: dict[str, str]  # mode -> answer text
    follows: dict[str, str] = field(default_factory=dict)  # mode -> new, old, neither
    summary: list[str] = field(default_factory=list)


def suggest(old: str) -> str:
    """A changed fact to try: the last number in the answer, plus one ("45 days" -> "46 days")."""
    numbers = list(re.finditer(r"\d+", old))
    if not numbers:
        return ""
    last = numbers[-1]
    return f"{old[: last.start()]}{int(last.group()) + 1}{old[last.end() :]}"


def candidates(report: Report) -> list[int]:
    """The questions the check can show something with, best first: RAG answered them right and
    a retrieved passage states the answer word for word (the fact to change). Those the tuned
    model also answered right come first: after the change, one follows and the other cannot.
    Empty when none qualifies."""
    qualified = []
    for index, result in enumerate(report.results[: report.done]):
        old = _old_answer(result.reference, result.accepted)
        stated = any(contains(str(p.get("text", "")), [old]) for p in result.passages)
        if old and stated and result.correct("rag"):
            qualified.append(index)
    return sorted(qualified, key=lambda i: not report.results[i].correct("tuned"))


def _old_answer(reference: str, accepted: list[str]) -> str:
    """The fact the check changes: the reference answer, else the first accepted one."""
    return next((a for a in [reference, *accepted] if a.strip()), "")


def _scratch_root(settings: Settings) -> Path:
    return runner.reports_dir(settings) / "scratch"


def _drop(settings: Settings, folder: Path) -> None:
    with contextlib.suppress(Exception):  # never created, or the server has gone meanwhile
        drop_collection(settings, folder.name)
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_copy(kb: KnowledgeBase) -> Iterator[KnowledgeBase]:
    """A throwaway copy of `kb`: its catalog, and its passages with their vectors."""
    root = _scratch_root(kb.settings)
    for stale in root.glob("fresh-*"):  # left behind by a check the app did not finish
        _drop(kb.settings, stale)
    folder = root / f"fresh-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    try:
        source = sqlite3.connect(kb.catalog.path)
        target = sqlite3.connect(folder / "catalog.sqlite")
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        copy = KnowledgeBase(kb.settings, kb.name, folder, kb.store.embeddings)
        for got in kb.stored_batches():
            copy.collection.add(
                ids=got["ids"],
                embeddings=got["embeddings"],
                documents=got["documents"],
                metadatas=got["metadatas"],
            )
        yield copy
    finally:
        _drop(kb.settings, folder)


def edit_fact(kb: KnowledgeBase, old: str, new: str) -> list[str]:
    """Replace `old` by `new` (ignoring case) in every passage that states it; the citations of
    the changed passages."""
    from langchain_core.documents import Document

    pattern = re.compile(r"(?<!\w)" + re.escape(old.strip()) + r"(?!\w)", re.IGNORECASE)
    stored = kb.store.get(include=["documents", "metadatas"])
    ids, changed, citations = [], [], []
    for passage_id, text, meta in zip(
        stored["ids"], stored["documents"], stored["metadatas"], strict=True
    ):
        if pattern.search(text):
            ids.append(passage_id)
            changed.append(Document(page_content=pattern.sub(new.strip(), text), metadata=meta))
            source, page = str(meta.get("source", "")), int(meta.get("page", 0) or 0)
            citations.append(f"{source}, page {page}" if page else source)
    if ids:
        kb.store.update_documents(ids, changed)
    return citations


def check(
    settings: Settings,
    chat: ChatModel,
    kb: KnowledgeBase,
    report: Report,
    index: int,
    new_answer: str,
) -> FreshnessResult:
    """Change the answer of question `index` in a copy of the documents, ask it again in every
    mode, and say which modes follow the new fact. The result is saved with the report."""
    check_writable(settings, "The freshness check")
    if not 0 <= index < report.done:
        raise InvalidInputError("Choose one of the evaluated questions.")
    asked = report.results[index]
    new_answer = " ".join(new_answer.split())
    old = _old_answer(asked.reference, asked.accepted)
    if not new_answer:
        raise InvalidInputError("Type the new answer that the edited document should give.")
    if contains(new_answer, [old]) or contains(old, [new_answer]):
        raise InvalidInputError(
            f"The new answer must differ from '{old}', and not contain it: try another value."
        )
    with scratch_copy(kb) as copy:
        edited = edit_fact(copy, old, new_answer)
        if not edited:
            raise InvalidInputError(
                f"No passage of '{kb.name}' states '{old}' word for word, so there is nothing "
                "to change. Choose a question whose answer is written in your documents."
            )
        item = EvalItem(asked.question, new_answer, origin=asked.origin)
        (again,) = runner.answer_batch(settings, chat, report, copy, [item])
    result = FreshnessResult(
        question=asked.question,
        old_answer=old,
        new_answer=new_answer,
        edited=edited,
        answers={m: a.text for m, a in again.answers.items()},
    )
    for mode, text in result.answers.items():
        result.follows[mode] = (
            "new" if contains(text, [new_answer]) else "old" if contains(text, [old]) else "neither"
        )
    result.summary = summary(result)
    report.freshness = asdict(result)
    runner.save(settings, report)
    return result


def summary(result: FreshnessResult) -> list[str]:
    """One plain sentence per mode."""
    lines = []
    for mode, follows in result.follows.items():
        label = MODES[mode].label
        if follows == "new":
            lines.append(f"{label} now answers '{result.new_answer}': it follows the change.")
        elif follows == "old" and MODES[mode].uses_passages:
            lines.append(
                f"{label} still answers '{result.old_answer}', though its passages now say "
                f"'{result.new_answer}'."
            )
        elif follows == "old":
            lines.append(
                f"{label} still answers '{result.old_answer}': what a model learned stays as it "
                "was until it is trained again."
            )
        else:
            lines.append(f"{label} gives neither the old nor the new answer.")
    return lines


def from_dict(data: dict[str, Any]) -> FreshnessResult:
    return FreshnessResult(**data)
