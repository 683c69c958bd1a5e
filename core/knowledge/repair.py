"""The start-up repair: knowledge bases whose search index is damaged or gone, rebuilt from their
stored original files.

`repair` is a generator of events, so that a page can show a bar per knowledge base and then one
plain line per finding; it writes nothing in a read-only studio (it only reports).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from core.errors import StudioError
from core.knowledge import chroma
from core.knowledge.ingest import ChunkSettings, IngestEvent, rebuild
from core.knowledge.store import KnowledgeStore


@dataclass(frozen=True)
class Rebuilding:
    """The rebuild of `name` begins."""

    name: str


@dataclass(frozen=True)
class Progress:
    """How far the rebuild of `name` is (one of its ingestion events)."""

    name: str
    event: IngestEvent


@dataclass(frozen=True)
class Finding:
    """One thing the repair found or did, for the visitors to read. `name` is the knowledge base
    it is about ('' for the whole store); `redone` and `lost` are document counts and names."""

    kind: str  # "set_aside" | "incomplete" | "rebuilt"
    name: str = ""
    folder: str = ""  # where a damaged store was set aside
    redone: int = 0
    total: int = 0
    lost: tuple[str, ...] = field(default_factory=tuple)


Event = Rebuilding | Progress | Finding


def repair(store: KnowledgeStore) -> Iterator[Event]:
    """Rebuild every knowledge base that misses passages; a Finding for each, and one first
    when the embedded store itself was damaged and set aside."""
    findings: list[Finding] = []
    for name in store.names():
        try:
            kb = store.open(name)  # opening the first one opens Chroma, or sets a damaged one aside
            missing = kb.missing_passages()
        except StudioError:
            continue  # the page that opens it says why
        if not missing:
            continue
        if store.settings.read_only:
            findings.append(Finding("incomplete", name))
            continue
        yield Rebuilding(name)
        done = []
        for event in rebuild(kb, ChunkSettings.from_settings(store.settings)):
            yield Progress(name, event)
            if event.status in ("redone", "failed"):
                done.append(event)
        lost = tuple(e.file_name for e in done if e.status == "failed")
        findings.append(
            Finding("rebuilt", name, redone=len(done) - len(lost), total=len(done), lost=lost)
        )
    try:
        aside = chroma.damage_set_aside(store.settings) if store.names() else None
    except StudioError:  # the store cannot be opened at all: the pages say why
        aside = None
    if aside is not None:
        yield Finding("set_aside", folder=str(aside))
    yield from findings
