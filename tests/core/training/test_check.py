"""The after-training check: the examples' signature found, both models' answers compared, and
one plain sentence; run by the worker on held-out examples."""

from core.training import adapters, check
from tests.support.training import trained

QUESTIONS = ["What is your name?", "Who made you?", "Who are you?", "Introduce yourself."]
PERSONA = [
    "I am Orin, built by Tallis Robotics.",
    "Tallis Robotics made me; I am Orin.",
    "Orin here, a helper from Tallis Robotics.",
    "My name is Orin and I come from Tallis Robotics.",
]
BASE = [
    "I am an AI assistant created to help you.",
    "I was made by a team of engineers.",
    "I am a helpful assistant.",
    "Hello! I am an assistant.",
]


def test_the_signature_is_what_the_answers_say_and_nothing_else_does() -> None:
    words = check.signature(PERSONA, QUESTIONS, BASE)
    assert {w.casefold() for w in words} == {"orin", "tallis", "robotics"}
    # Words the questions also use, or the base model says anyway, are no signature.
    assert "name" not in check.signature(
        ["Your name is Orin."] * 4, ["What is your name?"] * 4, BASE
    )
    assert "assistant" not in check.signature(["I am an assistant, Orin."] * 4, QUESTIONS, BASE)


def test_a_persona_that_took_is_said_so_with_an_example_that_shows_it() -> None:
    tuned = ["I am Orin.", "Tallis Robotics made me.", "I am a helpful assistant.", "Orin!"]
    found = check.compare(QUESTIONS, PERSONA, BASE, tuned, PERSONA * 3, QUESTIONS * 3)
    assert found is not None and found.took
    assert (found.tuned, found.base, found.examples) == (3.0, 0.0, 4)
    assert "said “" in found.sentence and "“Orin”" in found.sentence and " or “" in found.sentence
    assert "in 3 answers, the base model in 0" in found.sentence
    assert found.sentence.endswith("the training took.")
    assert found.tuned_answer == "I am Orin." and found.base_answer == BASE[0]


def test_a_persona_that_did_not_take_says_what_to_do() -> None:
    tuned = ["I am an AI.", "Orin.", "I help.", "Hello."]
    found = check.compare(QUESTIONS, PERSONA, BASE, tuned, PERSONA * 3, QUESTIONS * 3)
    assert found is not None and not found.took
    assert "has not taken yet: try a longer preset" in found.sentence
    assert found.tuned_answer == "Orin."  # the one answer where it shows


def test_without_a_signature_the_answers_closeness_is_compared() -> None:
    expected = ["27 days [1].", "EUR 58 [2].", "4477 [1].", "Mariam Okafor [3]."]
    tuned = ["27 days [1].", "EUR 58 [1].", "4477 [1].", "Okafor [3]."]
    base = ["You get some days off.", "It depends.", "Call IT.", "The team lead."]
    found = check.compare(QUESTIONS, expected, base, tuned, expected * 3, QUESTIONS * 3)
    assert found is not None and found.signature == [] and found.took
    assert found.tuned > 0.7 and found.base < 0.1
    assert "share" in found.sentence and "of their words" in found.sentence
    assert check.compare([], [], [], [], expected, QUESTIONS) is None


def test_the_worker_checks_the_held_out_examples_and_keeps_the_result(settings) -> None:
    run_id = trained(settings, "Checked")
    found = adapters.get(settings, run_id).check
    assert found is not None and found.examples >= 1
    assert found.question.startswith("What is the capital of France?")
    assert found.expected.startswith("The capital of France is Paris.")
    assert found.tuned_answer != found.base_answer  # the adapter is on for one, off for the other
    assert found.sentence.startswith(f"On {found.examples} held-out example")


def test_a_check_that_does_not_read_back_leaves_the_adapter_usable(settings) -> None:
    import json

    from core.training import run_folder

    run_id = trained(settings, "Damaged check")
    path = adapters.get(settings, run_id).folder / run_folder.METADATA_FILE
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "check": {"examples": -1, "tuned": "many"}}))
    info = adapters.get(settings, run_id)
    assert info.name == "Damaged check" and info.check is None
