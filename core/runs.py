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
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.datasets import Dataset, Message
from core.train import TrainConfig

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

    def save(self, run_dir: Path) -> None:
        atomic_write_json(run_dir / CONFIG_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        data = json.loads((run_dir / CONFIG_FILE).read_text())
        data["config"] = TrainConfig(**data["config"])
        return cls(**data)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with partial.open("w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def write_dataset(run_dir: Path, dataset: Dataset) -> None:
    with (run_dir / DATASET_FILE).open("w") as handle:
        for messages in dataset.examples:
            handle.write(json.dumps({"messages": messages}) + "\n")


def read_dataset(run_dir: Path) -> list[list[Message]]:
    lines = (run_dir / DATASET_FILE).read_text().splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose save finished (a kill during a save leaves one without the marker)."""
    folder = run_dir / CHECKPOINTS_DIR
    found = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[-1]))


class StatusWriter:
    """Owns `status.json` in the worker: every change replaces the file atomically, and a
    heartbeat refreshes it so that a watcher can tell a slow step from a dead worker."""

    HEARTBEAT_S = 5.0

    def __init__(self, run_dir: Path, initial: dict[str, Any]) -> None:
        self.path = run_dir / STATUS_FILE
        self._lock = threading.Lock()
        self.data = initial
        self._stop = threading.Event()
        self.update()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self._thread.start()

    def update(self, **values: Any) -> None:
        with self._lock:
            self.data.update(values, heartbeat=time.time())
            atomic_write_json(self.path, self.data)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            self.update()

    def close(self) -> None:
        self._stop.set()


def read_status(run_dir: Path) -> dict[str, Any]:
    """The last status the worker wrote; empty when there is none (yet) or it cannot be read."""
    try:
        return dict(json.loads((run_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError):
        return {}
