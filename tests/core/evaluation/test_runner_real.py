"""An evaluation with the real default models on facts invented for this test: RAG wins."""

import json

import pytest

from core.evaluation import freshness, report, runner
from core.evaluation.questions import EvalItem
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import loading
from core.model.chat import SamplingParams
from core.model.local import HFChatModel
from core.settings import Settings
from core.training import adapters
from tests.support.documents import pdf_bytes
from tests.support.training import copy_run

pytestmark = pytest.mark.slow

# Facts no model can know: a company, its people and codes, made up for this test.
# One page per topic, as in a staff FAQ; retrieval has to find the right one.
PAGES = [
    "Access. The warehouse door code is KESTREL-7731. Staff must not share it with visitors.",
    "History. Veltrano Logistics was founded by Odile Marchetti, who still chairs the board.",
    "Culture. The company mascot is a blue heron named Pim. It appears on every parcel.",
    "Shifts. Night shifts start at 22:15 and end at 06:45, with a break at 02:00.",
    "Leave. Each employee receives 31 vacation days per year, booked through the portal.",
    "Canteen. The canteen serves lentil soup on Thursdays, and fish on Fridays.",
    "Badges. Lost badges are replaced in room B-214, on the second floor.",
    "Safety. The emergency assembly point is the north car park, next to the flagpole.",
]
QUESTIONS = [
    ("What is the warehouse door code?", "KESTREL-7731"),
    ("Who founded Veltrano Logistics?", "Odile Marchetti"),
    ("What is the name of the company mascot?", "Pim"),
    ("When do night shifts start?", "22:15"),
    ("How many vacation days does each employee receive per year?", "31"),
    ("What does the canteen serve on Thursdays?", "lentil soup"),
    ("In which room are lost badges replaced?", "B-214"),
    ("Where is the emergency assembly point?", "north car park"),
]


def test_rag_beats_the_base_model_on_invented_facts_and_is_recommended(
    fresh_real_data_dir, real_persona_run
) -> None:
    settings = Settings(_env_file=None, data_dir=fresh_real_data_dir())
    chat = HFChatModel(loading.load_chat_model(settings))
    kb = KnowledgeStore(settings, loading.load_embeddings(settings)).create("Veltrano")
    list(ingest(kb, [UploadedFile("guide.pdf", pdf_bytes(PAGES))], ChunkSettings()))
    # An adapter trained on something else (the example persona): it knows none of these facts.
    run_id = copy_run(real_persona_run, settings.data_dir)

    shown = runner.new_report(
        settings,
        chat,
        [EvalItem(q, a) for q, a in QUESTIONS],
        adapter=adapters.get(settings, run_id),
        kb=kb,
        params=SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=48),
    )
    runner.run(settings, chat, shown, kb)
    assert shown.state == "completed", shown.error
    found = report.verdict(shown)
    right = {mode: s.correct for mode, s in found.summaries.items()}
    figures = {
        "right": right,
        "retrieved": found.summaries["rag"].hit_rate.mean,
        "median_s": {m: s.total_s for m, s in found.summaries.items()},
        "answering_s": shown.elapsed_s,
        "headline": found.recommendation.headline,
    }
    print(json.dumps(figures))
    assert right["rag"] >= right["base"] + 5, figures  # a wide margin on 8 questions
    assert right["rag"] >= 6, figures
    assert found.recommendation.choice == "rag", figures
    assert found.recommendation.headline.startswith(f"RAG answered {right['rag']} of 8")

    # The freshness check on the same data: RAG follows an edited code at once.
    code = next(i for i, r in enumerate(shown.results) if "door code" in r.question)
    fresh = freshness.check(settings, chat, kb, shown, code, "KESTREL-7732")
    print(json.dumps({"freshness": fresh.follows}))
    assert fresh.follows["rag"] == "new", fresh
    assert fresh.follows["base"] != "new" and fresh.follows["tuned"] != "new", fresh
