"""An evaluation's wall time: questions batched across modes (ours) against one answer at a time.

Default model, a LoRA adapter of the studio's default shape (random weights), a small handbook
in a knowledge base, and six questions about it, each answered in the four modes (24 answers),
greedy, up to `--tokens` new tokens (answers end where the model ends them: greedy decoding
gives the same answers either way, so both sides do the same work):

- ours:        core.evaluation.runner as the Evaluate page runs it (QUESTIONS_PER_BATCH questions
               x 4 modes decoded together), and with 1 and 4 questions per batch for comparison
- one by one:  the same evaluation, every answer generated alone, one after another (what an
               evaluation loop around a chat model does)

Prints one JSON line; "ratio" is one-by-one time over ours (higher is better), "target" 2.0.

    .venv/bin/python bench/evaluate.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arena import handbook, make_adapter
from core.evaluation import results, runner
from core.evaluation.questions import EvalItem
from core.evaluation.results import Report
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model import compute
from core.model.chat import ChatRequest, ChatStream, SamplingParams
from core.model.loading import load_chat_model, load_embeddings
from core.model.local import HFChatModel
from core.settings import load_settings
from core.training import adapters

QUESTIONS = [
    EvalItem("What is the harbour release code for night departures?", "BLUE-HARBOR-42"),
    EvalItem("Within how many days are cancelled berth bookings refunded?", "45 days"),
    EvalItem("Who is the harbour master?", "Ingrid Solberg"),
    EvalItem("Where is fuel sold?", "north pier"),
    EvalItem("Which vessels need a pilot?", "longer than 40 metres"),
    EvalItem("Where does waste oil go?", "green tanks"),
]


class OneByOne:
    """The chat model, answering every request of a batch alone, one after another."""

    def __init__(self, chat: HFChatModel) -> None:
        self.chat = chat
        self.name = chat.name

    def load_adapter(self, name: str, folder: Path, label: str = "") -> None:
        self.chat.load_adapter(name, folder, label)

    def stream_many(
        self,
        requests: Sequence[ChatRequest],
        params: SamplingParams,
        seed: int | None = None,
        *,
        background: bool = False,
    ) -> list[ChatStream]:
        streams = []
        for request in requests:
            (stream,) = self.chat.stream_many([request], params, seed, background=background)
            stream.read()
            streams.append(stream)
        return streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="longest answer, in tokens")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    questions = QUESTIONS[:2] if args.quick else QUESTIONS
    if args.quick:
        args.tokens = 8

    scratch = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    # A scratch studio that shares the prepared model with the real one (prepared there if new).
    shared = load_settings()
    settings = shared.model_copy(
        update={"data_dir": scratch / "data", "model_cache_dir": shared.models_dir.resolve()}
    )
    loaded = load_chat_model(settings)
    chat = HFChatModel(loaded, context_window=settings.context_window)

    # The adapter as a finished run, so that the evaluation attaches it the studio's way.
    run_dir = scratch / "data" / "runs" / "bench"
    compute.call(make_adapter, loaded.model, run_dir / "adapter")
    (run_dir / "config.json").write_text("{}")  # no training data: nothing to compare with
    (run_dir / "adapter" / "studio.json").write_text(
        json.dumps({"name": "bench", "base_model": settings.base_model})
    )
    adapter = adapters.get(settings, "bench")
    kb = KnowledgeStore(settings, load_embeddings(settings)).create("Handbook")
    list(ingest(kb, [UploadedFile("handbook.txt", handbook())], ChunkSettings(800, 100)))
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=args.tokens)

    def timed(model, batch: int) -> tuple[float, Report]:
        report = runner.new_report(settings, chat, questions, adapter=adapter, kb=kb, params=params)
        start = time.perf_counter()
        runner.run(settings, model, report, kb, batch=batch)
        assert report.state == "completed", report.error
        return time.perf_counter() - start, report

    timed(chat, 1)  # warm-up: adapter loaded, kernels and caches ready
    seconds: dict[str, float] = {}
    reports = {}
    for batch in (1, runner.QUESTIONS_PER_BATCH, 4):
        seconds[f"ours_{batch}_per_batch_s"], reports[batch] = timed(chat, batch)
    seconds["one_by_one_s"], one_by_one = timed(OneByOne(chat), 1)
    ours = seconds[f"ours_{runner.QUESTIONS_PER_BATCH}_per_batch_s"]
    batched = reports[runner.QUESTIONS_PER_BATCH].results
    same = sum(
        a.answers[m].text == b.answers[m].text
        for a, b in zip(batched, one_by_one.results, strict=True)
        for m in a.answers
    )
    tokens = sum(a.new_tokens for r in one_by_one.results for a in r.answers.values())
    print(
        json.dumps(
            {
                **{k: round(v, 2) for k, v in seconds.items()},
                "answers": len(questions) * 4,
                "tokens": tokens,
                "same_answers": same,  # of the 24, word for word
                "right": {
                    m: s.correct
                    for m, s in results.summarise(reports[runner.QUESTIONS_PER_BATCH]).items()
                },
                "ratio": round(seconds["one_by_one_s"] / ours, 2),
                "target": 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
