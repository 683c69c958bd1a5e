"""Evaluations: every question answered in the four modes, scored, explained and saved.

An evaluation runs in a background thread of the app (its batches share the model with the arena
on the torch thread, core.model.compute), saves its report after every batch under
`data/evaluations/<id>.json`, and can be cancelled; a report whose run was cut short (cancelled,
or the app stopped) can be resumed from its first unanswered question.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.answering import round as question_round
from core.answering.modes import MODES, available
from core.errors import InvalidInputError, StudioError
from core.evaluation.questions import EvalItem, seen_in_training
from core.evaluation.results import (
    QuestionResult,
    Report,
    judge,
)
from core.files import atomic_write_json
from core.ids import check_id
from core.knowledge.store import KnowledgeBase
from core.model.chat import ChatModel, SamplingParams
from core.settings import Settings, check_writable
from core.training import adapters

log = logging.getLogger(__name__)
QUESTIONS_PER_BATCH = 2  # 2 questions x 4 modes = 8 answers decoded together


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
    modes = available(MODES, adapter is not None, kb is not None)
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
    """One batch: every question of `chunk` in every mode of the report, generated together
    (one question round each, core.answering.round)."""
    adapter = adapters.attach(chat, settings, report.adapter) if report.adapter else None
    exchanges = question_round.ask_many(
        chat,
        [item.question for item in chunk],
        report.modes,
        system_prompt=report.system_prompt,
        params=SamplingParams(**report.params),
        adapter=adapter,
        kb=kb,
        top_k=report.top_k,
        seed=0,
        background=True,
    )
    results = []
    for item, exchange in zip(chunk, exchanges, strict=True):
        result = judge(item, exchange.answers, exchange.passages if kb is not None else None)
        result.retrieval_s = exchange.retrieval_s
        results.append(result)
    return results
