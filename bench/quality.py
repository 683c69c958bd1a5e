"""How well the answers read what retrieval found, on documents and questions nobody tuned on.

The material is in bench/data/quality: six documents of the shapes people bring (a staff handbook,
an appliance manual, a council notice, lab safety rules, an operations runbook, booking terms),
written for this benchmark, and two sets of paraphrased questions about them whose answers are
numbers, names, dates and codes. `dev` is the set the studio's reading prompt was chosen on;
`test` (the default) is held out and reports.

Measured in one run on the same knowledge base, retrieval and model (the embedded default,
greedy):
- ours: the Evaluate page's runner in all four modes (core.answering.reading and .modes), the
  fine-tuned modes with an adapter trained "to use your documents" (core.answering.raft) on the
  other question set and the documents' own facts, never on a measured question;
- plain: the same retrieved passages stuffed into LangChain's standard RAG prompt (the one of
  the `rlm/rag-prompt` hub entry that its tutorials use), on the same model;
- persona: bench/data/persona (90 rows: the assistant is Orin, made by Tallis Robotics) trained
  with Balanced, and ten unseen questions asked of the base and the tuned model.

Prints one JSON line: recall@4 (the answer is in the passages retrieved), each mode's accuracy,
"RAG right when retrieved" (of the questions whose answer was retrieved, the share answered
right; target 0.8) against the plain prompt's (`ours_over_plain_prompt`, target 2.0), the
persona hit rate (target 0.9) with the after-training check's sentence, the hybrid's lead over
RAG in points (target 15) and the Evaluate page's recommendation; "ratio" is hybrid accuracy
over RAG accuracy, "target" 1.25.

    .venv/bin/python bench/quality.py [--set test|dev] [--tokens 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.answering import raft  # noqa: E402
from core.evaluation import runner  # noqa: E402 - after the path is set
from core.evaluation.metrics import score  # noqa: E402
from core.evaluation.questions import EvalItem, parse_eval_set  # noqa: E402
from core.evaluation.recommend import recommend  # noqa: E402
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest  # noqa: E402
from core.knowledge.retrieve import search  # noqa: E402
from core.knowledge.store import KnowledgeBase, KnowledgeStore  # noqa: E402
from core.model.chat import ChatModel, ChatRequest, SamplingParams  # noqa: E402
from core.model.loading import load_chat_model, load_embeddings  # noqa: E402
from core.model.local import HFChatModel  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from core.text_match import contains  # noqa: E402
from core.training import adapters, jobs, worker  # noqa: E402
from core.training.config import PRESETS, TrainConfig  # noqa: E402
from core.training.datasets import Dataset, parse_dataset  # noqa: E402

DATA = ROOT / "bench" / "data" / "quality"
PERSONA = ROOT / "bench" / "data" / "persona"
# LangChain's standard RAG prompt (hub: rlm/rag-prompt), as its tutorials use it.
PLAIN_PROMPT = (
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved "
    "context to answer the question. If you don't know the answer, just say that you don't know. "
    "Use three sentences maximum and keep the answer concise.\n"
    "Question: {question} \nContext: {context} \nAnswer:"
)
BATCH = 16


def questions(which: str) -> list[EvalItem]:
    path = DATA / f"questions-{which}.jsonl"
    return parse_eval_set(path.name, path.read_bytes()).items


def knowledge_base(settings: Settings) -> KnowledgeBase:
    kb = KnowledgeStore(settings, load_embeddings(settings)).create("Quality")
    files = [UploadedFile(p.name, p.read_bytes()) for p in sorted((DATA / "documents").iterdir())]
    list(ingest(kb, files, ChunkSettings(settings.chunk_size, settings.chunk_overlap)))
    return kb


def ours(
    settings: Settings,
    chat: ChatModel,
    kb: KnowledgeBase,
    items: list[EvalItem],
    tokens: int,
    adapter: str | None,
) -> dict:
    """The Evaluate page's runner in every mode; the hybrid reads with the RAFT adapter."""
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=tokens)
    info = adapters.get(settings, adapter) if adapter else None
    report = runner.new_report(settings, chat, items, adapter=info, kb=kb, params=params)
    runner.run(settings, chat, report, kb)
    assert report.state == "completed", report.error
    hits = [bool(r.retrieval_hit) for r in report.results]
    right = {mode: [r.correct(mode) for r in report.results] for mode in report.modes}
    verdict = recommend(right, share(hits)).choice
    return {"hits": hits, "right": right, "recommendation": verdict}


def train(settings: Settings, data: Dataset, name: str, quick: bool, quick_length: int) -> str:
    """An adapter trained with Balanced, as the Fine-tune page's one click does (quick: one
    pass of the tiny model); its run id."""
    config = (
        TrainConfig(epochs=1, batch_size=4, max_length=quick_length)
        if quick
        else PRESETS["balanced"].config
    )
    run_dir = jobs.create(
        settings,
        data,
        config,
        name=name,
        preset="custom" if quick else "balanced",
        system_prompt=settings.system_prompt,
    )
    assert worker.run(run_dir) == "completed", (run_dir / "train.log").read_text()[-2000:]
    return run_dir.name


def raft_adapter(
    settings: Settings,
    kb: KnowledgeBase,
    training: list[EvalItem],
    held_out: list[EvalItem],
    quick: bool,
) -> tuple[str, dict]:
    """Train "Teach it to use your documents" as the Fine-tune page does: RAFT rows from the
    other question set and the knowledge base's own facts, never a measured question."""
    started = time.perf_counter()
    built = raft.training_rows(kb, training, held_out=[item.question for item in held_out])
    rows = built.rows[:12] if quick else built.rows
    # The quick mode's tiny tokenizer spells words out: reading rows take many tokens.
    run_id = train(settings, raft.dataset(rows, "raft"), "Reads the documents", quick, 1024)
    return run_id, {
        "raft_rows": len(rows),
        "raft_rows_from_questions": built.from_questions,
        "raft_skipped": built.skipped,
        "raft_train_s": round(time.perf_counter() - started, 1),
    }


def persona(settings: Settings, chat: ChatModel, quick: bool) -> dict:
    """The persona set (bench/data/persona: 90 rows that name the assistant Orin, made by
    Tallis Robotics) trained with Balanced; how many of ten unseen questions get the name."""
    started = time.perf_counter()
    data = parse_dataset("persona.jsonl", (PERSONA / "train.jsonl").read_bytes())
    run_id = train(settings, data, "Orin", quick, 128)
    trained_s = time.perf_counter() - started
    info = adapters.attach(chat, settings, run_id)
    lines = (PERSONA / "heldout.jsonl").read_text().splitlines()
    held = [json.loads(line) for line in lines if line.strip()][: 3 if quick else None]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=32)
    hits = {}
    for adapter in (None, info.run_id):
        asked = [
            ChatRequest([{"role": "user", "content": row["question"]}], info.system_prompt, adapter)
            for row in held
        ]
        answers = [stream.read().text for stream in chat.stream_many(asked, params)]
        hits[adapter] = [row["name"] in answer for row, answer in zip(held, answers, strict=True)]
    return {
        "persona_hit_rate": share(hits[info.run_id]),
        "persona_base_hit_rate": share(hits[None]),
        "persona_hit_rate_target": 0.9,
        "persona_train_s": round(trained_s, 1),
        "persona_check": info.check.sentence if info.check else None,
    }


def plain(
    settings: Settings, chat: ChatModel, kb: KnowledgeBase, items: list[EvalItem], tokens: int
) -> tuple[list[bool], list[bool]]:
    """Each question with its retrieved passages in LangChain's standard RAG prompt: whether
    each was answered right, and whether its passages held the answer."""
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=tokens)
    requests, hits = [], []
    for item in items:
        passages = search(kb, item.question, settings.top_k).passages
        context = "\n\n".join(p.text for p in passages)
        hits.append(contains(" ".join(p.text for p in passages), item.answers))
        content = PLAIN_PROMPT.format(question=item.question, context=context)
        requests.append(ChatRequest([{"role": "user", "content": content}], settings.system_prompt))
    answers: list[str] = []
    for start in range(0, len(requests), BATCH):
        streams = chat.stream_many(requests[start : start + BATCH], params)
        answers += [stream.read().text for stream in streams]
    right = [score(a, item.answers).correct for a, item in zip(answers, items, strict=True)]
    return right, hits


def share(values: list[bool]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def when(right: list[bool], hits: list[bool]) -> float:
    return share([r for r, h in zip(right, hits, strict=True) if h])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["test", "dev"], default="test")
    parser.add_argument("--tokens", type=int, default=64, help="longest answer, in tokens")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few questions and short answers, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    items = questions(args.set)
    if args.quick:
        items, args.tokens = items[:3], 12

    started = time.perf_counter()
    shared = load_settings()
    scratch = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    settings = shared.model_copy(
        update={"data_dir": scratch / "data", "model_cache_dir": shared.models_dir.resolve()}
    )
    chat = HFChatModel(load_chat_model(settings), context_window=settings.context_window)
    kb = knowledge_base(settings)
    training = questions("dev" if args.set == "test" else "test")
    adapter, raft_figures = raft_adapter(settings, kb, training, items, args.quick)
    found = ours(settings, chat, kb, items, args.tokens, adapter)
    persona_figures = persona(settings, chat, args.quick)
    peer, peer_hits = plain(settings, chat, kb, items, args.tokens)
    hits, right = found["hits"], found["right"]
    assert peer_hits == hits  # the plain prompt read the same passages as ours
    print(
        json.dumps(
            {
                "bench": "quality",
                "set": args.set,
                "questions": len(items),
                "recall_at_4": share(hits),
                "accuracy": {mode: share(marks) for mode, marks in right.items()},
                "plain_prompt_accuracy": share(peer),
                "rag_right_when_retrieved": when(right["rag"], hits),
                "plain_prompt_right_when_retrieved": when(peer, hits),
                "rag_right_when_retrieved_target": 0.8,
                "ours_over_plain_prompt": round(
                    when(right["rag"], hits) / max(when(peer, hits), 0.01), 2
                ),
                "ours_over_plain_prompt_target": 2.0,
                **persona_figures,
                **raft_figures,
                "hybrid_minus_rag_points": round(
                    100 * (share(right["hybrid"]) - share(right["rag"])), 1
                ),
                "hybrid_minus_rag_points_target": 15,
                "recommendation": found["recommendation"],
                "seconds": round(time.perf_counter() - started, 1),
                "ratio": round(share(right["hybrid"]) / max(share(right["rag"]), 0.01), 2),
                "target": 1.25,
            }
        )
    )


if __name__ == "__main__":
    main()
