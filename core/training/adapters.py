"""Finished adapters: list, rename, delete, download as a zip, and attach one to the chat model.

An adapter is the `adapter/` folder of a completed run (core.training.run_folder): PEFT's
`adapter_model.safetensors` and `adapter_config.json`, and our `studio.json` metadata.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from core import files
from core.errors import InvalidInputError, ModelNotAvailableError
from core.model.chat import ChatModel
from core.settings import Settings, check_writable
from core.training import run_folder
from core.training.check import Check
from core.training.datasets import DOCUMENTS_SHAPE
from core.training.jobs import delete_run, run_path, runs_dir

WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's names (peft.utils), without importing it
ADAPTER_CONFIG_FILE = "adapter_config.json"
# What leaves the studio with an adapter (zip download, demo bundle): never the training data.
SHARED_FILES = (WEIGHTS_FILE, ADAPTER_CONFIG_FILE, run_folder.METADATA_FILE)
MAX_NAME = 80


class CheckRecord(BaseModel):
    """The after-training check as kept in `studio.json` (core.training.check.Check)."""

    examples: int = Field(ge=1, le=1000)
    signature: list[str] = Field(default_factory=list, max_length=10)
    tuned: float
    base: float
    took: bool
    question: str = Field("", max_length=20_000)
    expected: str = Field("", max_length=20_000)
    base_answer: str = Field("", max_length=20_000)
    tuned_answer: str = Field("", max_length=20_000)


class AdapterMeta(BaseModel):
    """An adapter's `studio.json`, as read back from disk or a bundle: every field type-checked
    (extra fields are kept, for older and newer studios)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field("", max_length=MAX_NAME)
    base_model: str = Field("", max_length=300)
    dataset_name: str = Field("", max_length=300)
    dataset_shape: str = Field("", max_length=64)
    system_prompt: str = Field("", max_length=20_000)
    preset: str = Field("", max_length=64)
    settings: dict[str, Any] = Field(default_factory=dict)
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    duration_s: float = 0.0
    created: float = 0.0
    train_loss: list[list[float]] = Field(default_factory=list)
    eval_loss: list[list[float]] = Field(default_factory=list)
    check: CheckRecord | None = None

    @field_validator("check", mode="wrap")
    @classmethod
    def _check_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A check that does not read back is left out; the adapter itself stays usable."""
        try:
            return handler(value)
        except ValidationError:
            return None


def read_meta(path: Path) -> AdapterMeta | None:
    """The metadata at `path`, or None when it is missing or not valid."""
    try:
        return AdapterMeta.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


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
    reads_documents: bool = False  # trained to answer from retrieved passages (RAFT)
    check: Check | None = None  # does it answer like the examples? (core.training.check)

    @property
    def incompatibility(self) -> str:
        return (
            ""
            if self.compatible
            else f"Trained on '{self.base_model}', not on the model the studio uses now: it "
            "cannot be used with it."
        )


def _info(settings: Settings, run_dir: Path) -> AdapterInfo | None:
    folder = run_dir / run_folder.ADAPTER_DIR
    meta = read_meta(folder / run_folder.METADATA_FILE)
    if meta is None or not (folder / WEIGHTS_FILE).exists():
        return None
    return AdapterInfo(
        run_id=run_dir.name,
        folder=folder,
        name=meta.name or run_dir.name,
        base_model=meta.base_model,
        compatible=meta.base_model == settings.base_model,
        dataset_name=meta.dataset_name,
        system_prompt=meta.system_prompt,
        preset=meta.preset,
        settings=meta.settings,
        final_train_loss=meta.final_train_loss,
        final_eval_loss=meta.final_eval_loss,
        duration_s=meta.duration_s,
        created=meta.created,
        size_bytes=sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
        train_loss=meta.train_loss,
        eval_loss=meta.eval_loss,
        reads_documents=meta.dataset_shape == DOCUMENTS_SHAPE,
        check=Check(**meta.check.model_dump()) if meta.check is not None else None,
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
        info = _info(settings, run_path(settings, run_id))
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
    if len(name) > MAX_NAME:
        raise InvalidInputError(f"Keep the name under {MAX_NAME} characters.")
    info = get(settings, run_id)
    path = info.folder / run_folder.METADATA_FILE
    meta = read_meta(path) or AdapterMeta()
    files.atomic_write_json(path, meta.model_copy(update={"name": name}).model_dump())
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
