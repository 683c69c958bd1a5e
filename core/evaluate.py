"""Evaluations: every question answered in the four modes, scored, explained and saved.

An evaluation runs in a background thread of the app (its batches share the model with the arena
on the torch thread, core.compute), saves its report after every batch under
`data/evaluations/<id>.json`, and can be cancelled; a report whose run was cut short (cancelled,
or the app stopped) can be resumed from its first unanswered question.
"""

from __future__ import annotations

import json
import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import adapters, arena
from core.arena import MODES, Conversation, ModeAnswer
from core.errors import InvalidInputError, StudioError
from core.evalset import EvalItem, seen_in_training
from core.generate import ChatModel, SamplingParams
from core.ids import check_id, new_id
from core.knowledge import KnowledgeBase
from core.metrics import Interval, bootstrap_mean, contains, score
from core.retrieve import search
from core.runs import atomic_write_json
from core.settings import Settings, check_writable
from core.typed import parse

log = logging.getLogger(__name__)
QUESTIONS_PER_BATCH = 2  # 2 questions x 4 modes = 8 answers decoded together

# key -> (short mark for tables, plain sentence)
REASONS = {
    "not_retrieved": (
        "not retrieved",
        "Not retrieved: the passages found did not contain the answer.",
    ),
    "not_used": (
        "retrieved but not used",
        "Retrieved but not used: the answer was in the passages, the model missed it.",
    ),
    "not_learned": ("not learned", "Not learned by the adapter."),
    "forgotten": ("forgotten", "The adapter lost what the base model knew."),
    "base_knew": ("already knew it", "The base model already knew it."),
    "base_missed": ("did not know it", "The base model did not know it."),
}


@dataclass
class QuestionResult:
    question: str
    reference: str
    accepted: list[str]
    origin: str
    passages: list[dict[str, Any]]
    retrieval_s: float
    retrieval_hit: bool | None  # None when there is no knowledge base
    answers: dict[str, ModeAnswer]
    scores: dict[str, dict[str, Any]]  # mode -> exact, f1, contained, correct
    reasons: dict[str, str]  # mode -> key of REASONS

    def correct(self, mode: str) -> bool:
        return bool(self.scores.get(mode, {}).get("correct"))


@dataclass
class Report:
    id: str = field(default_factory=new_id)
    name: str = ""
    created: float = field(default_factory=time.time)
    model: str = ""
    adapter: str = ""  # run id
    adapter_name: str = ""
    knowledge_base: str = ""
    modes: list[str] = field(default_factory=list)
    source: str = ""  # where the questions came from, in words
    params: dict[str, Any] = field(default_factory=dict)
    top_k: int = 4
    system_prompt: str = ""
    items: list[EvalItem] = field(default_factory=list)
    results: list[QuestionResult] = field(default_factory=list)  # in item order, as answered
    seen_in_training: list[int] = field(default_factory=list)  # item indices
    costs: dict[str, Any] = field(default_factory=dict)
    state: str = "running"  # running, completed, cancelled, failed (interrupted: see `status`)
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    elapsed_s: float = 0.0  # time spent answering, over every resumed run
    freshness: dict[str, Any] | None = None

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def total(self) -> int:
        return len(self.items)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """A report read from disk or a bundle: every field type-checked, the id safe to become
        a file name."""
        report = parse(cls, data, "A saved evaluation report")
        check_id(report.id, "evaluation report")
        return report


# -- scoring ---------------------------------------------------------------------------------------
def judge(
    item: EvalItem, answers: dict[str, ModeAnswer], passages: Sequence[dict[str, Any]] | None
) -> QuestionResult:
    """Score each mode's answer and give a plain reason for each miss."""
    accepted = item.answers
    hit = None if passages is None else contains(" ".join(p["text"] for p in passages), accepted)
    scores: dict[str, dict[str, Any]] = {}
    for mode, answer in answers.items():
        marks = score(answer.text, accepted) if not answer.error else None
        scores[mode] = {
            "exact": bool(marks and marks.exact),
            "f1": marks.f1 if marks else 0.0,
            "contained": bool(marks and marks.contained),
            "correct": bool(marks and marks.correct),
        }
    base_right = scores.get("base", {}).get("correct")
    reasons: dict[str, str] = {}
    for mode in answers:
        right = scores[mode]["correct"]
        if mode == "base":
            reasons[mode] = "base_knew" if right else "base_missed"
        elif right:
            continue
        elif MODES[mode].uses_passages:
            reasons[mode] = "not_used" if hit else "not_retrieved"
        else:
            reasons[mode] = "forgotten" if base_right else "not_learned"
    return QuestionResult(
        question=item.question,
        reference=item.reference,
        accepted=list(item.accepted),
        origin=item.origin,
        passages=list(passages or []),
        retrieval_s=0.0,
        retrieval_hit=hit,
        answers=answers,
        scores=scores,
        reasons=reasons,
    )


@dataclass(frozen=True)
class ModeSummary:
    mode: str
    questions: int
    correct: int
    accuracy: Interval  # share of questions marked right
    f1: Interval
    exact: float
    contained: float
    hit_rate: Interval | None  # RAG and hybrid: share of questions whose answer was retrieved
    time_to_first_token_s: float  # medians over the questions
    total_s: float
    tokens: float  # mean answer length


def correctness(report: Report) -> dict[str, list[bool]]:
    """Per mode, right or wrong on every answered question (a failed answer counts as wrong)."""
    return {mode: [r.correct(mode) for r in report.results] for mode in report.modes}


def summarise(report: Report, seed: int = 0) -> dict[str, ModeSummary]:
    found = {}
    for mode in report.modes:
        results = [r for r in report.results if mode in r.scores]
        if not results:
            continue
        answers = [r.answers[mode] for r in results if not r.answers[mode].error]
        hits = [float(bool(r.retrieval_hit)) for r in results if r.retrieval_hit is not None]
        found[mode] = ModeSummary(
            mode=mode,
            questions=len(results),
            correct=sum(r.correct(mode) for r in results),
            accuracy=bootstrap_mean([float(r.correct(mode)) for r in results], seed),
            f1=bootstrap_mean([r.scores[mode]["f1"] for r in results], seed),
            exact=statistics.fmean(float(r.scores[mode]["exact"]) for r in results),
            contained=statistics.fmean(float(r.scores[mode]["contained"]) for r in results),
            hit_rate=bootstrap_mean(hits, seed) if MODES[mode].uses_passages and hits else None,
            time_to_first_token_s=_median([a.time_to_first_token_s for a in answers]),
            total_s=_median([a.total_s for a in answers]),
            tokens=statistics.fmean(a.new_tokens for a in answers) if answers else 0.0,
        )
    return found


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def new_report(
    settings: Settings,
    chat: ChatModel,
    items: Sequence[EvalItem],
    *,
    adapter: adapters.AdapterInfo | None,
    kb: KnowledgeBase | None,
    params: SamplingParams,
    source: str = "",
    name: str = "",
) -> Report:
    """A report ready to run: the modes that can answer, a snapshot of what each option
    costs, and which questions the adapter was trained on."""
    if not items:
        raise InvalidInputError("Add at least one question to evaluate.")
    modes = [
        m
        for m, mode in MODES.items()
        if (adapter is not None or not mode.uses_adapter)
        and (kb is not None or not mode.uses_passages)
    ]
    report = Report(
        name=name or time.strftime("Evaluation %Y-%m-%d %H:%M"),
        model=chat.name,
        modes=modes,
        source=source,
        params=asdict(params),
        top_k=settings.top_k,
        system_prompt=settings.system_prompt,
        items=list(items),
    )
    if adapter is not None:
        report.adapter, report.adapter_name = adapter.run_id, adapter.name
        report.costs.update(training_s=adapter.duration_s, adapter_bytes=adapter.size_bytes)
        try:
            report.seen_in_training = seen_in_training(items, settings, adapter.run_id)
        except InvalidInputError:
            report.seen_in_training = []  # no training data to compare with (an imported adapter)
    if kb is not None:
        documents = [d for d in kb.documents() if d.status == "complete"]
        report.knowledge_base = kb.name
        report.costs.update(
            kb_passages=kb.passage_count(),
            kb_documents=len(documents),
            kb_bytes=sum(d.size_bytes for d in documents),
        )
    return report


# -- storage ---------------------------------------------------------------------------------------
def reports_dir(settings: Settings) -> Path:
    return settings.data_dir / "evaluations"


def report_path(settings: Settings, report_id: str) -> Path:
    check_id(report_id, "evaluation report")
    return reports_dir(settings) / f"{report_id}.json"


def save(settings: Settings, report: Report) -> None:
    check_writable(settings, "Saving evaluations")
    path = report_path(settings, report.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, asdict(report))


def load(settings: Settings, report_id: str) -> Report:
    try:
        return Report.from_dict(json.loads(report_path(settings, report_id).read_text()))
    except (OSError, ValueError, TypeError, InvalidInputError) as error:
        raise InvalidInputError("That evaluation report cannot be opened.") from error


def list_reports(settings: Settings) -> list[Report]:
    """Every saved report, newest first; unreadable files are skipped."""
    found = []
    for path in reports_dir(settings).glob("*.json"):
        try:
            found.append(Report.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, InvalidInputError):
            continue
    return sorted(found, key=lambda r: -r.created)


def delete(settings: Settings, report_id: str) -> None:
    check_writable(settings, "Deleting evaluations")
    if is_running(report_id):
        raise InvalidInputError("This evaluation is still running: cancel it first.")
    report_path(settings, report_id).unlink(missing_ok=True)


def status(report: Report) -> str:
    """The report's state as the page shows it: a run that is no longer alive in this app (it
    was stopped or restarted) is 'interrupted'."""
    if report.state == "running" and not is_running(report.id):
        return "interrupted"
    return report.state


# -- running ---------------------------------------------------------------------------------------
@dataclass
class Job:
    report: Report
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


_jobs: dict[str, Job] = {}
_jobs_lock = threading.Lock()


def is_running(report_id: str) -> bool:
    with _jobs_lock:
        job = _jobs.get(report_id)
        return job is not None and job.alive


def running_report(report_id: str) -> Report | None:
    """The live report of a running evaluation (updated after every batch)."""
    with _jobs_lock:
        job = _jobs.get(report_id)
    return job.report if job is not None and job.alive else None


def cancel(report_id: str) -> None:
    with _jobs_lock:
        job = _jobs.get(report_id)
    if job is not None:
        job.cancel.set()


def start(
    settings: Settings,
    chat: ChatModel,
    report: Report,
    kb: KnowledgeBase | None,
    batch: int = QUESTIONS_PER_BATCH,
) -> Job:
    """Answer the report's remaining questions in the background; one evaluation at a time."""
    check_writable(settings, "Running evaluations")
    with _jobs_lock:
        if any(job.alive for job in _jobs.values()):
            raise InvalidInputError(
                "Another evaluation is running: wait for it to finish, or cancel it."
            )
        report.state, report.error, report.finished = "running", "", None
        save(settings, report)
        job = Job(report)
        job.thread = threading.Thread(
            target=_run, args=(job, settings, chat, kb, batch), name="evaluate", daemon=True
        )
        _jobs[report.id] = job
        job.thread.start()
    return job


def run(
    settings: Settings,
    chat: ChatModel,
    report: Report,
    kb: KnowledgeBase | None,
    batch: int = QUESTIONS_PER_BATCH,
) -> Report:
    """Answer every remaining question now, in this thread (tests, benchmarks)."""
    check_writable(settings, "Running evaluations")
    job = Job(report)
    _run(job, settings, chat, kb, batch)
    return report


def _run(
    job: Job, settings: Settings, chat: ChatModel, kb: KnowledgeBase | None, batch: int
) -> None:
    report = job.report
    began = time.perf_counter()
    spent_before = report.elapsed_s
    try:
        while report.done < report.total:
            if job.cancel.is_set():
                report.state = "cancelled"
                break
            chunk = report.items[report.done : report.done + batch]
            report.results.extend(answer_batch(settings, chat, report, kb, chunk))
            report.elapsed_s = round(spent_before + time.perf_counter() - began, 2)
            save(settings, report)
        else:
            report.state = "completed"
    except StudioError as error:
        report.state, report.error = "failed", str(error)
    except Exception:
        log.exception("evaluation %s failed", report.id)
        report.state = "failed"
        report.error = (
            "The evaluation stopped on an unexpected problem. The answers so far are kept: "
            "resume it, and if it stops again, report the log."
        )
    report.finished = time.time()
    report.elapsed_s = round(spent_before + time.perf_counter() - began, 2)
    save(settings, report)


def answer_batch(
    settings: Settings,
    chat: ChatModel,
    report: Report,
    kb: KnowledgeBase | None,
    chunk: Sequence[EvalItem],
) -> list[QuestionResult]:
    """One batch: every question of `chunk` in every mode, generated together."""
    adapter = adapters.attach(chat, settings, report.adapter) if report.adapter else None
    params = SamplingParams(**report.params)
    found: list[tuple[list[dict[str, Any]] | None, float]] = []
    flat = []
    for item in chunk:
        passages, seconds = [], 0.0
        if kb is not None:
            result = search(kb, item.question, report.top_k)
            passages, seconds = result.passages, result.seconds
        found.append((arena.passage_dicts(passages) if kb is not None else None, seconds))
        built = arena.requests(
            Conversation(),
            item.question,
            passages,
            report.modes,
            report.system_prompt,
            adapter.run_id if adapter else None,
            adapter.system_prompt if adapter else None,
        )
        flat.extend((mode, request) for mode, request in built.items())
    streams = chat.stream_many([request for _, request in flat], params, seed=0)
    answers = []
    for stream in streams:
        try:
            stream.read()
            answers.append(arena.record(stream))
        except StudioError as error:
            answers.append(arena.record(stream, str(error)))
    results = []
    per_item = len(flat) // len(chunk)
    for number, item in enumerate(chunk):
        rows = range(number * per_item, (number + 1) * per_item)
        passages, seconds = found[number]
        result = judge(item, {flat[i][0]: answers[i] for i in rows}, passages)
        result.retrieval_s = round(seconds, 3)
        results.append(result)
    return results
