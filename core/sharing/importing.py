"""Import a demo bundle into a studio.

An import is checked whole (core.sharing.bundle) before anything is written, and what it writes is
undone if any step fails. Imported knowledge bases and adapters get new names when theirs are
taken, unless the user asked to replace; a replaced knowledge base is first imported under a
temporary name, so the old one is only dropped once the new one is complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import files
from core.answering import conversations
from core.errors import KnowledgeBaseError, StudioError
from core.evaluation import runner
from core.evaluation.results import Report
from core.ids import new_id
from core.knowledge.reading import FILE_TYPES
from core.knowledge.store import DocumentRecord, KnowledgeStore, knowledge_base_names, validate_name
from core.model import loading
from core.processes import this_process
from core.settings import Settings, check_writable
from core.sharing.bundle import (
    Bundle,
    BundleError,
    read_bundle,
    sha256,
)
from core.sharing.export import Progress, quiet
from core.training import adapters, run_folder
from core.training.adapters import AdapterMeta
from core.training.jobs import new_run_id, runs_dir

log = logging.getLogger(__name__)
_BATCH = 1000
_HASH = re.compile(r"^[0-9a-f]{64}$")


class CatalogFile(BaseModel):
    """A knowledge base's `catalog.json` in a bundle."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    embedding_model: str = Field("", max_length=300)
    documents: list[DocumentRecord] = Field(default_factory=list)


@dataclass
class ImportPlan:
    """What an import would write, checked against this studio: no writing yet."""

    bundle: Bundle
    knowledge_bases: dict[str, str]  # name in the bundle -> name it gets here
    adapters: dict[str, str]  # run id in the bundle -> name it gets here
    conflicts: list[str]  # names already taken here (replaced only when the user confirms)
    conversations: list[conversations.Conversation]
    evaluations: list[Report]
    catalogs: dict[str, CatalogFile] = field(default_factory=dict)  # folder -> catalog
    adapter_meta: dict[str, AdapterMeta] = field(default_factory=dict)  # folder -> meta


def _free_name(wanted: str, taken: set[str], limit: int = 64) -> str:
    """`wanted`, or "wanted - imported", "wanted - imported 2"... when it is taken (characters a
    knowledge base name allows)."""
    if wanted.casefold() not in taken:
        return wanted
    for number in range(1, 1000):
        candidate = f"{wanted[: limit - 16]} - imported{f' {number}' if number > 1 else ''}"
        if candidate.casefold() not in taken:
            return candidate
    return f"{wanted[: limit - 20]} {new_id()[:8]}"


def _claim(
    name: str, taken: set[str], conflicts: list[str], what: str, replace: bool, limit: int = 64
) -> str:
    """The name an imported thing gets here; a taken name is noted as a conflict."""
    if name.casefold() in taken:
        conflicts.append(f"{what} '{name}'")
    chosen = name if replace else _free_name(name, taken, limit)
    taken.add(chosen.casefold())
    return chosen


def _catalog(bundle: Bundle, folder: str) -> CatalogFile:
    """The documents of a knowledge base in a bundle: well-formed records whose file names
    (made from the content hash and type) cannot point anywhere else."""
    try:
        catalog = CatalogFile.model_validate(bundle.json(f"{folder}/catalog.json"))
        validate_name(catalog.name)
        for record in catalog.documents:
            if not _HASH.match(record.content_hash) or record.file_type not in FILE_TYPES:
                raise ValueError(record.name)
            if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", record.doc_id):
                raise ValueError(record.doc_id)
    except (ValidationError, ValueError, KnowledgeBaseError) as error:
        raise BundleError(
            "A knowledge base in the bundle has a damaged list of documents: refused."
        ) from error
    return catalog


def _same_model(bundled: str, here: str) -> bool:
    return loading.shared_name(bundled) == loading.shared_name(here)


def _parsed(bundle: Bundle) -> tuple[list[conversations.Conversation], list[Report]]:
    try:
        return (
            [conversations.Conversation.from_dict(bundle.json(n)) for n in bundle.conversations],
            [Report.from_dict(bundle.json(n)) for n in bundle.evaluations],
        )
    except (StudioError, ValueError) as error:
        raise BundleError(
            f"A saved conversation or report in the bundle cannot be read ({error}) Refused."
        ) from error


def plan_import(settings: Settings, bundle: Bundle, replace: bool = False) -> ImportPlan:
    """Check the bundle's models against this studio and choose the names things get."""
    kb_taken = {n.casefold() for n in knowledge_base_names(settings)}
    adapter_taken = {a.name.casefold() for a in adapters.list_adapters(settings)}
    conflicts: list[str] = []
    kbs: dict[str, str] = {}
    catalogs: dict[str, CatalogFile] = {}
    for entry in bundle.knowledge_bases:
        catalog = catalogs[entry.folder] = _catalog(bundle, entry.folder)
        if not _same_model(catalog.embedding_model, settings.embedding_model):
            raise BundleError(
                f"The knowledge base '{catalog.name}' was built with the search model "
                f"'{catalog.embedding_model}', but this studio uses "
                f"'{loading.shared_name(settings.embedding_model)}'. Set LRS_EMBEDDING_MODEL to "
                "that model to import it."
            )
        kbs[catalog.name] = _claim(catalog.name, kb_taken, conflicts, "knowledge base", replace)
    found_adapters: dict[str, str] = {}
    metas: dict[str, AdapterMeta] = {}
    for adapter_entry in bundle.adapters:
        try:
            meta = AdapterMeta.model_validate_json(
                bundle.members[f"{adapter_entry.folder}/{run_folder.METADATA_FILE}"]
            )
        except ValidationError as error:
            raise BundleError(
                f"The adapter '{adapter_entry.name}' in the bundle is damaged."
            ) from error
        metas[adapter_entry.folder] = meta
        name = " ".join((meta.name or adapter_entry.name).split())[: adapters.MAX_NAME] or "adapter"
        if not _same_model(meta.base_model, settings.base_model):
            raise BundleError(
                f"The adapter '{name}' was trained on the model '{meta.base_model}', but this "
                f"studio uses '{loading.shared_name(settings.base_model)}': it cannot work with "
                "it. Set LRS_BASE_MODEL to that model to import it."
            )
        found_adapters[adapter_entry.run_id] = _claim(
            name, adapter_taken, conflicts, "adapter", replace, limit=adapters.MAX_NAME
        )
    conversations, reports = _parsed(bundle)
    return ImportPlan(
        bundle, kbs, found_adapters, conflicts, conversations, reports, catalogs, metas
    )


@dataclass
class ImportResult:
    knowledge_bases: list[str]
    adapters: list[str]  # names
    conversations: list[str]  # ids
    evaluations: list[str]  # ids


class _Undo:
    """What an import has done so far, to take back again if a later step fails."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        for step in reversed(self.steps):
            try:
                step()
            except Exception:  # undo as much as can be undone; say what could not be
                log.exception("an import could not undo one of its steps")


def _import_kb(
    settings: Settings, store: KnowledgeStore, plan: ImportPlan, folder: str, name: str
) -> None:
    bundle = plan.bundle
    kb = store.create(name)
    passages = bundle.passages[folder]  # parsed and checked by read_bundle
    vectors = bundle.vectors[folder]
    for start in range(0, len(passages), _BATCH):
        batch = passages[start : start + _BATCH]
        kb.add_vectors(
            ids=[p.id for p in batch],
            texts=[p.text for p in batch],
            metadatas=[dict(p.metadata) for p in batch],
            vectors=vectors[start : start + len(batch)],
        )
    for row in plan.catalogs[folder].documents:
        record = replace_fields(row, status="pending", owner=this_process())
        original = f"{folder}/files/{record.content_hash}.{record.file_type}"
        if original in bundle.members:
            data = bundle.members[original]
            if sha256(data) != record.content_hash:
                raise BundleError(f"The original of '{record.name}' does not match its record.")
            kb.files_dir.mkdir(parents=True, exist_ok=True)
            kb.original_path(record).write_bytes(data)
        kb.catalog.add_pending(record)
        kb.catalog.complete(record.doc_id)


def _import_adapter(settings: Settings, plan: ImportPlan, folder: str, name: str) -> Path:
    """The adapter as a new run with a fresh id: it appears whole, or not at all."""
    run_id = new_run_id()
    staging = settings.data_dir / "imports" / new_id()
    adapter_dir = staging / run_folder.ADAPTER_DIR
    adapter_dir.mkdir(parents=True)
    try:
        for file_name in adapters.SHARED_FILES:
            (adapter_dir / file_name).write_bytes(plan.bundle.members[f"{folder}/{file_name}"])
        meta = plan.adapter_meta[folder].model_dump()
        # This studio's own name for the same base model: adapters.compatible compares it.
        meta.update(name=name, base_model=settings.base_model, run_id=run_id)
        files.atomic_write_json(adapter_dir / run_folder.METADATA_FILE, meta)
        files.atomic_write_json(staging / run_folder.CONFIG_FILE, {"name": name, "imported": True})
        files.atomic_write_json(
            staging / run_folder.STATUS_FILE, {"state": "completed", "finished": time.time()}
        )
        target = runs_dir(settings) / run_id
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
    return target


def _write_restorably(path: Path, write: Callable[[], object], undo: _Undo) -> None:
    """Write a file through `write`; the undo puts back what was there, or removes it."""
    before = path.read_bytes() if path.exists() else None

    def restore() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)

    undo.add(restore)
    write()


def _delete_if_there(store: KnowledgeStore, name: str) -> None:
    if name in store.names():
        store.delete(name)


def _stage(
    settings: Settings, store: KnowledgeStore, plan: ImportPlan, undo: _Undo, progress: Progress
) -> tuple[dict[str, str], dict[str, str]]:
    """Write everything beside what is here, nothing replaced yet: each knowledge base under a
    temporary name, each adapter as a new run. Returns the temporary names (final name ->
    temporary) and the new run ids (bundle's -> here)."""
    bundle = plan.bundle
    steps = len(bundle.knowledge_bases) + len(bundle.adapters) + 1
    temporary: dict[str, str] = {}
    for n, entry in enumerate(bundle.knowledge_bases):
        name = plan.knowledge_bases[plan.catalogs[entry.folder].name]
        progress(n / steps, f"Adding the knowledge base '{name}'")
        staged = f"import-{new_id()}"
        # Registered before the step: a half-written knowledge base is removed as well.
        undo.add(functools.partial(_delete_if_there, store, staged))
        _import_kb(settings, store, plan, entry.folder, staged)
        temporary[name] = staged
    run_ids: dict[str, str] = {}
    for n, adapter_entry in enumerate(bundle.adapters, len(bundle.knowledge_bases)):
        name = plan.adapters[adapter_entry.run_id]
        progress(n / steps, f"Adding the adapter '{name}'")
        target = _import_adapter(settings, plan, adapter_entry.folder, name)
        undo.add(functools.partial(shutil.rmtree, target))
        run_ids[adapter_entry.run_id] = target.name
    return temporary, run_ids


def _commit(
    settings: Settings,
    store: KnowledgeStore,
    plan: ImportPlan,
    staged: tuple[dict[str, str], dict[str, str]],
    replace: bool,
    undo: _Undo,
) -> list[Callable[[], None]]:
    """Put the staged things in place: every step undoable (a replaced knowledge base is set
    aside, not deleted). Returns what to delete once every step has succeeded."""
    temporary, run_ids = staged
    existing = {n.casefold(): n for n in store.names() if n not in temporary.values()}
    afterwards: list[Callable[[], None]] = []
    for name, staged_name in temporary.items():
        previous = existing.get(name.casefold())
        if previous is not None:
            aside = f"replaced-{new_id()}"
            store.rename(previous, aside)
            undo.add(functools.partial(store.rename, aside, previous))
            afterwards.append(functools.partial(store.delete, aside))
        store.rename(staged_name, name)
        undo.add(functools.partial(store.rename, name, staged_name))
    if replace:
        new_runs = set(run_ids.values())
        replaced = {n.casefold() for n in plan.adapters.values()}
        for info in adapters.list_adapters(settings):
            if info.run_id not in new_runs and info.name.casefold() in replaced:
                afterwards.append(functools.partial(adapters.delete, settings, info.run_id))
    saved: list[tuple[conversations.Conversation | Report, Any, Any]] = [
        *((c, conversations.conversation_path, conversations.save) for c in plan.conversations),
        *((r, runner.report_path, runner.save) for r in plan.evaluations),
    ]
    for item, path_of, save in saved:  # conversations and reports: pointed at what is here now
        item.adapter = run_ids.get(item.adapter, item.adapter)
        item.knowledge_base = plan.knowledge_bases.get(item.knowledge_base, item.knowledge_base)
        item.model = settings.base_model
        if isinstance(item, Report) and item.state == "running":
            item.state = "cancelled"  # exported mid-run: it can be resumed, not watched
        if path_of(settings, item.id).exists() and not replace:
            item.id = new_id()
        _write_restorably(path_of(settings, item.id), functools.partial(save, settings, item), undo)
    return afterwards


def import_bundle(
    settings: Settings,
    store: KnowledgeStore,
    source: Bundle | bytes | Path,
    *,
    replace: bool = False,
    progress: Progress = quiet,
) -> ImportResult:
    """Check a bundle whole (unless `source` is one read_bundle checked), then write it into
    this studio: first beside what is here, then swapped into place; nothing is deleted until
    every step has succeeded, and on any failure the studio is left exactly as it was."""
    check_writable(settings, "Importing a demo")
    progress(0.0, "Checking the bundle")
    if not isinstance(source, Bundle):
        source = read_bundle(source, settings.max_bundle_mb * 1_000_000)
    plan = plan_import(settings, source, replace)
    undo = _Undo()
    try:
        staged = _stage(settings, store, plan, undo, progress)
        progress(0.95, "Putting everything in place")
        afterwards = _commit(settings, store, plan, staged, replace, undo)
    except BaseException as error:
        undo.run()
        if isinstance(error, StudioError | KeyboardInterrupt):
            raise
        raise BundleError(
            f"The import stopped on a problem ({type(error).__name__}); nothing was kept. "
            "Check that there is free disk space and try again."
        ) from error
    for step in afterwards:  # the replaced things, now that nothing can fail any more
        try:
            step()
        except Exception:
            log.exception("a replaced knowledge base or adapter could not be deleted")
    progress(1.0, "Imported")
    return ImportResult(
        knowledge_bases=list(plan.knowledge_bases.values()),
        adapters=list(plan.adapters.values()),
        conversations=[c.id for c in plan.conversations],
        evaluations=[r.id for r in plan.evaluations],
    )
