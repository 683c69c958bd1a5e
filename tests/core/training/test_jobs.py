"""Training runs in a worker process: progress, cancel, kill and resume, one run at a time."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core import files
from core.errors import InvalidInputError
from core.training import adapters, jobs, run_folder, worker
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.support.training import (
    LONG,
    RESUMABLE,
    alpaca_rows,
    finished,
    hashes,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[3]
SMALL = TrainConfig(batch_size=4, epochs=2, eval_fraction=0.1, max_length=64)


def dataset(rows: int = 40):
    return parse_dataset("facts.jsonl", alpaca_rows(rows))


class Died(BaseException):
    """Stands for a SIGKILL: not an Exception, so nothing in the worker catches it."""


def test_a_run_trains_logs_its_loss_and_writes_the_adapter(settings, stop_runs) -> None:
    started = jobs.start(settings, dataset(), SMALL, name="Facts", preset="quick")
    assert started.state in jobs.ACTIVE_STATES
    status = wait_for(started.folder, finished)
    assert status.state == "completed", status
    assert len(status.train_loss) == status.total_steps == 18  # 36 rows / 4, two epochs
    assert status.eval_loss[0][0] == 0 and status.eval_loss[-1][0] == status.total_steps
    assert status.tokens_per_s and status.tokens_per_s > 0

    info = run_folder.read_status(started.folder)
    assert info["pid"] != os.getpid()  # trained in its own process
    folder = started.folder / run_folder.ADAPTER_DIR
    assert {p.name for p in folder.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "studio.json",
    }
    # PEFT starts every lora_B at zero: training must have moved them.
    weights = load_file(folder / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)
    meta = json.loads((folder / "studio.json").read_text())
    assert meta["name"] == "Facts" and meta["base_model"] == settings.base_model
    assert meta["dataset_hash"] == dataset().content_hash
    assert meta["settings"]["batch_size"] == 4
    assert meta["final_eval_loss"] == status.eval_loss[-1][1]
    assert not (started.folder / run_folder.CHECKPOINTS_DIR).exists()  # not needed once finished
    assert [a.name for a in adapters.list_adapters(settings)] == ["Facts"]


def test_a_second_run_is_refused_and_cancel_stops_the_first(settings, stop_runs) -> None:
    first = jobs.start(settings, dataset(200), LONG, name="Long")
    wait_for(first.folder, lambda s: s.step > 5)
    with pytest.raises(jobs.JobBusyError, match="already in progress \\('Long'\\)"):
        jobs.start(settings, dataset(), SMALL)
    assert len(jobs.all_runs(settings)) == 1

    jobs.cancel(settings, first.run_id)
    status = wait_for(first.folder, finished, timeout=30)
    assert status.state == "cancelled" and status.step < status.total_steps
    assert not (first.folder / run_folder.ADAPTER_DIR).exists()
    assert adapters.list_adapters(settings) == []


def test_a_killed_worker_is_interrupted_and_resumes_from_its_checkpoint(
    settings, stop_runs
) -> None:
    run = jobs.start(settings, dataset(60), RESUMABLE, name="Killed")
    wait_for(run.folder, lambda s: run_folder.read_status(s.folder).get("checkpoint_step"))
    os.kill(run_folder.read_status(run.folder)["pid"], signal.SIGKILL)
    status = wait_for(run.folder, lambda s: s.state == "interrupted", timeout=10)
    assert status.can_resume and "Interrupted" in status.message
    killed_at = status.step

    resumed = jobs.resume(settings, run.run_id)
    assert resumed.active
    status = wait_for(run.folder, finished, timeout=180)
    assert status.state == "completed", status
    steps = [step for step, _ in status.train_loss]
    assert steps == sorted(set(steps)) and steps[-1] == status.total_steps  # no step twice
    assert status.step == status.total_steps > killed_at > 0
    assert adapters.get(settings, run.run_id).final_eval_loss is not None


def test_a_silent_worker_is_interrupted_even_if_its_pid_lives(settings) -> None:
    run_dir = jobs.create(settings, dataset(), SMALL)
    stale = time.time() - jobs.STALE_AFTER_S - 1
    files.atomic_write_json(
        run_dir / run_folder.STATUS_FILE,
        {"state": "training", "pid": os.getpid(), "host": os.uname().nodename, "heartbeat": stale},
    )
    assert jobs.read(run_dir).state == "interrupted"
    files.atomic_write_json(
        run_dir / run_folder.STATUS_FILE,
        {"state": "training", "pid": os.getpid(), "heartbeat": time.time()},
    )
    assert jobs.read(run_dir).state == "training"


def test_a_restarted_app_finds_the_running_job(settings, stop_runs) -> None:
    run = jobs.start(settings, dataset(200), LONG, name="Found again")
    wait_for(run.folder, lambda s: s.step > 0)
    # A new server process knows nothing but the data folder.
    code = (
        "from core.training import jobs; from core.settings import Settings; "
        f"run = jobs.active_run(Settings(_env_file=None, data_dir={str(settings.data_dir)!r})); "
        "print(run.name, run.state, run.step)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert output[:3] == ["Found", "again", "training"] and int(output[3]) > 0
    jobs.cancel(settings, run.run_id)
    wait_for(run.folder, finished, timeout=30)


def test_a_kill_during_a_save_never_damages_an_earlier_adapter(
    settings, monkeypatch, stop_runs
) -> None:
    first = jobs.start(settings, dataset(), SMALL, name="Earlier")
    wait_for(first.folder, finished)
    before = hashes(first.folder / run_folder.ADAPTER_DIR)

    from peft import PeftModel

    save = PeftModel.save_pretrained

    def die_after_the_weights(self, folder, *args, **kwargs):
        save(self, folder, *args, **kwargs)
        if Path(folder).name == "adapter.partial":  # the final save, not a checkpoint
            raise Died  # the process dies here: nothing after this line runs

    monkeypatch.setattr(PeftModel, "save_pretrained", die_after_the_weights)
    second = jobs.create(settings, dataset(), SMALL, name="Cut short")
    with pytest.raises(Died):
        worker.run(second)
    assert (second / "adapter.partial" / "adapter_model.safetensors").exists()
    assert not (second / run_folder.ADAPTER_DIR).exists()
    assert hashes(first.folder / run_folder.ADAPTER_DIR) == before
    assert [a.name for a in adapters.list_adapters(settings)] == ["Earlier"]


@pytest.mark.parametrize(
    "error",
    [
        lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate"),
        lambda: MemoryError(),
        lambda: RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"),
    ],
)
def test_out_of_memory_fails_the_run_with_a_hint(settings, monkeypatch, error) -> None:
    def out_of_memory(self, *args, **kwargs):
        raise error()

    monkeypatch.setattr(worker.AnswerOnlyTrainer, "train", out_of_memory)
    run_dir = jobs.create(settings, dataset(), SMALL)
    assert worker.run(run_dir) == "failed"
    status = jobs.read(run_dir)
    assert status.state == "failed"
    assert "smaller batch size" in status.message and "maximum length" in status.message


def _too_long():
    return parse_dataset("long.jsonl", alpaca_rows(40, answer="Paris " * 200))


@pytest.mark.parametrize(
    ("make", "config", "message"),
    [
        (
            lambda: parse_dataset("d.jsonl", alpaca_rows(30) + b'\n{"instruction": "x", '),
            SMALL,
            "Line 31: not valid JSON",
        ),
        (
            lambda: parse_dataset("d.jsonl", b'{"instruction": "' + b"a" * 200_000_000 + b'"}'),
            SMALL,
            "Line 1: the line is 200 MB long",
        ),
        (lambda: parse_dataset("d.csv", b"q,a\nhi,there\n"), SMALL, "columns: 'q', 'a'"),
        (lambda: parse_dataset("d.jsonl", "é".encode("latin-1") * 10), SMALL, "not UTF-8"),
        (lambda: parse_dataset("d.jsonl", b""), SMALL, "The file is empty"),
        (lambda: dataset(3), TrainConfig(batch_size=8), "fewer than one batch"),
        (_too_long, TrainConfig(max_length=32), "Every example is longer than the maximum"),
    ],
    ids=["bad-json", "200-mb-line", "csv-columns", "not-utf8", "empty", "few-rows", "too-long"],
)
def test_bad_data_is_refused_with_a_message_and_no_run_starts(
    settings, make, config, message
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        data = make()
        if data.problems:
            raise InvalidInputError(str(data.problems[0]))
        jobs.start(settings, data, config)
    assert message in str(raised.value)
    assert jobs.all_runs(settings) == []


def test_the_speed_probe_is_measured_once(settings, monkeypatch) -> None:
    speed = jobs.measure_speed(settings)
    assert speed > 0

    def no_second_probe(*args, **kwargs):
        raise AssertionError("measured twice")

    monkeypatch.setattr(jobs.subprocess, "run", no_second_probe)
    assert jobs.measure_speed(settings) == speed


def test_the_worker_yields_the_cores_to_the_studio(settings, stop_runs) -> None:
    """Answers come first: the worker runs at the lowest priority, its session group too (on
    Linux a new session is weighed as a group, whatever the niceness of its processes)."""
    run = jobs.start(settings, dataset(200), LONG, name="Background")
    wait_for(run.folder, lambda s: s.state == "training")
    pid = run_folder.read_status(run.folder)["pid"]
    assert os.getpriority(os.PRIO_PROCESS, pid) == worker.NICENESS
    group = Path(f"/proc/{pid}/autogroup")
    if group.exists():
        assert group.read_text().split()[-1] == str(worker.NICENESS)
    jobs.cancel(settings, run.run_id)
    wait_for(run.folder, finished, timeout=30)
