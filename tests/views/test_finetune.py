"""The Fine-tune page through app.py, with the tiny model."""

import json
import os
import signal

import pytest

from core.settings import load_settings
from core.training import jobs, run_folder
from core.training.config import TrainConfig
from core.training.datasets import parse_dataset
from tests.support.training import alpaca_rows, finished, wait_for
from tests.views.conftest import texts

PAGE = "views/finetune.py"


@pytest.fixture
def page(open_page):
    at = open_page(PAGE)
    assert not at.exception
    yield at
    for run in jobs.all_runs(load_settings()):
        pid = run_folder.read_status(run.folder).get("pid")
        if run.active and pid and pid != os.getpid():
            os.kill(pid, signal.SIGKILL)


def upload(at, name: str, data: bytes):
    at.file_uploader[0].set_value([(name, data, "application/octet-stream")]).run()
    assert not at.exception
    return at


def test_empty_page_explains_the_data_and_offers_an_example(page) -> None:
    assert "Try with an example" in texts(page.info)
    assert "Your adapters (0)" in texts(page.subheader)
    page.button(key="ft_example").click().run()
    assert not page.exception
    assert "106 examples, recognised as instruction / input / output" in texts(page.success)
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Examples"] == "106"
    preview = page.code[0].value
    assert "<|im_start|>assistant" in preview and "Captain Lumen" in preview
    presets = page.radio(key="ft_preset")
    assert presets.value == "balanced" and presets.format_func("quick") == "Quick try"
    # the estimate is in the caption: a label that changed with the data would lose the choice
    assert presets.proto.captions[0].startswith("About ")
    assert not page.button(key="ft_start").disabled


def test_problems_are_listed_by_line_and_training_cannot_start(page) -> None:
    bad = alpaca_rows(3) + b'\n{"instruction": "Hi", "output": ""}\n{"oops"\n'
    upload(page, "broken.jsonl", bad)
    message = texts(page.error[:1])
    assert "Line 4: 'output' is empty" in message and "Line 5: not valid JSON" in message
    assert "Training cannot start" in message
    assert not any(b.key == "ft_start" for b in page.button)


def test_a_file_level_problem_is_one_clear_message(page) -> None:
    upload(page, "latin.csv", "instruction,output\ncafé,olé\n".encode("latin-1"))
    assert "not UTF-8" in page.error[0].value


def test_preflight_blocks_too_few_rows_and_warns_about_no_held_out_set(page) -> None:
    upload(page, "tiny.jsonl", alpaca_rows(5))
    errors, warnings = texts(page.error), texts(page.warning)
    assert "fewer than one batch" in errors
    assert "too few to change the model" in warnings
    assert page.button(key="ft_start").disabled


def test_presets_fill_the_advanced_settings(page) -> None:
    page.button(key="ft_example").click().run()
    page.radio(key="ft_preset").set_value("thorough").run()
    assert page.number_input(key="ft_epochs").value == 5
    assert page.number_input(key="ft_rank").value == 32
    page.number_input(key="ft_max_length").set_value(16).run()
    assert "Every example is longer than the maximum length (16" in texts(page.error)


def test_train_watch_try_rename_and_delete(page) -> None:
    upload(page, "facts.jsonl", alpaca_rows(40))
    page.number_input(key="ft_batch_size").set_value(4).run()
    page.text_input(key="ft_name").set_value("Facts adapter").run()
    page.button(key="ft_start").click().run()
    assert not page.exception
    run = jobs.latest_run(load_settings())
    assert run is not None and run.name == "Facts adapter"
    assert "Training" in texts(page.subheader)
    # A second start is refused while the first trains (the button is disabled, and core says no).
    if jobs.read(run.folder).active:
        assert page.button(key="ft_start").disabled

    wait_for(run.folder, finished)
    page.run()
    assert not page.exception
    assert "Finished in" in texts(page.success)
    assert "Your adapters (1)" in texts(page.subheader)
    labels = {m.label for m in page.metric}
    assert {"Training loss", "Held-out loss", "Tokens/s", "Time left"} <= labels

    page.text_input(key="ft_try_question").set_value("What is the capital of France?")
    page.button(key="FormSubmitter:ft_try_form-Ask both").click().run()
    assert not page.exception
    assert "Base model" in texts(page.markdown) and "Tuned: Facts adapter" in texts(page.markdown)
    assert len([c for c in page.caption if "tokens/s" in str(c.value)]) == 2

    page.text_input(key=f"ft_rename_to_{run.run_id}").set_value("Capitals")
    page.button(key=f"ft_rename_{run.run_id}").click().run()
    assert "**Capitals**" in texts(page.markdown)
    page.checkbox(key=f"ft_delete_sure_{run.run_id}").check().run()
    page.button(key=f"ft_delete_{run.run_id}").click().run()
    assert "Your adapters (0)" in texts(page.subheader)


def test_a_running_job_is_found_again_and_can_be_cancelled(page) -> None:
    run = jobs.start(
        load_settings(),
        parse_dataset("long.jsonl", alpaca_rows(200)),
        TrainConfig(batch_size=2, epochs=8, max_length=64),
        name="Started elsewhere",
    )
    wait_for(run.folder, lambda s: s.step > 0)
    page.run()  # a page (or a restarted server) that never started this run still shows it
    assert "Started elsewhere" in texts(page.markdown)
    assert page.get("progress")
    page.button(key="ft_example").click().run()
    assert page.button(key="ft_start").disabled
    assert "one run at a time" in texts(page.info)
    page.button(key=f"ft_cancel_{run.run_id}").click().run()
    status = wait_for(run.folder, finished, timeout=30)
    assert status.state == "cancelled"
    page.run()
    assert "Cancelled" in texts(page.info)
    assert not page.button(key="ft_start").disabled


def test_placeholders_are_offered_to_fill_before_training(page) -> None:
    rows = "\n".join(
        json.dumps({"instruction": f"Question {n}: who are you?", "output": "I am {{name}}."})
        for n in range(40)
    )
    upload(page, "identity.jsonl", rows.encode())
    assert "`{{name}}` (in 40 examples)" in texts(page.markdown)
    assert "Fill in `{{name}}` first" in texts(page.warning)
    [box] = [t for t in page.text_input if t.key.startswith("ft_fill_")]
    box.set_value("Nova").run()
    assert not page.exception
    assert "Fill in `{{name}}` first" not in texts(page.warning)
    assert "I am Nova." in page.code[0].value and "{{name}}" not in page.code[0].value
    page.button(key="ft_start").click().run()
    run_dir = jobs.all_runs(load_settings())[0].folder
    trained_on = run_folder.read_dataset(run_dir)
    assert all(example[-1]["content"] == "I am Nova." for example in trained_on)


def test_the_tuned_model_is_made_into_files_to_take_away(open_page) -> None:
    from core.training import model_export
    from tests.support.training import trained

    run_id = trained(load_settings(), "Capitals")
    page = open_page(PAGE)
    assert "Take it out of the studio" in [e.label for e in page.expander]
    assert not page.get("download_button") or len(page.get("download_button")) == 1
    page.button(key=f"ft_export_{run_id}").click().run(timeout=120)
    assert not page.exception and not page.error
    made = model_export.exported(load_settings(), run_id)
    assert made.merged_zip is not None and made.gguf_zip is not None
    labels = [b.proto.label for b in page.get("download_button")]
    assert any(label.startswith("Merged model (.zip)") for label in labels), labels
    assert any(label.startswith("GGUF + Modelfile (.zip)") for label in labels), labels
    # Made once: the next visit offers the files without the button.
    page.run()
    assert not [b for b in page.button if b.key == f"ft_export_{run_id}"]


def test_the_model_can_be_taught_to_use_a_knowledge_base(open_page, fake_search) -> None:
    from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
    from core.knowledge.store import KnowledgeStore
    from core.training.datasets import DOCUMENTS_SHAPE

    page = open_page(PAGE)
    page.session_state["ft_teach"] = "documents"
    page.run()
    assert "Create a knowledge base on the Knowledge base page first" in texts(page.info)

    kb = KnowledgeStore(load_settings(), fake_search).create("Handbook")
    handbook = "\n\n".join(
        [
            "New employees receive 27 days of paid annual leave every year.",
            "The travel allowance abroad is EUR 58 per day for every employee.",
            "Visitors sign in at reception with form HX-V1 and wear a badge.",
            "Report a stolen laptop on extension 4477 as soon as you can.",
            "A full-time working week at Northwind is 37.5 hours long.",
            "Parental leave is paid in full for 14 weeks after the birth.",
            "Purchases above EUR 1,500 need the sign-off of a director.",
            "The office opens at 7:30 and closes at 19:00 on weekdays.",
        ]
    )
    list(ingest(kb, [UploadedFile("handbook.txt", handbook.encode())], ChunkSettings(80, 0)))
    page.run()
    assert "1. Your documents" in texts(page.subheader)
    asked = (
        b'{"question": "How many days of paid leave do new employees get?", "reference": "27"}\n'
        b'{"question": "", "reference": "EUR 58"}\n'
    )
    page.file_uploader(key="ft_raft_questions_0").set_value(
        [("questions.jsonl", asked, "application/octet-stream")]
    ).run()
    page.button(key="ft_raft_build").click().run()
    assert not page.exception
    assert "questions that read your documents" in texts(page.success)
    assert "Some of your questions were left out" in texts(page.warning)
    assert "Line 2" in texts(page.warning)
    page.number_input(key="ft_batch_size").set_value(2).run()
    assert not page.error, texts(page.error)
    page.button(key="ft_start").click().run()
    assert not page.exception
    run = jobs.latest_run(load_settings())
    assert run is not None
    assert json.loads((run.folder / "config.json").read_text())["dataset_shape"] == DOCUMENTS_SHAPE
    wait_for(run.folder, finished)
    from core.answering.modes import RAG_ANSWER
    from core.training import adapters

    adapter = adapters.get(load_settings(), run.run_id)
    assert adapter.reads_documents
    assert adapter.check is not None and RAG_ANSWER in adapter.check.question
    page.run()  # the finished run shows its check: the question as asked, not the passages
    shown = [texts([m]) for m in page.markdown if "Held-out question:" in m.value]
    assert shown and all(RAG_ANSWER not in m and "Passages" not in m for m in shown), shown
