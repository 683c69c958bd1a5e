"""The freshness check: an edited fact in a copy of the documents, asked again in every mode."""

import pytest

from core.answering.modes import is_reading
from core.errors import InvalidInputError
from core.evaluation import freshness, runner
from core.knowledge.chroma import client_for
from core.knowledge.retrieve import search
from core.model.chat import ChatRequest
from tests.support.evaluation import ITEMS, PARAMS, new, oracle
from tests.support.fakes import FakeChatModel
from tests.support.training import trained


def test_freshness_rag_follows_an_edited_fact_the_adapter_does_not(settings, kb, knowledge) -> None:
    from core.training import adapters

    run_id = trained(settings, "Harbour staff")

    def learned(request: ChatRequest) -> str:
        if request.adapter is not None and not is_reading(request.messages[-1]["content"]):
            return "The release code is BLUE-HARBOR-42."  # learned in training
        return oracle(request)

    fake = FakeChatModel([learned])
    shown = runner.new_report(
        settings, fake, ITEMS[:1], adapter=adapters.get(settings, run_id), kb=kb, params=PARAMS
    )
    runner.run(settings, fake, shown, kb)
    assert freshness.suggest("BLUE-HARBOR-42") == "BLUE-HARBOR-43"
    assert freshness.suggest("45 days") == "46 days" and freshness.suggest("Paris") == ""
    found = freshness.check(settings, fake, kb, shown, 0, "BLUE-HARBOR-43")
    assert found.edited == ["handbook.txt"]
    assert found.follows == {"base": "neither", "tuned": "old", "rag": "new", "hybrid": "new"}
    assert found.summary[1].startswith("Fine-tuned (LoRA) still answers 'BLUE-HARBOR-42'")
    assert found.summary[2] == "RAG now answers 'BLUE-HARBOR-43': it follows the change."
    # the user's knowledge base is as it was, and the scratch copy is gone
    assert "BLUE-HARBOR-42" in search(kb, "release code", 4).passages[0].text
    collections = [c.name for c in client_for(settings).list_collections()]
    assert not [c for c in collections if c.startswith("fresh-")]
    assert not list((runner.reports_dir(settings) / "scratch").iterdir())
    assert runner.load(settings, shown.id).freshness["follows"]["rag"] == "new"
    with pytest.raises(InvalidInputError, match="must differ"):
        freshness.check(settings, fake, kb, shown, 0, "blue-harbor-42")


def test_freshness_needs_the_old_answer_in_the_documents(settings, kb) -> None:
    shown = new(settings, kb, items=[ITEMS[3]])
    runner.run(settings, FakeChatModel([oracle]), shown, kb)
    with pytest.raises(InvalidInputError, match="No passage of 'Harbour' states 'Ingrid Solberg'"):
        freshness.check(settings, FakeChatModel([oracle]), kb, shown, 0, "Tom Berg")
    with pytest.raises(InvalidInputError, match="Type the new answer"):
        freshness.check(settings, FakeChatModel([oracle]), kb, shown, 0, "  ")


def test_the_check_offers_only_questions_rag_answered_right_from_a_passage(settings, kb) -> None:
    shown = new(settings, kb)
    runner.run(settings, FakeChatModel([oracle]), shown, kb)
    # The oracle's RAG reads the code (right), misses the refund period (wrong, though it was
    # retrieved), Paris and the harbour master are in no passage.
    assert [shown.results[i].question for i in freshness.candidates(shown)] == [
        "What is the release code?"
    ]
    none_right = new(settings, kb, items=ITEMS[1:])
    runner.run(settings, FakeChatModel([oracle]), none_right, kb)
    assert freshness.candidates(none_right) == []
