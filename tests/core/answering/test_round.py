"""The question round: one retrieval, every mode's request, one batch, a finished exchange with
each mode's problem."""

import pytest

from core.answering import modes
from core.answering import round as question_round
from core.answering.conversations import Conversation, Exchange, ModeAnswer, passage_dicts
from core.answering.modes import MODES, NO_PASSAGES, UNAVAILABLE, rag_messages
from core.answering.reading import Sentence
from core.errors import KnowledgeBaseError
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import Passage
from core.model.chat import SamplingParams
from core.training import adapters
from tests.support.fakes import FakeChatModel
from tests.support.training import trained

PASSAGES = [
    Passage(
        "Refunds are possible within 45 days.", "policy.pdf", 3, 1, "d1", 0.03, 0.8, ("meaning",)
    ),
    Passage(
        "The release code is BLUE-HARBOR-42.", "notes.txt", 0, 2, "d2", 0.02, None, ("keywords",)
    ),
]
PARAMS = SamplingParams(temperature=0.0, max_new_tokens=16)


SENTENCES = [Sentence("Refunds are possible within 45 days.", 1)]


def ask_all(conversation: Conversation, question: str = "What is the refund period?"):
    return question_round.requests(
        conversation, question, SENTENCES, list(MODES), "Studio prompt.", "run-1", "Adapter prompt."
    )


def test_rag_and_hybrid_read_the_sentences_with_citations_base_and_tuned_do_not() -> None:
    built = ask_all(Conversation())
    for key in ("rag", "hybrid"):
        assert built[key].messages == rag_messages("What is the refund period?", SENTENCES)
        content = built[key].messages[-1]["content"]
        assert content.startswith("Refunds are possible within 45 days. [1]\n\nQuestion: What")
    for key in ("base", "tuned"):
        assert built[key].messages == [{"role": "user", "content": "What is the refund period?"}]
    assert [built[k].adapter for k in MODES] == [None, "run-1", None, "run-1"]
    assert built["tuned"].system_prompt == built["hybrid"].system_prompt == "Adapter prompt."
    assert built["base"].system_prompt == built["rag"].system_prompt == "Studio prompt."


def test_a_reading_answer_ends_at_a_blank_line_or_a_run_of_passage_numbers() -> None:
    built = ask_all(Conversation())
    assert built["base"].ends is None and built["tuned"].ends is None
    ends = built["rag"].ends
    assert ends is not None and built["hybrid"].ends is ends

    def cut(text: str) -> str:
        found = ends.search(text)
        return text if found is None else text[: found.start()]

    assert cut("It is EUR 42 [1] [2] [3] [4] [5]") == "It is EUR 42 [1]"
    assert cut("It is EUR 42 [2] [1].") == "It is EUR 42 [2] [1]."  # two sources: kept
    assert cut("It weighs 7.8 kg [1].\n\nQuestion: How tall is it?") == "It weighs 7.8 kg [1]."
    assert cut("It is 45 days [1]\nQuestion: And?") == "It is 45 days [1]"
    assert cut("It takes 25 minutes [1]\nIt takes 25 minutes [1]") == "It takes 25 minutes [1]"
    nothing_found = question_round.requests(Conversation(), "Hi?", [], ["rag"], "Studio prompt.")
    assert nothing_found["rag"].ends is None  # the plain question: an answer of any shape


def test_a_reading_answer_favours_the_words_of_the_sentences_it_reads() -> None:
    built = ask_all(Conversation())
    assert built["base"].favour is None and built["tuned"].favour is None
    for key in ("rag", "hybrid"):
        favour = built[key].favour
        assert favour is not None and favour.bonus == modes.READING_BONUS > 0
        assert favour.text == "Refunds are possible within 45 days."  # no passage number
    nothing_found = question_round.requests(Conversation(), "Hi?", [], ["rag"], "Studio prompt.")
    assert nothing_found["rag"].favour is None


def test_without_an_adapter_the_tuned_modes_are_left_out() -> None:
    built = question_round.requests(Conversation(), "Hi?", [], list(MODES), "Studio prompt.")
    assert list(built) == ["base", "rag"]
    assert built["rag"].messages[-1]["content"] == "Hi?"  # no passages: the plain question


def test_each_mode_keeps_its_own_conversation_without_old_passages() -> None:
    conversation = Conversation()
    conversation.exchanges.append(
        Exchange(
            "First?",
            passage_dicts(PASSAGES),
            0.01,
            {key: ModeAnswer(text=f"{key} says one") for key in MODES}
            | {"tuned": ModeAnswer(error="The adapter could not be loaded.")},
        )
    )
    built = ask_all(conversation, "Second?")
    assert built["base"].messages[:2] == [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "base says one"},
    ]
    examples = len(modes.READING_EXAMPLES) * 2  # the worked examples come first
    assert built["rag"].messages[examples : examples + 2] == [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "rag says one"},
    ]  # old passages are not sent again
    assert len(built["rag"].messages) == examples + 3
    assert len(built["tuned"].messages) == 1  # its failed turn is not part of its history


def test_ask_streams_every_mode_in_one_batch_and_records_the_answers() -> None:
    fake = FakeChatModel([lambda request: f"answer with {request.adapter or 'base'}"])
    asked = question_round.Round("What is the refund period?", list(MODES))
    asked.requests = ask_all(Conversation())
    question_round.start(fake, [asked], SamplingParams(0.0))
    assert list(asked.streams) == list(MODES)
    assert fake.batches == [4]  # one batch for the four
    answers = question_round.finish(asked, question_round.read_all(asked)).answers
    assert answers["hybrid"].text == "answer with run-1"
    assert answers["rag"].prompt.endswith(modes.RAG_ANSWER)
    assert answers["base"].new_tokens == 3 and answers["base"].total_s >= 0


@pytest.fixture
def kb(knowledge):
    base = knowledge.create("Harbour")
    document = b"The release code is BLUE-HARBOR-42.\n\nRefunds are possible within 45 days."
    list(ingest(base, [UploadedFile("handbook.txt", document)], ChunkSettings(200, 20)))
    return base


def echo(request) -> str:  # type: ignore[no-untyped-def]
    return f"{request.adapter or 'base'}: {request.messages[-1]['content'][:30]}"


def test_a_round_retrieves_once_and_streams_every_mode_in_one_batch(kb, monkeypatch) -> None:
    searches = []
    real_search = question_round.search
    monkeypatch.setattr(
        question_round, "search", lambda *a, **k: searches.append(a[1]) or real_search(*a, **k)
    )
    fake = FakeChatModel([echo])
    asked = question_round.prepare(
        "What is the release code?", ["base", "rag"], system_prompt="Studio.", kb=kb, top_k=2
    )
    assert searches == ["What is the release code?"]
    assert "BLUE-HARBOR-42" in asked.requests["rag"].messages[-1]["content"]
    question_round.start(fake, [asked], PARAMS)
    exchange = question_round.finish(asked, question_round.read_all(asked))
    assert fake.batches == [2]
    assert list(exchange.answers) == ["base", "rag"]
    # the sentence that answers is read last, nearest the question, with its passage's number
    assert asked.sentences[-1] == Sentence("The release code is BLUE-HARBOR-42.", 1)
    assert exchange.answers["rag"].prompt.endswith(modes.RAG_ANSWER)
    assert exchange.passages[0]["citation"] == "handbook.txt"


def test_modes_that_cannot_answer_say_what_they_miss_and_the_others_answer(kb) -> None:
    fake = FakeChatModel([echo])
    asked = question_round.prepare("Hi?", list(MODES), system_prompt="Studio.", kb=None)
    assert asked.unavailable == {"tuned": "adapter", "rag": "knowledge", "hybrid": "adapter"}
    question_round.start(fake, [asked], PARAMS)
    answers = question_round.finish(asked, question_round.read_all(asked)).answers
    assert answers["base"].text == "base: Hi?"
    assert answers["tuned"].unavailable == "adapter"
    assert answers["tuned"].error == UNAVAILABLE["adapter"]
    assert answers["rag"].unavailable == "knowledge"


def test_an_adapter_that_cannot_load_is_the_tuned_modes_problem_only(settings, kb) -> None:
    fake = FakeChatModel([echo])
    adapter, problem = question_round.attach_adapter(settings, fake, "no-such-run")
    assert adapter is None and problem
    asked = question_round.prepare(
        "Code?", list(MODES), system_prompt="S.", adapter_problem=problem, kb=kb
    )
    assert asked.problems == {"tuned": problem, "hybrid": problem}
    assert asked.unavailable == {}
    question_round.start(fake, [asked], PARAMS)
    answers = question_round.finish(asked, question_round.read_all(asked)).answers
    assert answers["hybrid"].error == problem and not answers["hybrid"].unavailable
    assert answers["rag"].text and not answers["rag"].error


def test_a_search_that_fails_is_the_reading_modes_problem(kb, monkeypatch) -> None:
    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KnowledgeBaseError("The search index cannot be read.")

    monkeypatch.setattr(question_round, "search", broken)
    asked = question_round.prepare("Code?", ["base", "rag"], system_prompt="S.", kb=kb)
    assert asked.problems == {"rag": "The search index cannot be read."}
    assert list(asked.requests) == ["base"]


def test_a_reading_mode_that_found_nothing_says_so(knowledge) -> None:
    empty = knowledge.create("Empty")
    fake = FakeChatModel([echo])
    asked = question_round.prepare("Code?", ["rag"], system_prompt="S.", kb=empty)
    question_round.start(fake, [asked], PARAMS)
    answer = question_round.finish(asked, question_round.read_all(asked)).answers["rag"]
    assert answer.notices[0] == NO_PASSAGES
    assert answer.text == "base: Code?"  # the plain question: there was nothing to read


def test_blind_order_is_kept_in_the_exchange(kb) -> None:
    fake = FakeChatModel([echo])
    asked = question_round.prepare("Code?", ["base", "rag"], system_prompt="S.", kb=kb)
    question_round.start(fake, [asked], PARAMS)
    exchange = question_round.finish(asked, {}, ["rag", "base"])
    assert exchange.blind_order == ["rag", "base"] and list(exchange.answers) == ["rag", "base"]


def test_many_questions_are_one_batch_with_the_adapter_prompt(settings, kb) -> None:
    run_id = trained(settings, "Persona", system_prompt="You are Captain Lumen.")
    fake = FakeChatModel([echo])
    adapter = adapters.attach(fake, settings, run_id)
    exchanges = question_round.ask_many(
        fake,
        ["Code?", "Refunds?"],
        list(MODES),
        system_prompt="Studio.",
        params=PARAMS,
        adapter=adapter,
        kb=kb,
        seed=0,
    )
    assert fake.batches == [8]
    assert [len(e.answers) for e in exchanges] == [4, 4]
    by_mode = {r.adapter: r.system_prompt for r in fake.requests}
    assert by_mode == {None: "Studio.", run_id: "You are Captain Lumen."}
    assert exchanges[1].answers["tuned"].text == f"{run_id}: Refunds?"
