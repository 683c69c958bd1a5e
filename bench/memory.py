"""The studio's resident memory with everything a user keeps loaded, against a plain pipeline.

Both load the default chat model with one LoRA adapter of the studio's default shape attached,
the default search model and a knowledge base of `--passages` passages (10,000 by default, of
about 100 words each), then answer a RAG question (4 passages) and the same question with the
adapter. Ours: the studio's own code (core.model.local.HFChatModel, core.knowledge). Plain: the
tutorial recipe: transformers' defaults (float32), PEFT's `PeftModel.from_pretrained`,
LangChain's `HuggingFaceEmbeddings` and `Chroma.from_texts`, `generate`. Each runs in its own
process, so that each peak is its own.

Prints one JSON line: each side's peak and final resident memory (MB), "limit_mb" (1536: the
studio with all this must fit in 1.5 GB), "ratio" (our peak over the plain pipeline's) and
"target" (1.0).

    .venv/bin/python bench/memory.py [--passages 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "What is the harbour release code for night departures?"
FACT = "The harbour release code for night departures is BLUE-HARBOR-42."
LIMIT_MB = 1536
WORDS = [
    "harbour",
    "vessel",
    "berth",
    "pilot",
    "tide",
    "crane",
    "cargo",
    "ferry",
    "quay",
    "dock",
    "anchor",
    "buoy",
    "lighthouse",
    "captain",
    "crew",
    "manifest",
    "customs",
    "permit",
    "fuel",
    "pier",
    "warehouse",
    "container",
    "schedule",
    "weather",
    "storm",
    "fog",
    "signal",
    "radio",
    "tower",
    "channel",
    "depth",
    "draught",
    "tug",
    "mooring",
    "rope",
    "fender",
    "gangway",
    "inspection",
    "safety",
    "drill",
    "fire",
    "alarm",
    "waste",
    "oil",
    "tank",
    "pump",
    "ballast",
    "hull",
    "deck",
    "bridge",
    "engine",
]


def passages(count: int) -> list[str]:
    """`count` passages of about 100 words, one of them holding the answer."""
    pick = random.Random(7)
    texts = [
        " ".join(pick.choice(WORDS) for _ in range(100)).capitalize() + "." for _ in range(count)
    ]
    texts[count // 2] = f"{FACT} " + texts[count // 2]
    return texts


def memory_mb() -> dict[str, int]:
    """This process's peak and current resident memory (VmHWM, VmRSS), in MB."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            found[name] = int(value.split()[0]) // 1024
    return {"peak_mb": found["VmHWM"], "final_mb": found["VmRSS"]}


def ours(texts: list[str], adapter: Path, scratch: Path, tokens: int) -> dict[str, object]:
    from core.answering import conversations
    from core.answering import round as question_round
    from core.answering.reading import select
    from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
    from core.knowledge.retrieve import search
    from core.knowledge.store import KnowledgeStore
    from core.model.chat import SamplingParams
    from core.model.loading import load_chat_model, load_embeddings
    from core.model.local import HFChatModel
    from core.settings import load_settings

    # The model prepared once for this installation (the parent did it), as a studio finds it.
    shared = load_settings()
    settings = shared.model_copy(
        update={"data_dir": scratch / "data", "model_cache_dir": shared.models_dir}
    )
    chat = HFChatModel(load_chat_model(settings), context_window=settings.context_window)
    chat.load_adapter("bench", adapter)
    kb = KnowledgeStore(settings, load_embeddings(settings)).create("Handbook")
    files = [
        UploadedFile(f"part-{i}.txt", "\n\n".join(texts[i : i + 1000]).encode())
        for i in range(0, len(texts), 1000)
    ]
    start = time.perf_counter()
    list(ingest(kb, files, ChunkSettings(800, 0)))
    added = time.perf_counter() - start
    found = search(kb, QUESTION, top_k=4)
    sentences = select(QUESTION, found.passages, kb.store.embeddings)  # what RAG reads
    built = question_round.requests(
        conversations.Conversation(),
        QUESTION,
        sentences,
        ["rag", "hybrid"],
        settings.system_prompt,
        "bench",
        settings.system_prompt,
    )
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=tokens)
    answers = [stream.read() for stream in chat.stream_many(list(built.values()), params)]
    return {
        **memory_mb(),
        "add_s": round(added, 1),
        "retrieved_the_fact": any("BLUE-HARBOR-42" in p.text for p in found.passages),
        "answered": all(a.text for a in answers),
    }


def plain(texts: list[str], adapter: Path, scratch: Path, tokens: int) -> dict[str, object]:
    import torch
    from langchain_chroma import Chroma
    from langchain_huggingface import HuggingFaceEmbeddings
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.model import loading
    from core.settings import load_settings

    settings = load_settings()
    model_path = str(loading.prepare_model(settings.base_model, settings))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model = PeftModel.from_pretrained(model, str(adapter))
    embeddings = HuggingFaceEmbeddings(model_name=loading.embedding_model_path(settings))
    start = time.perf_counter()
    store = Chroma.from_texts(texts, embeddings, persist_directory=str(scratch / "chroma"))
    added = time.perf_counter() - start
    found = store.similarity_search(QUESTION, k=4)
    context = "\n\n".join(doc.page_content for doc in found)
    messages = [{"role": "user", "content": f"{context}\n\nQuestion: {QUESTION}"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=tokens, do_sample=False)
        with model.disable_adapter():
            model.generate(input_ids=ids, max_new_tokens=tokens, do_sample=False)
    return {
        **memory_mb(),
        "add_s": round(added, 1),
        "retrieved_the_fact": any("BLUE-HARBOR-42" in d.page_content for d in found),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    parser.add_argument("--role", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.passages, args.tokens = 200, 4

    if args.role:  # one side, in its own process
        scratch = Path(args.scratch)
        side = ours if args.role == "ours" else plain
        figures = side(passages(args.passages), scratch / "adapter", scratch, args.tokens)
        print(json.dumps(figures))
        return

    from core.model import loading
    from core.settings import load_settings

    settings = load_settings()
    model_path = str(loading.prepare_model(settings.base_model, settings))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        scratch = Path(folder)
        # bench/arena.py's adapter: the studio's default shape, random non-zero weights.
        from transformers import AutoModelForCausalLM

        from bench.arena import make_adapter

        make_adapter(AutoModelForCausalLM.from_pretrained(model_path), scratch / "adapter")
        for role in ("ours", "plain"):
            side = scratch / role
            side.mkdir()
            (side / "adapter").symlink_to(scratch / "adapter")
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    role,
                    "--scratch",
                    str(side),
                    "--passages",
                    str(args.passages),
                    "--tokens",
                    str(args.tokens),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            results[role] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "passages": args.passages,
                "ours": results["ours"],
                "plain": results["plain"],
                "limit_mb": LIMIT_MB,
                "within_limit": results["ours"]["peak_mb"] <= LIMIT_MB,
                "ratio": round(results["ours"]["peak_mb"] / results["plain"]["peak_mb"], 3),
                "target": 1.0,
            }
        )
    )


if __name__ == "__main__":
    main()
