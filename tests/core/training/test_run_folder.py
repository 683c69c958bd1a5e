"""A run's folder: its spec and status read back type-checked, its examples, and only the
checkpoints whose save finished."""

import json

import pytest

from core import files
from core.errors import InvalidInputError
from core.training import jobs, run_folder
from core.training.datasets import parse_dataset
from tests.support.training import QUICK, alpaca_rows


def test_the_spec_and_examples_come_back_as_written(settings) -> None:
    data = parse_dataset("facts.jsonl", alpaca_rows(12))
    run_dir = jobs.create(settings, data, QUICK, name="Facts")
    spec = run_folder.RunSpec.load(run_dir)
    assert spec.name == "Facts" and spec.config == QUICK
    assert run_folder.read_dataset(run_dir) == data.examples


def test_a_spec_with_a_wrong_type_is_refused_plainly(settings) -> None:
    run_dir = jobs.create(settings, parse_dataset("f.jsonl", alpaca_rows(12)), QUICK)
    spec = json.loads((run_dir / run_folder.CONFIG_FILE).read_text())
    spec["config"]["rank"] = "sixteen"
    files.atomic_write_json(run_dir / run_folder.CONFIG_FILE, spec)
    with pytest.raises(InvalidInputError, match=r"'config\.rank'"):
        run_folder.RunSpec.load(run_dir)
    assert jobs.read(run_dir).name == run_dir.name  # the page still lists it


def test_a_status_with_wrong_types_reads_as_no_status(tmp_path) -> None:
    assert run_folder.worker_status(tmp_path).state == "starting"
    files.atomic_write_json(tmp_path / run_folder.STATUS_FILE, {"state": "training", "step": "x"})
    assert run_folder.worker_status(tmp_path) == run_folder.WorkerStatus()
    files.atomic_write_json(
        tmp_path / run_folder.STATUS_FILE, {"state": "training", "step": 3, "checkpoint_step": 2}
    )
    assert run_folder.read_status(tmp_path) == {
        "state": "training",
        "step": 3,
        "checkpoint_step": 2,
    }


def test_only_checkpoints_whose_save_finished_count(tmp_path) -> None:
    folder = tmp_path / run_folder.CHECKPOINTS_DIR
    for step, done in ((10, True), (2, True), (30, False)):
        checkpoint = folder / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if done:
            (checkpoint / run_folder.COMPLETE_MARKER).touch()
    assert [p.name for p in run_folder.complete_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-10",
    ]
