"""Training jobs: start the worker process, watch it, cancel or resume it; one run at a time.

Everything is read back from the run folders (core.training.run_folder), so a restarted app finds a
running job again, and a worker that died (killed, machine restarted) is seen as interrupted: its
process is gone or its heartbeat stopped."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock
from pydantic import TypeAdapter, ValidationError

from core import files
from core.errors import InvalidInputError, StudioError
from core.model.loading import load_tokenizer, prepare_model, resolve_device, resolve_dtype
from core.processes import process_alive
from core.settings import Settings, check_writable
from core.training import run_folder
from core.training.config import TrainConfig, preflight, prepare_examples
from core.training.datasets import Dataset

ACTIVE_STATES = ("starting", "loading", "training", "cancelling", "saving")
STALE_AFTER_S = 60.0  # five missed heartbeats
_ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m core.…` runs from it
_children: dict[int, subprocess.Popen] = {}  # workers this process started, reaped when seen


class JobBusyError(InvalidInputError):
    """A training run is already in progress."""


class RunStatus(run_folder.RunProgress):
    """One run as the page shows it, read from its folder."""

    run_id: str
    folder: Path
    name: str
    state: str
    message: str = ""
    can_resume: bool = False

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def fraction(self) -> float:
        if self.state == "completed":
            return 1.0
        return min(self.step / self.total_steps, 1.0) if self.total_steps else 0.0

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started


def runs_dir(settings: Settings) -> Path:
    return settings.data_dir / "runs"


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the worker still runs; another machine's worker only its heartbeat can tell."""
    for child in _children.values():
        child.poll()  # reap workers this process started that have ended
    return bool(pid) and process_alive(f"{host or os.uname().nodename}:{pid}")


_SPEEDS = TypeAdapter(dict[str, float])  # speed.json: tokens per second per model and device


def read(run_dir: Path) -> RunStatus:
    """The run's status; a run whose worker is gone or silent is reported as interrupted."""
    data = run_folder.worker_status(run_dir)
    try:
        name = run_folder.RunSpec.load(run_dir).name
    except (OSError, ValueError, StudioError):  # none, or not a run's (an imported adapter)
        name = run_dir.name
    state, message = data.state, data.message
    if state in ACTIVE_STATES:
        silent = time.time() - data.heartbeat > STALE_AFTER_S
        if not _alive(data.pid, data.host) or silent:
            state = "interrupted"
            message = "Interrupted: the training process stopped before the end."
    interrupted = state in ("interrupted", "failed")
    return RunStatus(
        run_id=run_dir.name,
        folder=run_dir,
        name=name,
        state=state,
        message=message,
        **data.model_dump(include=set(run_folder.RunProgress.model_fields)),
        can_resume=interrupted and bool(run_folder.complete_checkpoints(run_dir)),
    )


def all_runs(settings: Settings) -> list[RunStatus]:
    """Every run, newest first."""
    folder = runs_dir(settings)
    if not folder.is_dir():
        return []
    found = [read(p) for p in folder.iterdir() if (p / run_folder.CONFIG_FILE).exists()]
    return sorted(found, key=lambda r: r.run_id, reverse=True)


def active_run(settings: Settings) -> RunStatus | None:
    return next((r for r in all_runs(settings) if r.active), None)


def latest_run(settings: Settings) -> RunStatus | None:
    found = all_runs(settings)
    return found[0] if found else None


def create(
    settings: Settings,
    dataset: Dataset,
    config: TrainConfig,
    *,
    name: str = "",
    preset: str = "custom",
    system_prompt: str = "",
) -> Path:
    """Check the data and write a new run folder, without starting it. Bad data is refused
    here, before anything is written."""
    check_writable(settings, "Training")
    config.validate()
    if not dataset.valid:
        raise InvalidInputError("The dataset has problems: fix them before training.")
    model_path = prepare_model(settings.base_model, settings)
    examples = prepare_examples(
        dataset.examples, load_tokenizer(settings), config.max_length, system_prompt
    )
    blockers = preflight(examples, config).blockers
    if blockers:
        raise InvalidInputError(blockers[0])
    device, dtype = _device_and_dtype(settings)
    run_id = new_run_id()
    run_dir = runs_dir(settings) / run_id
    run_dir.mkdir(parents=True)
    run_folder.RunSpec(
        run_id=run_id,
        name=" ".join(name.split())[:80] or f"{Path(dataset.name).stem} ({preset})",
        base_model=settings.base_model,
        model_path=str(model_path),
        device=device,
        dtype=dtype,
        trust_remote_code=settings.trust_remote_code,
        system_prompt=system_prompt,
        dataset_name=dataset.name,
        dataset_hash=dataset.content_hash,
        dataset_shape=dataset.shape,
        preset=preset,
        config=config,
        processes=training_processes(settings, device),
    ).save(run_dir)
    run_folder.write_dataset(run_dir, dataset)
    return run_dir


def training_processes(settings: Settings, device: str) -> int:
    """How many processes train a run together: the setting, or with 0 one per GPU when there
    are several (and one otherwise)."""
    if settings.train_processes:
        return settings.train_processes
    if device == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    return 1


def new_run_id() -> str:
    """A run folder's name: sortable by time, unique by its random tail."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def start(settings: Settings, dataset: Dataset, config: TrainConfig, **options: str) -> RunStatus:
    """Write a new run (`options` as for `create`) and start its worker. Refused while another
    run is in progress."""
    check_writable(settings, "Training")
    folder = runs_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".start.lock")):
        _refuse_if_busy(settings, "starting")
        run_dir = create(settings, dataset, config, **options)
        _spawn(run_dir)
    return read(run_dir)


def _refuse_if_busy(settings: Settings, doing: str) -> None:
    busy = active_run(settings)
    if busy is not None:
        raise JobBusyError(
            f"A training run is already in progress ('{busy.name}'). Wait for it to finish, or "
            f"cancel it, before {doing} another."
        )


def resume(settings: Settings, run_id: str) -> RunStatus:
    """Carry on an interrupted run from its last complete checkpoint."""
    check_writable(settings, "Training")
    run_dir = run_path(settings, run_id)
    with FileLock(str(runs_dir(settings) / ".start.lock")):
        _refuse_if_busy(settings, "resuming")
        if not read(run_dir).can_resume:
            raise InvalidInputError(
                "This run has no complete checkpoint to resume from: start it again instead."
            )
        (run_dir / run_folder.CANCEL_FILE).unlink(missing_ok=True)
        _spawn(run_dir, "--resume")
    return read(run_dir)


def _spawn(run_dir: Path, *flags: str) -> None:
    status = run_folder.read_status(run_dir)
    files.atomic_write_json(
        run_dir / run_folder.STATUS_FILE,
        {
            **status,
            "run_id": run_dir.name,
            "state": "starting",
            "message": "Starting",
            "heartbeat": time.time(),
            "started": status.get("started") or time.time(),
            "host": os.uname().nodename,
        },
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = ["-m", "core.training.worker", str(run_dir), *flags]
    processes = run_folder.RunSpec.load(run_dir).processes
    if processes > 1:  # data parallel under PyTorch's own launcher, one process per device
        worker = [
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            *worker,
        ]
    with (run_dir / run_folder.LOG_FILE).open("a") as log:
        process = subprocess.Popen(
            [sys.executable, *worker],
            cwd=_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a restart of the app does not take the run down with it
        )
    _children[process.pid] = process
    status = run_folder.read_status(run_dir)
    # The worker writes its own pid when it starts; until then the watcher needs this one.
    if status.get("state") == "starting":
        status["pid"] = process.pid
        files.atomic_write_json(run_dir / run_folder.STATUS_FILE, status)


def cancel(settings: Settings, run_id: str) -> None:
    """Ask the worker to stop after its current step; no adapter is kept."""
    check_writable(settings, "Cancelling training")
    run_dir = run_path(settings, run_id)
    (run_dir / run_folder.CANCEL_FILE).write_text(str(time.time()))


def delete_run(settings: Settings, run_id: str) -> None:
    """Delete a run with everything in it, its adapter included."""
    check_writable(settings, "Deleting")
    run_dir = run_path(settings, run_id)
    if read(run_dir).active:
        raise InvalidInputError("This run is still training: cancel it first.")
    shutil.rmtree(run_dir)


def _device_and_dtype(settings: Settings) -> tuple[str, str]:
    device = resolve_device(settings.device)
    return device, str(resolve_dtype(settings.dtype, device)).removeprefix("torch.")


def run_path(settings: Settings, run_id: str) -> Path:
    """The folder of an existing run; anything else (including a path in disguise) refused."""
    folder = runs_dir(settings) / run_id
    if "/" in run_id or run_id.startswith(".") or not (folder / run_folder.CONFIG_FILE).exists():
        raise InvalidInputError(f"There is no training run '{run_id}'.")
    return folder


def measure_speed(settings: Settings, timeout_s: float = 180) -> float:
    """Training tokens per second on this machine, measured once per model, device and number
    format by a short probe in a separate process, and remembered in the data folder."""
    model_path = prepare_model(settings.base_model, settings)
    device, dtype = _device_and_dtype(settings)
    cache = runs_dir(settings) / "speed.json"
    key = f"{settings.base_model}|{device}|{dtype}"
    known: dict[str, float] = {}
    if cache.exists():
        try:
            known = _SPEEDS.validate_json(cache.read_bytes())
        except ValidationError:
            known = {}
    if key in known:
        return float(known[key])
    trust = "1" if settings.trust_remote_code else "0"
    command = [
        sys.executable,
        "-m",
        "core.training.worker",
        "--probe",
        str(model_path),
        dtype,
        device,
    ]
    try:
        finished = subprocess.run(
            [*command, trust],
            cwd=_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        speed = float(json.loads(finished.stdout.strip().splitlines()[-1])["tokens_per_s"])
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError) as error:
        raise InvalidInputError(
            "Could not measure the training speed of this machine, so there is no estimate of "
            "the duration. Training itself may still work."
        ) from error
    cache.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(cache, {**known, key: speed})
    return speed
