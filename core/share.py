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
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import adapters, arena, evaluate, models, runs
from core.bundle import FORMAT, FORMAT_VERSION, Bundle, BundleError, read_bundle, sha256, write_zip
from core.errors import KnowledgeBaseError, ModelNotAvailableError, StudioError
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
        "base_model": settings.base_model,
        "embedding_model": settings.embedding_model,
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
        for file_name in adapters.SHARED_FILES:
            members[f"{folder}/{file_name}"] = (info.folder / file_name).read_bytes()
        manifest["adapters"].append(
            {"name": info.name, "run_id": run_id, "folder": folder, "base_model": info.base_model}
        )
    for conversation_id in choice.conversations:
        conversation = arena.load(settings, conversation_id)
        members[f"arena/{conversation.id}.json"] = arena.to_json(conversation).encode()
    for report_id in choice.evaluations:
        report = evaluate.load(settings, report_id)
        members[f"evaluations/{report.id}.json"] = json.dumps(asdict(report)).encode()
    progress((steps - 1) / steps, "Writing the zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_zip(target, manifest, members)
    progress(1.0, "Done")
    return target


# -- import ----------------------------------------------------------------------------------------
@dataclass
class ImportPlan:
    """What an import would write, checked against this studio: no writing yet."""

    bundle: Bundle
    knowledge_bases: dict[str, str]  # name in the bundle -> name it gets here
    adapters: dict[str, str]  # run id in the bundle -> name it gets here
    conflicts: list[str]  # names already taken here (replaced only when the user confirms)
    conversations: list[arena.Conversation]
    evaluations: list[evaluate.Report]


def _free_name(wanted: str, taken: set[str], limit: int = 64) -> str:
    """`wanted`, or "wanted - imported", "wanted - imported 2"... when it is taken (characters a
    knowledge base name allows)."""
    if wanted.casefold() not in taken:
        return wanted
    for number in range(1, 1000):
        candidate = f"{wanted[: limit - 16]} - imported{f' {number}' if number > 1 else ''}"
        if candidate.casefold() not in taken:
            return candidate
    return f"{wanted[: limit - 20]} {uuid.uuid4().hex[:8]}"


def _claim(
    name: str, taken: set[str], conflicts: list[str], what: str, replace: bool, limit: int = 64
) -> str:
    """The name an imported thing gets here; a taken name is noted as a conflict."""
    if name.casefold() in taken:
        conflicts.append(f"{what} '{name}'")
    chosen = name if replace else _free_name(name, taken, limit)
    taken.add(chosen.casefold())
    return chosen


def _check_catalog(catalog: Any) -> None:
    """The documents of a knowledge base in a bundle: well-formed records whose file names
    (made from the content hash and type) cannot point anywhere else."""
    try:
        validate_name(str(catalog["name"]))
        for row in catalog["documents"]:
            record = DocumentRecord(**row)
            if not _HASH.match(str(record.content_hash)) or record.file_type not in FILE_TYPES:
                raise ValueError(record.name)
    except (KeyError, TypeError, ValueError, KnowledgeBaseError) as error:
        raise BundleError(
            "A knowledge base in the bundle has a damaged list of documents: refused."
        ) from error


def plan_import(settings: Settings, bundle: Bundle, replace: bool = False) -> ImportPlan:
    """Check the bundle's models against this studio and choose the names things get."""
    kb_taken = {n.casefold() for n in knowledge_base_names(settings)}
    adapter_taken = {a.name.casefold() for a in adapters.list_adapters(settings)}
    conflicts = []
    kbs: dict[str, str] = {}
    for entry in bundle.knowledge_bases:
        catalog = bundle.json(f"{entry['folder']}/catalog.json")
        name, model = str(catalog.get("name", "")), str(catalog.get("embedding_model", ""))
        _check_catalog(catalog)
        if model != settings.embedding_model:
            raise BundleError(
                f"The knowledge base '{name}' was built with the search model '{model}', but this "
                f"studio uses '{settings.embedding_model}'. Set LRS_EMBEDDING_MODEL={model} to "
                "import it."
            )
        kbs[name] = _claim(name, kb_taken, conflicts, "knowledge base", replace)
    found_adapters: dict[str, str] = {}
    for entry in bundle.adapters:
        meta = bundle.json(f"{entry['folder']}/{runs.METADATA_FILE}")
        name, base = (
            str(meta.get("name") or entry.get("name", "adapter")),
            str(meta.get("base_model", "")),
        )
        if base != settings.base_model:
            raise BundleError(
                f"The adapter '{name}' was trained on the model '{base}', but this studio uses "
                f"'{settings.base_model}': it cannot work with it. Set LRS_BASE_MODEL={base} to "
                "import it."
            )
        found_adapters[str(entry["run_id"])] = _claim(
            name, adapter_taken, conflicts, "adapter", replace, limit=80
        )
    try:
        conversations = [arena.Conversation.from_dict(bundle.json(n)) for n in bundle.conversations]
        reports = [evaluate.Report.from_dict(bundle.json(n)) for n in bundle.evaluations]
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise BundleError("A saved conversation or report in the bundle cannot be read.") from error
    return ImportPlan(bundle, kbs, found_adapters, conflicts, conversations, reports)


@dataclass
class ImportResult:
    knowledge_bases: list[str]
    adapters: list[str]  # names
    conversations: list[str]  # ids
    evaluations: list[str]  # ids


class _Undo:
    """What an import has written so far, to remove again if a later step fails."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

    def add(self, step: Callable[[], None]) -> None:
        self.steps.append(step)

    def run(self) -> None:
        for step in reversed(self.steps):
            with contextlib.suppress(Exception):  # undo as much as can be undone
                step()


def _import_kb(
    settings: Settings, store: KnowledgeStore, bundle: Bundle, folder: str, name: str
) -> None:
    kb = store.create(name)
    catalog = bundle.json(f"{folder}/catalog.json")
    passages = bundle.jsonl(f"{folder}/passages.jsonl")
    vectors = bundle.vectors[folder]  # parsed and checked by read_bundle
    for start in range(0, len(passages), _BATCH):
        batch = passages[start : start + _BATCH]
        kb.store._collection.add(
            ids=[str(p["id"]) for p in batch],
            documents=[str(p["text"]) for p in batch],
            metadatas=[dict(p["metadata"]) for p in batch],
            embeddings=vectors[start : start + len(batch)],
        )
    for row in catalog.get("documents", []):
        record = DocumentRecord(**{**row, "status": "pending", "owner": this_process()})
        original = f"{folder}/files/{record.content_hash}.{record.file_type}"
        if original in bundle.members:
            data = bundle.members[original]
            if sha256(data) != record.content_hash:
                raise BundleError(f"The original of '{record.name}' does not match its record.")
            kb.files_dir.mkdir(parents=True, exist_ok=True)
            kb.original_path(record).write_bytes(data)
        kb.catalog.add_pending(record)
        kb.catalog.complete(record.doc_id)


def _import_adapter(settings: Settings, bundle: Bundle, folder: str, name: str) -> Path:
    run_id = new_run_id()
    staging = settings.data_dir / "imports" / uuid.uuid4().hex
    adapter_dir = staging / runs.ADAPTER_DIR
    adapter_dir.mkdir(parents=True)
    try:
        for file_name in adapters.SHARED_FILES:
            (adapter_dir / file_name).write_bytes(bundle.members[f"{folder}/{file_name}"])
        meta = json.loads((adapter_dir / runs.METADATA_FILE).read_text())
        runs.atomic_write_json(adapter_dir / runs.METADATA_FILE, {**meta, "name": name})
        runs.atomic_write_json(staging / runs.CONFIG_FILE, {"name": name, "imported": True})
        runs.atomic_write_json(
            staging / runs.STATUS_FILE, {"state": "completed", "finished": time.time()}
        )
        target = runs_dir(settings) / run_id
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(target)  # the adapter appears whole, or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()
    return target


def _restorer(path: Path) -> Callable[[], None]:
    """An undo step for a file about to be written: put back what was there, or remove it."""
    before = path.read_bytes() if path.exists() else None

    def restore() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)

    return restore


def _swap_kb(store: KnowledgeStore, temporary: str, old: str, new: str, undo: _Undo) -> None:
    """Put the imported knowledge base in the place of the one it replaces; the old one is set
    aside first and comes back if the swap fails."""
    aside = f"replaced-{uuid.uuid4().hex[:12]}"
    store.rename(old, aside)
    undo.add(lambda: store.rename(aside, old))
    store.rename(temporary, new)
    undo.add(lambda: store.rename(new, temporary))
    store.delete(aside)


def import_bundle(
    settings: Settings,
    store: KnowledgeStore,
    source: Bundle | bytes | Path,
    *,
    replace: bool = False,
    progress: Progress = _quiet,
) -> ImportResult:
    """Check a bundle whole (unless `source` is one read_bundle checked), then write it into
    this studio; on any failure nothing stays."""
    check_writable(settings, "Importing a demo")
    progress(0.0, "Checking the bundle")
    if not isinstance(source, Bundle):
        source = read_bundle(source, settings.max_bundle_mb * 1_000_000)
    plan = plan_import(settings, source, replace)
    bundle, undo = plan.bundle, _Undo()
    existing_kbs = {n.casefold(): n for n in store.names()}
    existing_adapters = {a.name.casefold(): a for a in adapters.list_adapters(settings)}
    run_ids: dict[str, str] = {}
    replaced: list[Callable[[], None]] = []
    steps = len(bundle.knowledge_bases) + len(bundle.adapters) + 1
    try:
        for n, entry in enumerate(bundle.knowledge_bases):
            old_name = str(bundle.json(f"{entry['folder']}/catalog.json")["name"])
            name = plan.knowledge_bases[old_name]
            progress(n / steps, f"Adding the knowledge base '{name}'")
            if name.casefold() in existing_kbs:  # replace: build beside it, swap at the end
                temporary = f"import-{uuid.uuid4().hex[:12]}"
                _import_kb(settings, store, bundle, entry["folder"], temporary)
                undo.add(lambda t=temporary: store.delete(t))
                previous = existing_kbs[name.casefold()]
                replaced.append(
                    lambda t=temporary, old=previous, new=name: _swap_kb(store, t, old, new, undo)
                )
            else:
                undo.add(lambda name=name: store.delete(name))
                _import_kb(settings, store, bundle, entry["folder"], name)
        for n, entry in enumerate(bundle.adapters, len(bundle.knowledge_bases)):
            name = plan.adapters[str(entry["run_id"])]
            progress(n / steps, f"Adding the adapter '{name}'")
            target = _import_adapter(settings, bundle, entry["folder"], name)
            undo.add(lambda target=target: shutil.rmtree(target))
            run_ids[str(entry["run_id"])] = target.name
            old = existing_adapters.get(name.casefold())
            if old is not None:
                replaced.append(lambda old=old: adapters.delete(settings, old.run_id))
        progress((steps - 1) / steps, "Adding conversations and reports")
        for conversation in plan.conversations:
            conversation.adapter = run_ids.get(conversation.adapter, conversation.adapter)
            conversation.knowledge_base = plan.knowledge_bases.get(
                conversation.knowledge_base, conversation.knowledge_base
            )
            path = arena.arena_dir(settings) / "conversations" / f"{conversation.id}.json"
            if path.exists() and not replace:
                conversation.id = uuid.uuid4().hex[:12]
                path = path.with_name(f"{conversation.id}.json")
            undo.add(_restorer(path))
            arena.save(settings, conversation)
        for report in plan.evaluations:
            report.adapter = run_ids.get(report.adapter, report.adapter)
            report.knowledge_base = plan.knowledge_bases.get(
                report.knowledge_base, report.knowledge_base
            )
            if report.state == "running":
                report.state = "cancelled"  # exported mid-run: it can be resumed, not watched
            if (evaluate.reports_dir(settings) / f"{report.id}.json").exists() and not replace:
                report.id = uuid.uuid4().hex[:12]
            undo.add(_restorer(evaluate.reports_dir(settings) / f"{report.id}.json"))
            evaluate.save(settings, report)
        for swap in replaced:
            swap()
    except BaseException as error:
        undo.run()
        if isinstance(error, StudioError | KeyboardInterrupt):
            raise
        raise BundleError(
            f"The import stopped on a problem ({type(error).__name__}); nothing was kept. "
            "Check that there is free disk space and try again."
        ) from error
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
        manifest = json.loads(ready.read_text())["manifest"]
    except (OSError, ValueError, KeyError):
        bundle = read_bundle(data, settings.max_bundle_mb * 1_000_000)
        manifest = bundle.manifest
    demo = settings.model_copy(
        update={
            "data_dir": folder,
            "model_cache_dir": settings.models_dir,
            "base_model": str(manifest.get("base_model") or settings.base_model),
            "embedding_model": str(manifest.get("embedding_model") or settings.embedding_model),
            "chroma_host": None,  # a demo keeps its own copy, never touching a shared server
            "read_only": False,
            **{
                k: v
                for k, v in dict(manifest.get("settings") or {}).items()
                if k in SHARED_SETTINGS
            },
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
            kept = {k: v for k, v in manifest.items() if k != "files"}
            ready.write_text(json.dumps({"bundle": str(path), "sha256": digest, "manifest": kept}))
    return demo.model_copy(update={"read_only": True})
