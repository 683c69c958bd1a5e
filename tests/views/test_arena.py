"""The Arena page through app.py, with a fake chat model and fake embeddings."""

import pytest

from core.answering import conversations
from core.answering.modes import READING_EXAMPLES
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loops
from core.settings import load_settings
from core.training import run_folder
from tests.support.training import trained
from tests.views.conftest import texts

PAGE = "views/arena.py"


@pytest.fixture
def studio(fake_model, fake_search):
    """A knowledge base with one document and a trained adapter; the fake model answers by
    saying which adapter it used and whether it read passages."""
    settings = load_settings()
    kb = KnowledgeStore(settings, fake_search).create("Policies")
    policy = b"Refunds are possible within 45 days of purchase."
    list(ingest(kb, [UploadedFile("policy.txt", policy)], ChunkSettings(200, 20)))
    run_id = trained(settings, "Persona")
    fake_model.replies = [
        lambda r: (
            f"{'tuned' if r.adapter else 'base'} "
            f"{'with passages' if 'Question:' in r.messages[-1]['content'] else 'alone'}"
        )
    ]
    return settings, run_id


def ask(at, question: str):
    at.chat_input(key="arena_input").set_value(question).run()
    assert not at.exception
    return at


def test_without_adapter_or_knowledge_base_the_columns_say_what_to_do(open_page, fake_search):
    at = open_page(PAGE)
    assert not at.exception
    shown = texts(at.info)
    assert "Train an adapter first" in shown and "Create a knowledge base first" in shown
    assert [m.value for m in at.markdown if m.value.startswith("**")][:4] == [
        "**Base model**",
        "**Fine-tuned (LoRA)**",
        "**RAG**",
        "**Fine-tuned + RAG**",
    ]


def test_one_question_four_answers_with_sources_timings_and_prompts(open_page, studio, fake_model):
    settings, run_id = studio
    at = ask(open_page(PAGE), "What is the refund period?")
    answers = [m.value for m in at.markdown]
    for expected in ("base alone", "tuned alone", "base with passages", "tuned with passages"):
        assert expected in answers
    assert len(fake_model.requests) == 4  # one batch
    assert [r.adapter for r in fake_model.requests] == [None, run_id, None, run_id]
    assert list(fake_model.adapters) == [run_id]
    assert sum("Sources (1)" in e.label for e in at.expander) == 2
    assert sum(e.label == "Prompt" for e in at.expander) == 4
    raw = " ".join(m.value for m in at.markdown)
    assert "[1] policy\\.txt" in raw  # escaped: shown literally
    assert sum("First token" in c.value for c in at.caption) == 4
    assert any("Retrieved 1 passage in" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 2  # Markdown and JSON
    saved = conversations.load(settings, at.session_state["arena_conversation"].id)
    assert saved.exchanges[0].answers["rag"].text == "base with passages"


def test_each_column_keeps_its_conversation_until_a_new_one(open_page, studio, fake_model):
    at = ask(open_page(PAGE), "First question?")
    ask(at, "Second question?")
    second_batch = fake_model.requests[4:]
    examples = 2 * len(READING_EXAMPLES)  # the reading modes' worked examples come first
    assert [len(r.messages) for r in second_batch] == [3, 3, 3 + examples, 3 + examples]
    assert second_batch[1].messages[1]["content"] == "tuned alone"
    assert second_batch[3].messages[examples + 1]["content"] == "tuned with passages"
    at.button(key="arena_new").click().run()
    assert at.session_state["arena_conversation"] is None
    assert "Ask something your documents" in texts(at.info)


def test_an_empty_question_does_nothing(open_page, studio, fake_model):
    ask(open_page(PAGE), "   ")
    assert fake_model.requests == []


def test_an_empty_knowledge_base_answers_anyway_and_says_so(open_page, studio, fake_model):
    settings, _ = studio
    KnowledgeStore(settings, None).create("Empty")
    at = open_page(PAGE)
    at.selectbox(key="arena_kb").set_value("Empty").run()
    ask(at, "What is the refund period?")
    assert texts(at.warning).count("No passages were found") == 2
    assert "base alone" in [m.value for m in at.markdown]


def test_a_damaged_adapter_is_explained_in_its_columns_while_the_others_answer(
    open_page, studio, fake_model
):
    settings, run_id = studio
    (
        settings.data_dir / "runs" / run_id / run_folder.ADAPTER_DIR / "adapter_model.safetensors"
    ).write_bytes(b"broken")
    at = ask(open_page(PAGE), "What is the refund period?")
    assert texts(at.error).count("missing or damaged") == 2
    answers = [m.value for m in at.markdown]
    assert "base alone" in answers and "base with passages" in answers
    assert len(fake_model.requests) == 2


def test_blind_mode_hides_the_labels_until_the_vote(open_page, studio, fake_model):
    settings, _ = studio
    at = open_page(PAGE)
    at.toggle(key="arena_blind").set_value(True).run()
    ask(at, "What is the refund period?")
    titles = [m.value for m in at.markdown if m.value.startswith("**Answer")]
    assert titles == ["**Answer A**", "**Answer B**", "**Answer C**", "**Answer D**"]
    assert not any(e.label == "Prompt" for e in at.expander)  # nothing that gives it away
    order = at.session_state["arena_conversation"].exchanges[0].blind_order
    at.button(key=f"arena_vote_0_{order[2]}").click().run()
    assert not at.exception
    revealed = [m.value for m in at.markdown if m.value.startswith("**Answer")]
    assert revealed[2] == f"**Answer C · {conversations.MODES[order[2]].label}**"
    board = {row["mode"]: row["wins"] for row in conversations.leaderboard(settings)}
    assert board[order[2]] == 1 and sum(board.values()) == 1
    assert any(e.label == "Blind leaderboard" for e in at.expander)


def test_answers_are_shown_as_text_never_as_html(open_page, studio, fake_model):
    fake_model.replies = ["<img src=x onerror=alert(1)> **bold**"]
    at = ask(open_page(PAGE), "Hi?")
    assert not at.exception
    shown = [m for m in at.markdown if "onerror" in m.value]
    assert len(shown) == 4 and not any(m.proto.allow_html for m in at.markdown)


def test_without_an_adapter_the_tuned_columns_point_to_fine_tune(
    open_page, fake_search, fake_model
):
    settings = load_settings()
    kb = KnowledgeStore(settings, fake_search).create("Policies")
    list(ingest(kb, [UploadedFile("p.txt", b"Refunds within 45 days.")], ChunkSettings(200, 20)))
    at = ask(open_page(PAGE), "What is the refund period?")
    assert len(fake_model.requests) == 2  # base and RAG only
    assert texts(at.info).count("Train an adapter first") == 2
    links = [link.proto.page for link in at.get("page_link")]
    assert links == ["finetune", "finetune"]


def test_a_question_cut_to_fit_says_so_in_every_column(open_page, studio, fake_model):
    fake_model.notices = ["Your message was too long for the model: only its first 100 tokens"]
    at = ask(open_page(PAGE), "word " * 5000)
    assert texts(at.warning).count("Your message was too long") == 4
    saved = at.session_state["arena_conversation"].exchanges[0]
    assert all(answer.notices for answer in saved.answers.values())


def test_a_column_that_loops_is_cut_and_marked_while_the_others_stand(
    open_page, studio, fake_model
):
    fake_model.replies = [
        lambda r: "Ahoy," + " die für die Bahn," * 40 if r.adapter else "I am a helpful assistant."
    ]
    at = ask(open_page(PAGE), "Who are you?")
    assert texts(at.warning).count(loops.NOTICE) == 2  # the two tuned columns
    saved = at.session_state["arena_conversation"].exchanges[0].answers
    assert saved["tuned"].text == "Ahoy, die für die Bahn …"
    assert saved["base"].text == "I am a helpful assistant."
    assert saved["tuned"].notices == [loops.NOTICE] and not saved["base"].notices
