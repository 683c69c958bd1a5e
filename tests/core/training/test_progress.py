"""The Trainer's events as `status.json`: steps, speed, time left, losses, checkpoints, and
stopping when the user cancels."""

from types import SimpleNamespace

from transformers import TrainerControl

from core.training import run_folder
from core.training.progress import Progress


def progress_in(tmp_path, steps: int = 10, before: dict | None = None):  # type: ignore[no-untyped-def]
    status = run_folder.StatusWriter(tmp_path, dict(before or {}))
    return Progress(tmp_path, status, steps), status


def test_steps_speed_and_time_left_are_written(tmp_path) -> None:
    progress, status = progress_in(tmp_path)
    try:
        control = TrainerControl()
        progress.on_step_end(None, SimpleNamespace(global_step=1, epoch=0.1), control)
        assert run_folder.read_status(tmp_path)["tokens_per_s"] is None  # the warm-up step
        progress.tokens = 400
        progress.on_step_end(None, SimpleNamespace(global_step=3, epoch=0.3), control)
        written = run_folder.worker_status(tmp_path)
        assert written.step == 3 and written.epoch == 0.3
        assert written.tokens_per_s and written.tokens_per_s > 0
        assert written.eta_s is not None and written.eta_s >= 0
        assert not control.should_training_stop
    finally:
        status.close()


def test_losses_are_kept_and_a_resume_forgets_what_follows_the_checkpoint(tmp_path) -> None:
    before = {"train_loss": [[1, 2.0], [2, 1.8], [3, 1.7]], "eval_loss": [[0, 2.5], [3, 1.9]]}
    progress, status = progress_in(tmp_path, before=before)
    try:
        progress.trim_history(2)
        assert progress.train_loss == [[1, 2.0], [2, 1.8]] and progress.eval_loss == [[0, 2.5]]
        state = SimpleNamespace(global_step=3, epoch=0.3)
        progress.on_log(None, state, TrainerControl(), logs={"loss": 1.234567})
        progress.on_log(None, state, TrainerControl(), logs={"eval_loss": 1.5})
        written = run_folder.worker_status(tmp_path)
        assert written.train_loss[-1] == [3, 1.2346] and written.eval_loss[-1] == [3, 1.5]
    finally:
        status.close()


def test_cancel_stops_training_without_a_save_and_checkpoints_are_marked(tmp_path) -> None:
    progress, status = progress_in(tmp_path)
    try:
        (tmp_path / run_folder.CANCEL_FILE).touch()
        control = TrainerControl()
        progress.on_step_end(None, SimpleNamespace(global_step=1, epoch=0.1), control)
        assert progress.cancelled and control.should_training_stop and not control.should_save
        assert run_folder.worker_status(tmp_path).state == "cancelling"
        checkpoint = tmp_path / "checkpoint-1"
        checkpoint.mkdir()
        progress.on_save(
            SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=1), control
        )
        assert (checkpoint / run_folder.COMPLETE_MARKER).exists()
        assert run_folder.read_status(tmp_path)["checkpoint_step"] == 1
    finally:
        status.close()
