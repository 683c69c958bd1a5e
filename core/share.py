"""Share a demo: export knowledge bases, adapters, conversations and reports as one bundle,
import one into a studio, or open one read-only (demo mode).

An import is checked whole (core.bundle) before anything is written, and what it writes is
undone if any step fails. Imported knowledge bases and adapters get new names when theirs are
taken, unless the user asked to replace; a replaced knowledge base is first imported under a
temporary name, so the old one is only dropped once the new one is complete.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from dataclasses import replace as replace_fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import adapters, arena, evaluate, models, runs
from core.bundle import (
    FORMAT,
    FORMAT_VERSION,
    Bundle,
    BundleError,
    Manifest,
    read_bundle,
    sha256,
    write_zip,
)
from core.errors import KnowledgeBaseError, ModelNotAvailableError, StudioError
from core.ids import new_id
from core.ingest import FILE_TYPES
from core.jobs import new_run_id, runs_dir
from core.knowledge import (
    DocumentRecord,
    KnowledgeStore,
    knowledge_base_names,
    this_process,
    validate_name,
)
from core.settings import Settings, check_writable

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
_BATCH = 1000
_HASH = re.compile(r"^[0-9a-f]{64}$")
# The settings that shape answers: a demo is presented with the ones it was made with.
SHARED_SETTINGS = ("system_prompt", "temperature", "top_p", "max_new_tokens", "top_k")


def app_version() -> str:
    try:
        return importlib.metadata.version("lora-rag-studio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _quiet(fraction: float, message: str) -> None:
    """The default progress callback: nobody is watching."""


# -- export ----------------------------------------------------------------------------------------
@dataclass
class ExportChoice:
    knowledge_bases: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)  # run ids
    conversations: list[str] = field(default_factory=list)
    evaluations: list[str] = field(default_factory=list)
    include_files: bool = True  # the original documents, so the demo can be rebuilt


def _knowledge_members(
    store: KnowledgeStore, name: str, folder: str, with_files: bool
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A knowledge base's members of the bundle, and its entry in the manifest."""
    import numpy as np
    from safetensors.numpy import save

    kb = store.open(name)
    documents = [d for d in kb.documents() if d.status == "complete"]
    complete = {d.doc_id for d in documents}
    rows, vectors = [], []
    for got in kb.stored_batches():
        for passage_id, text, meta, vector in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        ):
            if meta.get("doc_id") in complete:  # a document still being written is left out
                rows.append(json.dumps({"id": passage_id, "text": text, "metadata": meta}))
                vectors.append(vector)
    catalog = {
        "name": kb.name,
        "embedding_model": kb.embedding_model,
        "documents": [asdict(d) for d in documents],
    }
    members = {
        f"{folder}/catalog.json": json.dumps(catalog).encode(),
        f"{folder}/passages.jsonl": "\n".join(rows).encode(),
        f"{folder}/embeddings.safetensors": save(
            {"embeddings": np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)}
        ),
    }
    if with_files:
        for record in documents:
            path = kb.original_path(record)
            if path.is_file():
                members[f"{folder}/files/{path.name}"] = path.read_bytes()
    entry = {
        "name": name,
        "folder": folder,
        "documents": len(documents),
        "passages": len(rows),
        "with_files": with_files,
    }
    return members, entry


def _adapter_members(info: adapters.AdapterInfo, folder: str) -> dict[str, bytes]:
    """An adapter's files for a bundle, with the base model named as shared_name does (PEFT
    records the local folder the base model was loaded from; we never read it back)."""
    members = {
        f"{folder}/{name}": (info.folder / name).read_bytes() for name in adapters.SHARED_FILES
    }
    for name, key in (
        (adapters.ADAPTER_CONFIG_FILE, "base_model_name_or_path"),
        (runs.METADATA_FILE, "base_model"),
    ):
        data = json.loads(members[f"{folder}/{name}"])
        if isinstance(data, dict) and isinstance(data.get(key), str):
            data[key] = models.shared_name(data[key])
        members[f"{folder}/{name}"] = json.dumps(data, indent=2).encode()
    return members


def export_bundle(
    settings: Settings,
    store: KnowledgeStore,
    choice: ExportChoice,
    target: Path,
    progress: Progress = _quiet,
) -> Path:
    """Write the chosen things as one bundle at `target`."""
    members: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "app_version": app_version(),
        "created": time.time(),
        "base_model": models.shared_name(settings.base_model),
        "embedding_model": models.shared_name(settings.embedding_model),
        "settings": {name: getattr(settings, name) for name in SHARED_SETTINGS},
        "knowledge_bases": [],
        "adapters": [],
    }
    steps = max(len(choice.knowledge_bases) + len(choice.adapters) + 1, 1)
    for n, name in enumerate(choice.knowledge_bases, 1):
        progress((n - 1) / steps, f"Knowledge base '{name}'")
        folder = f"knowledge/{n}"
        found, entry = _knowledge_members(store, name, folder, choice.include_files)
        members.update(found)
        manifest["knowledge_bases"].append(entry)
    for n, run_id in enumerate(choice.adapters, 1):
        info = adapters.get(settings, run_id)
        progress((len(choice.knowledge_bases) + n - 1) / steps, f"Adapter '{info.name}'")
        folder = f"adapters/{n}"
        members.update(_adapter_members(info, folder))
        manifest["adapters"].append(
            {
                "name": info.name,
                "run_id": run_id,
                "folder": folder,
                "base_model": models.shared_name(info.base_model),
            }
        )
    for conversation_id in choice.conversations:
        conversation = arena.load(settings, conversation_id)
        conversation.model = models.shared_name(conversation.model)
        members[f"arena/{conversation.id}.json"] = arena.to_json(conversation).encode()
    for report_id in choice.evaluations:
        report = evaluate.load(settings, report_id)
        report.model = models.shared_name(report.model)
        members[f"evaluations/{report.id}.json"] = json.dumps(asdict(report)).encode()
    progress((steps - 1) / steps, "Writing the zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_zip(target, manifest, members)
    progress(1.0, "Done")
    return target


# -- import ----------------------------------------------------------------------------------------
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
    conversations: list[arena.Conversation]
    evaluations: list[evaluate.Report]
    catalogs: dict[str, CatalogFile] = field(default_factory=dict)  # folder -> catalog
    adapter_meta: dict[str, adapters.AdapterMeta] = field(default_factory=dict)  # folder -> meta


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
    return models.shared_name(bundled) == models.shared_name(here)


def _parsed(bundle: Bundle) -> tuple[list[arena.Conversation], list[evaluate.Report]]:
    try:
        return (
            [arena.Conversation.from_dict(bundle.json(n)) for n in bundle.conversations],
            [evaluate.Report.from_dict(bundle.json(n)) for n in bundle.evaluations],
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
                f"'{models.shared_name(settings.embedding_model)}'. Set LRS_EMBEDDING_MODEL to "
                "that model to import it."
            )
        kbs[catalog.name] = _claim(catalog.name, kb_taken, conflicts, "knowledge base", replace)
    found_adapters: dict[str, str] = {}
    metas: dict[str, adapters.AdapterMeta] = {}
    for entry in bundle.adapters:
        try:
            meta = adapters.AdapterMeta.model_validate_json(
                bundle.members[f"{entry.folder}/{runs.METADATA_FILE}"]
            )
        except ValidationError as error:
            raise BundleError(f"The adapter '{entry.name}' in the bundle is damaged.") from error
        metas[entry.folder] = meta
        name = " ".join((meta.name or entry.name).split())[: adapters.MAX_NAME] or "adapter"
        if not _same_model(meta.base_model, settings.base_model):
            raise BundleError(
                f"The adapter '{name}' was trained on the model '{meta.base_model}', but this "
                f"studio uses '{models.shared_name(settings.base_model)}': it cannot work with "
                "it. Set LRS_BASE_MODEL to that model to import it."
            )
        found_adapters[entry.run_id] = _claim(
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
    adapter_dir = staging / runs.ADAPTER_DIR
    adapter_dir.mkdir(parents=True)
    try:
        for file_name in adapters.SHARED_FILES:
            (adapter_dir / file_name).write_bytes(plan.bundle.members[f"{folder}/{file_name}"])
        meta = plan.adapter_meta[folder].model_dump()
        # This studio's own name for the same base model: adapters.compatible compares it.
        meta.update(name=name, base_model=settings.base_model, run_id=run_id)
        runs.atomic_write_json(adapter_dir / runs.METADATA_FILE, meta)
        runs.atomic_write_json(staging / runs.CONFIG_FILE, {"name": name, "imported": True})
        runs.atomic_write_json(
            staging / runs.STATUS_FILE, {"state": "completed", "finished": time.time()}
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
        undo.add(lambda t=staged: store.delete(t) if t in store.names() else None)
        _import_kb(settings, store, plan, entry.folder, staged)
        temporary[name] = staged
    run_ids: dict[str, str] = {}
    for n, entry in enumerate(bundle.adapters, len(bundle.knowledge_bases)):
        name = plan.adapters[entry.run_id]
        progress(n / steps, f"Adding the adapter '{name}'")
        target = _import_adapter(settings, plan, entry.folder, name)
        undo.add(lambda target=target: shutil.rmtree(target))
        run_ids[entry.run_id] = target.name
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
            undo.add(lambda a=aside, p=previous: store.rename(a, p))
            afterwards.append(lambda a=aside: store.delete(a))
        store.rename(staged_name, name)
        undo.add(lambda n=name, t=staged_name: store.rename(n, t))
    if replace:
        new_runs = set(run_ids.values())
        replaced = {n.casefold() for n in plan.adapters.values()}
        for info in adapters.list_adapters(settings):
            if info.run_id not in new_runs and info.name.casefold() in replaced:
                afterwards.append(lambda r=info.run_id: adapters.delete(settings, r))
    saved: list[tuple[arena.Conversation | evaluate.Report, Any, Any]] = [
        *((c, arena.conversation_path, arena.save) for c in plan.conversations),
        *((r, evaluate.report_path, evaluate.save) for r in plan.evaluations),
    ]
    for item, path_of, save in saved:  # conversations and reports: pointed at what is here now
        item.adapter = run_ids.get(item.adapter, item.adapter)
        item.knowledge_base = plan.knowledge_bases.get(item.knowledge_base, item.knowledge_base)
        item.model = settings.base_model
        if isinstance(item, evaluate.Report) and item.state == "running":
            item.state = "cancelled"  # exported mid-run: it can be resumed, not watched
        if path_of(settings, item.id).exists() and not replace:
            item.id = new_id()
        _write_restorably(
            path_of(settings, item.id), lambda i=item, save=save: save(settings, i), undo
        )
    return afterwards


def import_bundle(
    settings: Settings,
    store: KnowledgeStore,
    source: Bundle | bytes | Path,
    *,
    replace: bool = False,
    progress: Progress = _quiet,
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


# -- demo mode -------------------------------------------------------------------------------------
def _check_model_available(spec: str, settings: Settings, role: str) -> None:
    source = models.describe_model(spec, settings)
    if source.path is None and (settings.offline or not models.hub_reachable()):
        raise ModelNotAvailableError(
            f"This demo needs the {role} '{spec}', which is not on this machine, and the "
            "Hugging Face Hub cannot be reached to download it. Download it where there is "
            "internet and start the demo again."
        )


def _demo_model(bundled: str, here: str, role: str) -> str:
    """The model a demo runs on: this studio's own when it is the same one, else the bundle's
    (an embedded model or a Hub id; a folder on its maker's machine cannot be found here)."""
    if not bundled or models.shared_name(here) == bundled:
        return here
    if bundled.startswith("folder:"):
        raise ModelNotAvailableError(
            f"This demo was made with a model from a folder called '{bundled[7:]}' on its maker's "
            f"machine. Copy that model here and set LRS_{role}_MODEL to its folder."
        )
    return bundled


def open_demo(settings: Settings, progress: Progress = _quiet) -> Settings:
    """The settings of a studio presenting `settings.demo_bundle` read-only. The bundle is
    checked and unpacked once into its own folder (by content hash) under the data folder."""
    from filelock import FileLock

    path = settings.demo_bundle
    if path is None:
        return settings
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BundleError(
            f"The demo bundle '{path}' (LRS_DEMO_BUNDLE) cannot be read: {error.strerror}."
        ) from error
    digest = sha256(data)
    folder = settings.data_dir / "demos" / digest[:16]
    ready = folder / ".ready"
    bundle = None
    try:  # unpacked before: its manifest was kept, the bundle needs no second check
        manifest = Manifest.model_validate_json(ready.read_bytes())
    except (OSError, ValidationError):
        bundle = read_bundle(data, settings.max_bundle_mb * 1_000_000)
        manifest = bundle.manifest
    demo = settings.model_copy(
        update={
            "data_dir": folder,
            "model_cache_dir": settings.models_dir,
            "base_model": _demo_model(manifest.base_model, settings.base_model, "BASE"),
            "embedding_model": _demo_model(
                manifest.embedding_model, settings.embedding_model, "EMBEDDING"
            ),
            "chroma_host": None,  # a demo keeps its own copy, never touching a shared server
            "read_only": False,
            **{k: v for k, v in manifest.settings.items() if k in SHARED_SETTINGS},
        }
    )
    demo = type(settings).model_validate(demo.model_dump())  # re-check the bundle's settings
    _check_model_available(demo.base_model, demo, "chat model")
    _check_model_available(demo.embedding_model, demo, "search model")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{digest[:16]}.lock")):
        if not ready.exists():
            bundle = bundle or read_bundle(data, settings.max_bundle_mb * 1_000_000)
            shutil.rmtree(folder, ignore_errors=True)  # an unpacking that was cut short
            folder.mkdir(parents=True)
            import_bundle(demo, KnowledgeStore(demo, None), bundle, progress=progress)
            ready.write_text(manifest.model_copy(update={"files": {}}).model_dump_json())
    return demo.model_copy(update={"read_only": True})
