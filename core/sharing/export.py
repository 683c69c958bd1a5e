"""Export a demo: chosen knowledge bases, adapters, conversations and reports as one bundle
(core.sharing.bundle), with the settings that shape answers."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.answering import conversations
from core.evaluation import runner
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.settings import Settings
from core.sharing.bundle import (
    FORMAT,
    FORMAT_VERSION,
    write_zip,
)
from core.training import adapters, run_folder

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
# The settings that shape answers: a demo is presented with the ones it was made with.
SHARED_SETTINGS = ("system_prompt", "temperature", "top_p", "max_new_tokens", "top_k")


def app_version() -> str:
    try:
        return importlib.metadata.version("lora-rag-studio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def quiet(fraction: float, message: str) -> None:
    """The default progress callback: nobody is watching."""


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
        (run_folder.METADATA_FILE, "base_model"),
    ):
        data = json.loads(members[f"{folder}/{name}"])
        if isinstance(data, dict) and isinstance(data.get(key), str):
            data[key] = loading.shared_name(data[key])
        members[f"{folder}/{name}"] = json.dumps(data, indent=2).encode()
    return members


def export_bundle(
    settings: Settings,
    store: KnowledgeStore,
    choice: ExportChoice,
    target: Path,
    progress: Progress = quiet,
) -> Path:
    """Write the chosen things as one bundle at `target`."""
    members: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "app_version": app_version(),
        "created": time.time(),
        "base_model": loading.shared_name(settings.base_model),
        "embedding_model": loading.shared_name(settings.embedding_model),
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
                "base_model": loading.shared_name(info.base_model),
            }
        )
    for conversation_id in choice.conversations:
        conversation = conversations.load(settings, conversation_id)
        conversation.model = loading.shared_name(conversation.model)
        members[f"arena/{conversation.id}.json"] = conversations.to_json(conversation).encode()
    for report_id in choice.evaluations:
        report = runner.load(settings, report_id)
        report.model = loading.shared_name(report.model)
        members[f"evaluations/{report.id}.json"] = json.dumps(asdict(report)).encode()
    progress((steps - 1) / steps, "Writing the zip")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_zip(target, manifest, members)
    progress(1.0, "Done")
    return target
