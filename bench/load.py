"""The studio under load: visitors ask the arena at the same moment, alone, four, eight, and
four while a fine-tune runs.

The studio is started the README's way (`streamlit run app.py`) on a scratch data folder that
shares the prepared default model, with a knowledge base (a small handbook) and an adapter of the
default shape. Chromium sessions (Playwright) each ask the same questions in the arena (all four
modes), all at the same time:

- alone:    one visitor
- four:     `--sessions` visitors (4) with nothing else running
- eight:    twice as many
- training: `--sessions` visitors while a fine-tune runs in its worker process, started the
            Fine-tune page's way

The visitors' browsers run at idle priority (`chrt --idle`): they stand for people on their own
computers, so they get only what CPU the studio leaves over (on two cores, eight browsers at
normal priority took a large share of the CPU the answers were computed with).

Every answer must arrive (all four modes, no error on the page), and the training's step must
keep moving while the sessions ask. Prints one JSON line: per phase the median and worst time
from pressing Enter to the last of the four answers, and the answers' tokens per second over the
phase (what the engine delivered to everyone together); the studio's peak memory; the training
steps made during the training phase and its longest stall. "ratio": the worst time of four
visitors at once over one visitor alone (target 1.5: the shared engine answers them together;
one after another it would be 4). "training_ratio": median with training over median with four
visitors (target 2.0: sharing two cores with a training run may at most halve the speed).

With `--vllm` (a real vLLM server, its CPU build, started here on the default model with
LoRA enabled) or `--engine-url` (an OpenAI-compatible server of yours; the README's "Scaling
out" says how), the alone, four and eight phases run first with the studio pointed at it, and
its figures are printed beside the embedded engine's.

    .venv/bin/python bench/load.py [--sessions 4] [--questions 2] [--tokens 32]
                                   [--vllm | --engine-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.arena import handbook, make_adapter
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.store import KnowledgeStore
from core.model.loading import load_chat_model, load_embeddings, prepare_model
from core.settings import load_settings
from core.training import jobs, run_folder
from core.training.config import PRESETS
from core.training.datasets import parse_dataset
from tests.e2e.conftest import CHROMIUM_ARGS, chromium, start_studio

ROOT = Path(__file__).resolve().parents[1]
SERVED_PATIENCE_S = 180
QUESTIONS = [
    "What is the harbour release code for night departures?",
    "Within how many days are cancelled berth bookings refunded?",
    "Who is the harbour master?",
    "Where is fuel sold?",
]


async def session(browser, url: str, questions: list[str], found: dict, patience_ms: int) -> None:  # type: ignore[no-untyped-def]
    """One visitor: opens the arena, asks each question, waits for all four answers."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    await page.goto(f"{url}/arena")
    box = page.get_by_test_id("stChatInputTextArea")
    await box.wait_for(timeout=600_000)
    for asked, question in enumerate(questions, 1):
        await box.fill(question)
        start = time.perf_counter()
        await box.press("Enter")
        # Each finished answer shows its timings ("First token …"): four per question.
        await page.wait_for_function(
            "n => document.body.innerText.split('First token').length - 1 >= n",
            arg=4 * asked,
            timeout=patience_ms,
        )
        found["seconds"].append(time.perf_counter() - start)
        print(f"  answered in {found['seconds'][-1]:.1f} s", file=sys.stderr, flush=True)
    text = await page.inner_text("body")
    found["tokens"] += sum(int(n) for n in re.findall(r"· (\d+) tokens\b", text))
    found["errors"] += await page.get_by_test_id("stException").count()
    found["errors"] += await page.get_by_test_id("stAlertContentError").count()
    await context.close()


def idle_chromium(folder: Path) -> str:
    """A Chromium that runs only when the studio leaves a core idle (Linux's SCHED_IDLE, which
    its children inherit). The visitors' browsers stand for people on their own computers: on the
    studio's two cores at normal priority, eight of them rendering streamed answers took a large
    share of the CPU the answers were computed with. Plain Chromium where `chrt` is missing."""
    browser = chromium() or "chromium"
    chrt = shutil.which("chrt")
    if chrt is None:
        return browser
    wrapper = folder / "idle-chromium"
    wrapper.write_text(f'#!/bin/sh\nexec {chrt} --idle 0 {browser} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


async def ask_all(
    url: str, browser_path: str, sessions: int, questions: list[str], patience_ms: int = 600_000
) -> dict:
    from playwright.async_api import async_playwright

    found: dict = {"seconds": [], "errors": 0, "tokens": 0}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        start = time.perf_counter()
        await asyncio.gather(
            *(session(browser, url, questions, found, patience_ms) for _ in range(sessions))
        )
        found["wall_s"] = time.perf_counter() - start
        await browser.close()
    found["answers"] = len(found["seconds"]) * 4
    return found


def watch_steps(run_dir: Path, stop: threading.Event, seen: list[tuple[float, int]]) -> None:
    while not stop.wait(0.5):
        seen.append((time.monotonic(), jobs.read(run_dir).step))


def summary(found: dict) -> dict:
    return {
        "median_s": round(statistics.median(found["seconds"]), 2),
        "worst_s": round(max(found["seconds"]), 2),
        "tokens_per_s": round(found["tokens"] / found["wall_s"], 1),
        "answers": found["answers"],
        "errors": found["errors"],
    }


def peak_memory_mb(pid: int) -> float:
    """The studio process's peak resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def visitors(
    url: str,
    browser_path: str,
    sessions: int,
    questions: list[str],
    patience_ms: int = 600_000,
    phases: dict[str, dict] | None = None,
) -> dict[str, dict]:
    """One visitor, `sessions` and twice as many, each asking at the same moment; into `phases`
    as each is measured."""
    # The warm-up: models loaded, the adapter attached.
    asyncio.run(ask_all(url, browser_path, 1, questions[:1], patience_ms))
    phases = {} if phases is None else phases
    for name, count in (("alone", 1), ("four", sessions), ("eight", 2 * sessions)):
        print(f"{name}: {count} visitors", file=sys.stderr, flush=True)
        phases[name] = asyncio.run(ask_all(url, browser_path, count, questions, patience_ms))
        assert phases[name]["answers"] == count * len(questions) * 4, (name, phases[name])
        assert phases[name]["errors"] == 0, (name, phases[name])
    return phases


def served_visitors(url: str, browser_path: str, sessions: int, questions: list[str]) -> dict:
    """The same visitors against a serving engine: each phase's figures, or where it stalled. An
    answer that takes longer than SERVED_PATIENCE_S ends the served phases, and the studio's own
    phases are still measured (vLLM's CPU build started with a --max-lora-rank far above the
    adapter's took minutes per prompt: see tests/support/vllm_server.py)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    found: dict[str, dict] = {}
    stalled = {}
    try:
        visitors(url, browser_path, sessions, questions, SERVED_PATIENCE_S * 1000, found)
    except PlaywrightTimeout:
        stalled = {
            "stalled": f"after {len(found)} phases: an answer took over {SERVED_PATIENCE_S} s"
        }
    return {**{name: summary(phase) for name, phase in found.items()}, **stalled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--questions", type=int, default=2, help="questions per session")
    parser.add_argument("--tokens", type=int, default=32, help="longest answer, in tokens")
    parser.add_argument(
        "--engine-url",
        help="an OpenAI-compatible server (vLLM) to measure the same visitors against",
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="start a real vLLM server (its CPU build, in its own cached environment) on the "
        "default model with LoRA, and measure the same visitors against it",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.questions, args.tokens = 2, 1, 4
    questions = QUESTIONS[: args.questions]

    scratch = Path(tempfile.mkdtemp(prefix="bench-load-"))
    print(f"logs in {scratch}", file=sys.stderr, flush=True)
    browser_path = idle_chromium(scratch)
    shared = load_settings()
    settings = shared.model_copy(
        update={"data_dir": scratch / "data", "model_cache_dir": shared.models_dir.resolve()}
    )
    # The studio's content: a knowledge base and a finished adapter of the default shape.
    run_dir = jobs.runs_dir(settings) / "bench"
    make_adapter(load_chat_model(settings).model, run_dir / run_folder.ADAPTER_DIR)
    (run_dir / "config.json").write_text("{}")
    (run_dir / run_folder.ADAPTER_DIR / "studio.json").write_text(
        json.dumps({"name": "Harbour voice", "base_model": settings.base_model})
    )
    kb = KnowledgeStore(settings, load_embeddings(settings)).create("Handbook")
    list(ingest(kb, [UploadedFile("handbook.txt", handbook())], ChunkSettings(800, 100)))

    environment = {
        "LRS_MODEL_CACHE_DIR": str(settings.model_cache_dir),
        "LRS_TEMPERATURE": "0",
        "LRS_MAX_NEW_TOKENS": str(args.tokens),
    }
    # The serving engine first, while nothing else runs beside it: no training worker still
    # stopping, no studio still holding the embedded model.
    served = None
    server = None
    if args.vllm:
        from tests.support import vllm_server

        print("starting vLLM", file=sys.stderr, flush=True)
        model_dir = prepare_model(settings.base_model, settings)
        server = vllm_server.start(model_dir, scratch / "vllm.log")
        args.engine_url = server.url
    if args.engine_url:
        served_environment = {**environment, "LRS_ENGINE_URL": args.engine_url}
        if server is not None:
            served_environment["LRS_ENGINE_MODEL"] = server.model
        process, url = start_studio(settings.data_dir, scratch / "served.log", **served_environment)
        try:
            served = served_visitors(url, browser_path, args.sessions, questions)
            served_memory_mb = peak_memory_mb(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
            if server is not None:
                server.stop()
    process, url = start_studio(settings.data_dir, scratch / "streamlit.log", **environment)
    try:
        phases = visitors(url, browser_path, args.sessions, questions)
        quiet = phases["four"]

        # A fine-tune long enough to outlast the training phase, started as the page starts it.
        # The example dataset six times over: a quick-preset run of some 160 steps.
        rows = (ROOT / "assets" / "examples" / "persona.jsonl").read_bytes() * 6
        data = parse_dataset("persona.jsonl", rows)
        training_run = jobs.start(settings, data, PRESETS["quick"].config, name="Under load")
        status = jobs.read(training_run.folder)
        while status.state != "training" or status.step < 1:
            assert status.active, status
            time.sleep(0.5)
            status = jobs.read(training_run.folder)
        seen: list[tuple[float, int]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_steps, args=(training_run.folder, stop, seen))
        watcher.start()
        print(f"training phase (step {status.step})", file=sys.stderr, flush=True)
        busy = asyncio.run(ask_all(url, browser_path, args.sessions, questions))
        stop.set()
        watcher.join()
        still = jobs.read(training_run.folder)
        jobs.cancel(settings, training_run.run_id)
        memory_mb = peak_memory_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    log = (scratch / "streamlit.log").read_text()
    # When the step moved; the longest time between two moves is the training's worst stall.
    moved = [seen[0][0]]
    moved += [t for (_, before), (t, step) in itertools.pairwise(seen) if step > before]
    stall = max(b - a for a, b in itertools.pairwise([*moved, seen[-1][0]]))
    result = {
        "sessions": args.sessions,
        "questions_per_session": len(questions),
        "tokens": args.tokens,
        "embedded": {name: summary(found) for name, found in phases.items()},
        "peak_memory_mb": memory_mb,
        "training": {
            **summary(busy),
            "steps_made": seen[-1][1] - seen[0][1],
            "longest_stall_s": round(stall, 1),
            "state": still.state,
        },
        "tracebacks": log.count("Traceback"),
        "training_ratio": round(
            statistics.median(busy["seconds"]) / statistics.median(quiet["seconds"]), 2
        ),
        "training_target": 2.0,
        "ratio": round(max(quiet["seconds"]) / max(phases["alone"]["seconds"]), 2),
        "target": 1.5,
    }
    if served is not None:
        result["served"] = served
        result["served_peak_memory_mb"] = served_memory_mb
        if "four" in served:
            result["served_ratio"] = round(
                served["four"]["worst_s"] / served["alone"]["worst_s"], 2
            )
    expected = args.sessions * len(questions) * 4
    assert quiet["answers"] == busy["answers"] == expected, result
    assert quiet["errors"] == busy["errors"] == result["tracebacks"] == 0, result
    assert still.state == "training" and result["training"]["steps_made"] > 0, result
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
