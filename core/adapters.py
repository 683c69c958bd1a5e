"""Finished adapters: list, rename, delete, download as a zip, and attach one to the chat model.

An adapter is the `adapter/` folder of a completed run (core.runs): PEFT's
`adapter_model.safetensors` and `adapter_config.json`, and our `studio.json` metadata.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import runs
from core.errors import InvalidInputError, ModelNotAvailableError
from core.generate import ChatModel
from core.jobs import delete_run, run_folder, runs_dir
from core.settings import Settings, check_writable

WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's names (peft.utils), without importing it
ADAPTER_CONFIG_FILE = "adapter_config.json"
# What leaves the studio with an adapter (zip download, demo bundle): never the training data.
SHARED_FILES = (WEIGHTS_FILE, ADAPTER_CONFIG_FILE, runs.METADATA_FILE)


@dataclass
class AdapterInfo:
    run_id: str
    folder: Path
    name: str
    base_model: str
    compatible: bool  # trained on the base model the studio uses now
    dataset_name: str
    system_prompt: str  # the instructions it was trained under: answer with the same ones
    preset: str
    settings: dict[str, Any]
    final_train_loss: float | None
    final_eval_loss: float | None
    duration_s: float
    created: float
    size_bytes: int
    train_loss: list[list[float]] = field(default_factory=list)
    eval_loss: list[list[float]] = field(default_factory=list)

    @property
    def incompatibility(self) -> str:
        return (
            ""
            if self.compatible
            else f"Trained on '{self.base_model}', not on the model the studio uses now: it "
            "cannot be used with it."
        )


def _info(settings: Settings, run_dir: Path) -> AdapterInfo | None:
    folder = run_dir / runs.ADAPTER_DIR
    try:
        meta = json.loads((folder / runs.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (folder / WEIGHTS_FILE).exists():
        return None
    return AdapterInfo(
        run_id=run_dir.name,
        folder=folder,
        name=str(meta.get("name") or run_dir.name),
        base_model=str(meta.get("base_model", "")),
        compatible=meta.get("base_model") == settings.base_model,
        dataset_name=str(meta.get("dataset_name", "")),
        system_prompt=str(meta.get("system_prompt", "")),
        preset=str(meta.get("preset", "")),
        settings=dict(meta.get("settings") or {}),
        final_train_loss=meta.get("final_train_loss"),
        final_eval_loss=meta.get("final_eval_loss"),
        duration_s=float(meta.get("duration_s") or 0),
        created=float(meta.get("created") or 0),
        size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        train_loss=list(meta.get("train_loss") or []),
        eval_loss=list(meta.get("eval_loss") or []),
    )


def list_adapters(settings: Settings) -> list[AdapterInfo]:
    """Every finished adapter, newest first; those for the current base model first of all."""
    folder = runs_dir(settings)
    if not folder.is_dir():
        return []
    found = [info for p in folder.iterdir() if (info := _info(settings, p)) is not None]
    return sorted(found, key=lambda a: (not a.compatible, -a.created))


def get(settings: Settings, run_id: str) -> AdapterInfo:
    try:
        info = _info(settings, run_folder(settings, run_id))
    except InvalidInputError:
        info = None
    if info is None:
        raise InvalidInputError(f"There is no adapter '{run_id}'.")
    return info


def rename(settings: Settings, run_id: str, new_name: str) -> AdapterInfo:
    check_writable(settings, "Renaming adapters")
    name = " ".join(new_name.split())
    if not name:
        raise InvalidInputError("Give the adapter a name.")
    if len(name) > 80:
        raise InvalidInputError("Keep the name under 80 characters.")
    info = get(settings, run_id)
    path = info.folder / runs.METADATA_FILE
    meta = json.loads(path.read_text())
    meta["name"] = name
    runs.atomic_write_json(path, meta)
    return get(settings, run_id)


def delete(settings: Settings, run_id: str) -> None:
    """Delete the adapter with its run."""
    delete_run(settings, get(settings, run_id).run_id)


def zip_bytes(settings: Settings, run_id: str) -> bytes:
    """The adapter as a zip: the files PEFT loads (`PeftModel.from_pretrained(base, folder)`),
    our metadata, and nothing else."""
    info = get(settings, run_id)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in SHARED_FILES:
            archive.write(info.folder / name, arcname=name)
    return buffer.getvalue()


def attach(chat: ChatModel, settings: Settings, run_id: str) -> AdapterInfo:
    """Load an adapter into the chat model beside the base weights, ready to answer with
    `adapter=run_id`. Raises ModelNotAvailableError, in plain words, when it cannot be used."""
    info = get(settings, run_id)
    if not info.compatible:
        raise ModelNotAvailableError(info.incompatibility)
    chat.load_adapter(info.run_id, info.folder, info.name)
    return info
