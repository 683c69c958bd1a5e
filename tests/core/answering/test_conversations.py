"""Arena conversations: each mode's history, saving, exports and blind votes."""

import json

import pytest

from core.answering import conversations
from core.answering.conversations import Conversation, Exchange, ModeAnswer
from core.answering.modes import MODES
from core.errors import InvalidInputError
from core.knowledge.retrieve import Passage

PASSAGES = [
    Passage(
        "Refunds are possible within 45 days.", "policy.pdf", 3, 1, "d1", 0.03, 0.8, ("meaning",)
    ),
    Passage(
        "The release code is BLUE-HARBOR-42.", "notes.txt", 0, 2, "d2", 0.02, None, ("keywords",)
    ),
]


def conversation_with_answers() -> Conversation:
    conversation = Conversation(
        model="tiny",
        adapter="run-1",
        adapter_name="Persona",
        knowledge_base="Policies",
        params={"temperature": 0.3},
    )
    conversation.exchanges.append(
        Exchange(
            "What is the refund period?",
            conversations.passage_dicts(PASSAGES),
            0.012,
            {
                "base": ModeAnswer(text="30 days, I think.", new_tokens=5, total_s=0.4),
                "rag": ModeAnswer(
                    text="45 days [1].",
                    new_tokens=4,
                    total_s=0.6,
                    notices=["Your message was too long."],
                ),
            },
        )
    )
    return conversation


def test_markdown_and_json_exports_hold_the_whole_conversation(tmp_path) -> None:
    conversation = conversation_with_answers()
    text = conversations.to_markdown(conversation)
    assert "## 1. What is the refund period?" in text
    assert "### Base model\n\n30 days, I think." in text
    assert "### RAG\n\n45 days [1]." in text
    assert "> Your message was too long." in text
    assert "1. policy.pdf, page 3 (score 0.030)" in text
    assert "- Adapter: Persona" in text and "- Knowledge base: Policies" in text
    data = json.loads(conversations.to_json(conversation))
    assert data["exchanges"][0]["answers"]["rag"]["text"] == "45 days [1]."
    assert Conversation.from_dict(data) == conversation


def test_conversations_are_saved_and_loaded(settings) -> None:
    conversation = conversation_with_answers()
    conversations.save(settings, conversation)
    assert conversations.load(settings, conversation.id) == conversation
    for bad in ("../../etc/passwd", "/etc/passwd", "a/b", "A1", ""):
        with pytest.raises(InvalidInputError):
            conversations.load(settings, bad)


def test_blind_votes_make_a_leaderboard(settings) -> None:
    exchange = Exchange(
        "Q?", [], 0.0, {}, blind_order=conversations.blind_order(list(MODES), seed=3)
    )
    assert sorted(exchange.blind_order) == sorted(MODES)
    assert (
        conversations.blind_order(list(MODES), seed=3) == exchange.blind_order
    )  # seeded: repeatable
    conversations.record_vote(settings, exchange, "rag")
    assert exchange.vote == "rag"
    second = Exchange("Q2?", [], 0.0, {}, blind_order=["base", "rag"])
    conversations.record_vote(settings, second, "base")
    conversations.record_vote(
        settings, Exchange("Q3?", [], 0.0, {}, blind_order=["rag", "tuned"]), "rag"
    )
    (conversations.arena_dir(settings) / "votes.jsonl").open("a").write(
        '{"winner": "rag", "sh'
    )  # torn
    board = {row["mode"]: row for row in conversations.leaderboard(settings)}
    assert (board["rag"]["wins"], board["rag"]["votes"]) == (2, 3)
    assert (board["base"]["wins"], board["base"]["votes"]) == (1, 2)
    assert board["hybrid"]["wins"] == 0 and board["hybrid"]["votes"] == 1
    assert conversations.leaderboard(settings)[0]["mode"] == "rag"
    with pytest.raises(ValueError):
        conversations.record_vote(settings, second, "hybrid")  # not one of the answers shown
