"""The run folder: the files a training run is made of, shared by the worker and the app.

data/runs/<run id>/
    config.json     what to train (RunSpec), written before the worker starts
    dataset.jsonl   the examples as chat messages
    status.json     progress, replaced atomically by the worker; heartbeat every few seconds
    train.log       the worker's output
    cancel          present when the user asked to stop
    checkpoints/    resumable states; a `complete` marker is written once a save finished
    adapter/        the result: adapter_model.safetensors, adapter_config.json, studio.json
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core import files
from core.training.config import TrainConfig
from core.training.datasets import Dataset, Message
from core.typed import parse

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.jsonl"
STATUS_FILE = "status.json"
LOG_FILE = "train.log"
CANCEL_FILE = "cancel"
ADAPTER_DIR = "adapter"
METADATA_FILE = "studio.json"
CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "complete"


@dataclass
class RunSpec:
    """Everything the worker needs, written to `config.json` before it starts."""

    run_id: str
    name: str
    base_model: str
    model_path: str  # the prepared local folder of the base model
    device: str
    dtype: str
    trust_remote_code: bool
    system_prompt: str
    dataset_name: str
    dataset_hash: str
    dataset_shape: str
    preset: str
    config: TrainConfig
    created: float = field(default_factory=time.time)
    processes: int = 1  # training processes (data parallel, one per GPU), under torchrun

    def save(self, run_dir: Path) -> None:
        files.atomic_write_json(run_dir / CONFIG_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        """The run's spec as written at its start: every field type-checked (InvalidInputError
        for one that is wrong; OSError when there is none)."""
        return parse(cls, json.loads((run_dir / CONFIG_FILE).read_text()), "A run's settings")


def write_dataset(run_dir: Path, dataset: Dataset) -> None:
    with (run_dir / DATASET_FILE).open("w") as handle:
        for messages in dataset.examples:
            handle.write(json.dumps({"messages": messages}) + "\n")


class _Example(BaseModel):
    messages: list[dict[str, str]]


def read_dataset(run_dir: Path) -> list[list[Message]]:
    """The examples the run trains on, as written at its start (each row type-checked)."""
    lines = (run_dir / DATASET_FILE).read_text().splitlines()
    rows = [_Example.model_validate_json(line) for line in lines if line.strip()]
    return [row.messages for row in rows]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose save finished (a kill during a save leaves one without the marker)."""
    folder = run_dir / CHECKPOINTS_DIR
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


class StatusWriter:
    """Owns `status.json` in the worker: every change replaces the file atomically, and a
    heartbeat refreshes it so that a watcher can tell a slow step from a dead worker."""

    HEARTBEAT_S = 5.0

    def __init__(self, run_dir: Path, initial: dict[str, Any], *, write: bool = True) -> None:
        self.path = run_dir / STATUS_FILE
        self._lock = threading.Lock()
        self.data = initial
        self._write = write  # False: another process of a distributed run; the first one writes
        self._stop = threading.Event()
        self.update()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        if write:
            self._thread.start()

    def update(self, **values: Any) -> None:
        with self._lock:
            self.data.update(values, heartbeat=time.time())
            if self._write:
                files.atomic_write_json(self.path, self.data)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            self.update()

    def close(self) -> None:
        self._stop.set()


class RunProgress(BaseModel):
    """How far a run is: what `status.json` says of it and the page shows."""

    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    total_epochs: float = 0.0
    tokens_per_s: float | None = None
    eta_s: float | None = None
    started: float | None = None
    finished: float | None = None
    train_loss: list[list[float]] = Field(default_factory=list)
    eval_loss: list[list[float]] = Field(default_factory=list)
    error: str | None = None


class WorkerStatus(RunProgress):
    """`status.json` as the worker writes it, type-checked when read back (extra fields, such
    as the checkpoint's step, are kept)."""

    model_config = ConfigDict(extra="allow")

    state: str = "starting"
    message: str = ""
    pid: int | None = None
    host: str | None = None
    heartbeat: float = 0.0


def worker_status(run_dir: Path) -> WorkerStatus:
    """The last status the worker wrote; the defaults when there is none (yet), or when it
    cannot be read or a field has the wrong type."""
    try:
        return WorkerStatus.model_validate_json((run_dir / STATUS_FILE).read_bytes())
    except (OSError, ValidationError):
        return WorkerStatus()


def read_status(run_dir: Path) -> dict[str, Any]:
    """The last status the worker wrote, as a dict; empty when there is none (yet) or it
    cannot be read."""
    if not (run_dir / STATUS_FILE).exists():
        return {}
    return worker_status(run_dir).model_dump(exclude_unset=True)
