"""The training run's progress: the Trainer's events turned into `status.json` (steps, losses,
speed, time left), and the run stopped when the user asks."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from transformers import (
    TrainerCallback,
)

from core.training import run_folder


def rank() -> int:
    """This process's place in a distributed run (torchrun sets RANK); 0 when alone."""
    return int(os.environ.get("RANK", "0"))


def world() -> int:
    """How many processes train together (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def log(message: str) -> None:
    """A line of the run's log (the worker's output goes to `train.log`); in a distributed run,
    the first process speaks for all."""
    if rank() == 0:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def everyone_agrees(asked: bool) -> bool:
    """In a distributed run, whether any process was asked (every process must stop at the same
    step, or the others would wait for it forever); alone, `asked` itself."""
    if world() == 1:
        return asked
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if asked else 0.0])
    if dist.get_backend() == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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
        if everyone_agrees((self.run_dir / run_folder.CANCEL_FILE).exists()):
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
        if getattr(state, "is_world_process_zero", True) and folder.is_dir():
            (folder / run_folder.COMPLETE_MARKER).write_text(str(time.time()))
            self.status.update(checkpoint_step=state.global_step)
