"""Helpers for the training tests: small datasets and waiting on a worker."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from core.settings import Settings
from core.training import jobs, worker
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset

EXAMPLE_PERSONA = Path(__file__).resolve().parents[2] / "assets" / "examples" / "persona.jsonl"
WORDS = ["Paris", "France", "capital", "quick", "brown", "fox", "lazy", "dog", "LoRA"]


def alpaca_rows(count: int, answer: str | None = None) -> bytes:
    """`count` alpaca rows in words the tiny tokenizer knows, each one a little different."""
    rows = []
    for i in range(count):
        word = WORDS[i % len(WORDS)]
        rows.append(
            {
                "instruction": f"What is the capital of France? ({word} {i})",
                "input": "",
                "output": answer or f"The capital of France is Paris. {word}",
            }
        )
    return "\n".join(json.dumps(r) for r in rows).encode()


def hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of every file in `folder`: an adapter byte for byte."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def wait_for(run_dir: Path, condition, timeout: float = 120) -> jobs.RunStatus:
    """Poll the run until `condition(status)` holds; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.read(run_dir)
        if condition(status):
            return status
        time.sleep(0.1)
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""
    raise AssertionError(f"timed out; last status {jobs.read(run_dir)}\n{log[-3000:]}")


def finished(status: jobs.RunStatus) -> bool:
    return not status.active


QUICK = TrainConfig(batch_size=4, epochs=2, max_length=64, learning_rate=5e-3)
# Long enough to be caught mid-run: with 200 rows, about 760 steps of the tiny model.
LONG = TrainConfig(batch_size=2, epochs=8, eval_fraction=0.05, max_length=64)
# Killed after a checkpoint, then resumed to its end: with 60 rows, 116 steps in one process
# (a checkpoint every 15), 60 in each of two (a checkpoint every 8).
RESUMABLE = TrainConfig(batch_size=2, epochs=4, eval_fraction=0.05, max_length=64)


def trained(settings: Settings, name: str, system_prompt: str = "") -> str:
    """An adapter trained in this process (quick with the tiny model); its run id."""
    data = parse_dataset("facts.jsonl", alpaca_rows(40))
    run_dir = jobs.create(settings, data, QUICK, name=name, system_prompt=system_prompt)
    assert worker.run(run_dir) == "completed"
    return run_dir.name


def copy_run(run_dir: Path, data_dir: Path) -> str:
    """A finished run copied into another studio's data folder (as a restored backup would be);
    its run id there."""
    runs = jobs.runs_dir(Settings(_env_file=None, data_dir=data_dir))
    shutil.copytree(run_dir, runs / run_dir.name)
    return run_dir.name
