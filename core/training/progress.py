"""The training run's progress: the Trainer's events turned into `status.json` (steps, losses,
speed, time left), and the run stopped when the user asks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import (
    TrainerCallback,
)

from core.training import run_folder


def log(message: str) -> None:
    """A line of the run's log (the worker's output goes to `train.log`)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Progress(TrainerCallback):
    """Turns the Trainer's events into `status.json`, and stops the run when asked to."""

    def __init__(self, run_dir: Path, status: run_folder.StatusWriter, steps: int) -> None:
        self.run_dir = run_dir
        self.status = status
        self.steps = steps
        self.cancelled = False
        self.tokens = 0
        self.train_loss: list[list[float]] = list(status.data.get("train_loss") or [])
        self.eval_loss: list[list[float]] = list(status.data.get("eval_loss") or [])
        self.tokens_before = int(status.data.get("tokens") or 0)
        self.started = time.time()
        self.tokens_at_start = 0
        self.first_step: int | None = None

    def trim_history(self, step: int) -> None:
        """On resume: forget what happened after the checkpoint; it is done again."""
        self.train_loss = [p for p in self.train_loss if p[0] <= step]
        self.eval_loss = [p for p in self.eval_loss if p[0] <= step]
        self.status.update(train_loss=self.train_loss, eval_loss=self.eval_loss)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.time()
        if self.first_step is None:  # the first step warms up: speed is timed from its end
            self.first_step, self.started, self.tokens_at_start = (
                state.global_step,
                now,
                self.tokens,
            )
        done = state.global_step - self.first_step
        elapsed = now - self.started
        self.status.update(
            step=state.global_step,
            epoch=round(float(state.epoch or 0), 3),
            tokens=self.tokens_before + self.tokens,
            tokens_per_s=(self.tokens - self.tokens_at_start) / elapsed if done else None,
            eta_s=(self.steps - state.global_step) * elapsed / done if done else None,
        )
        if (self.run_dir / run_folder.CANCEL_FILE).exists():
            self.cancelled = True
            control.should_training_stop = True
            control.should_save = False
            self.status.update(state="cancelling", message="Cancelling")

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.train_loss.append([state.global_step, round(float(logs["loss"]), 4)])
            self.status.update(train_loss=self.train_loss)
        if "eval_loss" in logs:
            self.eval_loss.append([state.global_step, round(float(logs["eval_loss"]), 4)])
            self.status.update(eval_loss=self.eval_loss)
            log(f"step {state.global_step}: held-out loss {logs['eval_loss']:.4f}")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / run_folder.COMPLETE_MARKER).write_text(str(time.time()))
            self.status.update(checkpoint_step=state.global_step)
