"""Training beyond one device: the worker under torchrun, two processes on CPU (gloo), the HF
Trainer's own data parallelism. Progress, cancel and the one adapter at the end work the same."""

from __future__ import annotations

import os
import signal

from safetensors.torch import load_file

from core.model.chat import SamplingParams
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.training import adapters, jobs, run_folder
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.support.training import LONG, RESUMABLE, alpaca_rows, finished, wait_for

SMALL = TrainConfig(batch_size=4, epochs=3, eval_fraction=0.1, max_length=64, learning_rate=5e-3)


def test_two_processes_train_one_adapter_that_loads_and_answers(settings, stop_runs) -> None:
    two = settings.model_copy(update={"train_processes": 2})
    alone = jobs.start(settings, parse_dataset("facts.jsonl", alpaca_rows(40)), SMALL, name="One")
    wait_for(alone.folder, finished, timeout=180)
    run = jobs.start(two, parse_dataset("facts.jsonl", alpaca_rows(40)), SMALL, name="Two")
    assert run_folder.RunSpec.load(run.folder).processes == 2
    status = wait_for(run.folder, finished, timeout=300)
    assert status.state == "completed", (run.folder / run_folder.LOG_FILE).read_text()[-3000:]
    # Two processes split each epoch: 36 training rows, 18 each, batches of 4, three epochs
    # (one process alone makes 27 steps of the same batches).
    assert status.step == status.total_steps == 3 * 5
    assert jobs.read(alone.folder).total_steps == 27
    losses = [loss for _, loss in status.train_loss]
    assert losses[-1] < losses[0]  # it learned
    assert status.eval_loss and status.eval_loss[-1][1] < status.eval_loss[0][1]
    folder = run.folder / run_folder.ADAPTER_DIR
    shapes = {k: v.shape for k, v in load_file(folder / "adapter_model.safetensors").items()}
    expected = load_file(alone.folder / run_folder.ADAPTER_DIR / "adapter_model.safetensors")
    assert shapes == {k: v.shape for k, v in expected.items()}  # the same adapter, in shape
    chat = HFChatModel(load_chat_model(settings))
    adapters.attach(chat, settings, run.run_id)
    answer = chat.stream_chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_new_tokens=8),
        adapter=run.run_id,
    ).read()
    assert answer.timings.new_tokens > 0


def test_cancel_stops_every_process_of_a_distributed_run(settings, stop_runs) -> None:
    two = settings.model_copy(update={"train_processes": 2})
    run = jobs.start(two, parse_dataset("facts.jsonl", alpaca_rows(200)), LONG, name="Long")
    wait_for(run.folder, lambda s: s.step > 3, timeout=180)
    jobs.cancel(two, run.run_id)
    status = wait_for(run.folder, finished, timeout=60)
    assert status.state == "cancelled" and status.step < status.total_steps
    assert not (run.folder / run_folder.ADAPTER_DIR).exists()


def test_a_killed_distributed_run_resumes_from_its_checkpoint_with_every_process(
    settings, stop_runs
) -> None:
    two = settings.model_copy(update={"train_processes": 2})
    data = parse_dataset("facts.jsonl", alpaca_rows(60))
    run = jobs.start(two, data, RESUMABLE, name="Killed")
    wait_for(run.folder, lambda s: run_folder.read_status(s.folder).get("checkpoint_step"), 240)
    # A crash of the machine: the launcher and both processes gone at once, mid-run.
    os.killpg(os.getpgid(run_folder.read_status(run.folder)["pid"]), signal.SIGKILL)
    status = wait_for(run.folder, lambda s: s.state == "interrupted", timeout=30)
    assert status.can_resume, status
    killed_at = status.step

    resumed = jobs.resume(two, run.run_id)
    assert resumed.active
    status = wait_for(run.folder, finished, timeout=300)
    assert status.state == "completed", (run.folder / run_folder.LOG_FILE).read_text()[-3000:]
    steps = [step for step, _ in status.train_loss]
    assert steps == sorted(set(steps)) and steps[-1] == status.total_steps  # no step twice
    assert status.step == status.total_steps > killed_at > 0
    assert (run.folder / run_folder.LOG_FILE).read_text().count("resuming from") == 1
    assert adapters.get(settings, run.run_id).final_eval_loss is not None
