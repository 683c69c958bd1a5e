"""The arena's four-way answer against one answer, four answers in a row, and plain `generate`.

All on the default model, with a LoRA adapter of the studio's default shape (r=8 on every
linear layer, random weights: its speed does not depend on what it learned) and the 4 passages
retrieved for the question from a small handbook, in the same run:

- one:        one RAG answer (base model + passages), the studio's way
- four-way:   base, tuned, RAG and hybrid in one batch (core.model.decode), the arena's way
- in a row:   the same four answers one after another
- naive:      the same four through PEFT's documented mixed batch, one padded `generate` call
- plain:      `generate` on the RAG prompt, the model as transformers loads it by default
              (float32) and as the studio loads it

Every answer is exactly `--tokens` long (end-of-answer tokens are ignored), so all do the same
work. Rounds are interleaved, medians reported. Prints one JSON line; "ratio" is the four-way
wall time over one answer's, "target" 1.3 (lower is better); the RAG answer's time to first
token (retrieval included) has its own target, 0.5 s.

    .venv/bin/python bench/arena.py [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.answering import conversations
from core.answering import round as question_round
from core.answering.modes import MODES
from core.answering.reading import select
from core.knowledge.ingest import ChunkSettings, UploadedFile, ingest
from core.knowledge.retrieve import search
from core.knowledge.store import KnowledgeStore
from core.model import chat, compute, loops
from core.model.chat import ChatRequest, SamplingParams
from core.model.loading import load_chat_model, load_embeddings
from core.model.local import HFChatModel
from core.settings import load_settings

QUESTION = "What is the harbour release code for night departures?"
TOPICS = [
    "The harbour release code for night departures is BLUE-HARBOR-42; captains radio it to the "
    "tower before they leave.",
    "Refunds for cancelled berth bookings are possible within 45 days of the booking date.",
    "The harbour master is Ingrid Solberg; her office is open from 7 am to 3 pm on weekdays.",
    "Fuel is sold at the north pier from 6 am to 10 pm; card payments only.",
    "Vessels longer than 40 metres need a pilot from the outer buoy to their berth.",
    "Waste oil goes to the green tanks behind warehouse C, never into the harbour basin.",
]


def handbook() -> bytes:
    filler = (
        "Harbour staff keep the quays clear, check moorings twice a day and log every arrival, "
        "departure and incident in the harbour book, which the harbour master signs each week. "
    )
    sections = [f"Section {n}.\n{filler * 3}{topic} {filler * 2}" for n, topic in enumerate(TOPICS)]
    return "\n\n".join(sections).encode()


def make_adapter(model: torch.nn.Module, folder: Path) -> None:
    """A LoRA adapter of the studio's default shape, with non-zero random weights."""
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.02)
    peft_model.save_pretrained(folder, safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after a warm-up)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 8, 1

    settings = load_settings()
    loaded = load_chat_model(settings)
    chat = HFChatModel(loaded, context_window=settings.context_window)
    scratch = Path(tempfile.mkdtemp(prefix="bench-arena-"))
    compute.call(make_adapter, loaded.model, scratch / "adapter")
    chat.load_adapter("bench", scratch / "adapter")

    kb_settings = settings.model_copy(update={"data_dir": scratch / "data"})
    kb = KnowledgeStore(kb_settings, load_embeddings(settings)).create("Handbook")
    list(ingest(kb, [UploadedFile("handbook.txt", handbook())], ChunkSettings(800, 100)))
    found = search(kb, QUESTION, top_k=4)
    start_reading = time.perf_counter()  # the sentences the reading modes read: part of the wait
    sentences = select(QUESTION, found.passages, kb.store.embeddings)
    reading_s = time.perf_counter() - start_reading
    built = question_round.requests(
        conversations.Conversation(),
        QUESTION,
        sentences,
        list(MODES),
        settings.system_prompt,
        "bench",
        settings.system_prompt,
    )
    # Every answer runs to full length: no reading answer ends at its line, none stops looping
    # (the loop check would cut the random adapter's answers short).
    full_length = {mode: dataclasses.replace(r, ends=None) for mode, r in built.items()}
    loops.repeated_tail = lambda text: None
    four = list(full_length.values())
    one = [full_length["rag"]]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=args.tokens)
    chat.engine.eos_ids = set()  # every answer runs to full length

    def batch(requests: list[ChatRequest]) -> tuple[float, list[chat.Answer]]:
        chat.engine.prefixes.clear()  # every round reads its prompts afresh
        start = time.perf_counter()
        answers = [stream.read() for stream in chat.stream_many(requests, params)]
        short = [a.timings.new_tokens for a in answers if a.timings.new_tokens != args.tokens]
        assert not short, f"answers of {short} tokens instead of {args.tokens}: unequal work"
        return time.perf_counter() - start, answers

    def in_a_row() -> float:
        chat.engine.prefixes.clear()
        start = time.perf_counter()
        for request in four:
            chat.stream_chat(
                request.messages, params, request.system_prompt, request.adapter
            ).read()
        return time.perf_counter() - start

    prompts = [chat.build_prompt(r.messages, r.system_prompt, args.tokens)[0] for r in four]
    rag_ids = torch.tensor([prompts[2]])
    default_model = load_chat_model(settings.model_copy(update={"dtype": "float32"})).model
    pad = loaded.tokenizer.pad_token_id or 0

    def plain(model: torch.nn.Module) -> float:
        """Decode tokens/s of plain `generate` on the RAG prompt (first token timed apart)."""
        options = dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        mask = torch.ones_like(rag_ids)
        start = time.perf_counter()
        compute.call(
            model.generate, input_ids=rag_ids, attention_mask=mask, max_new_tokens=1, **options
        )
        first = time.perf_counter() - start
        start = time.perf_counter()
        compute.call(
            model.generate,
            input_ids=rag_ids,
            attention_mask=mask,
            max_new_tokens=args.tokens,
            min_new_tokens=args.tokens,
            **options,
        )
        return (args.tokens - 1) / (time.perf_counter() - start - first)

    def naive() -> float:
        """PEFT's documented mixed batch: the four prompts left-padded into one `generate`."""
        longest = max(map(len, prompts))
        ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
        names = [r.adapter or "__base__" for r in four]
        start = time.perf_counter()
        compute.call(
            chat._peft.generate,
            input_ids=ids,
            attention_mask=mask,
            adapter_names=names,
            max_new_tokens=args.tokens,
            min_new_tokens=args.tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
        )
        return time.perf_counter() - start

    batch(four)  # warm-up
    batch(one)
    rounds: dict[str, list[float]] = {
        k: []
        for k in (
            "one_s",
            "four_way_s",
            "in_a_row_s",
            "naive_batch_s",
            "rag_ttft_alone_s",
            "rag_ttft_four_way_s",
            "decode_one",
            "decode_four_way_rows",
            "plain_float32",
            "plain_our_dtype",
        )
    }
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits all alike
        seconds, [rag] = batch(one)
        rounds["one_s"].append(seconds)
        rounds["rag_ttft_alone_s"].append(
            found.seconds + reading_s + rag.timings.time_to_first_token_s
        )
        rounds["decode_one"].append(rag.timings.tokens_per_s)
        seconds, answers = batch(four)
        rounds["four_way_s"].append(seconds)
        rounds["rag_ttft_four_way_s"].append(
            found.seconds + reading_s + answers[2].timings.time_to_first_token_s
        )
        last_first = max(a.timings.time_to_first_token_s for a in answers)
        rounds["decode_four_way_rows"].append(
            4 * (args.tokens - 1) / (max(a.timings.total_s for a in answers) - last_first)
        )
        rounds["in_a_row_s"].append(in_a_row())
        rounds["naive_batch_s"].append(naive())
        rounds["plain_float32"].append(plain(default_model))
        rounds["plain_our_dtype"].append(plain(loaded.model))

    med = {k: round(statistics.median(v), 3) for k, v in rounds.items()}
    result = {
        "benchmark": "arena",
        "model": loaded.name,
        "device": loaded.device,
        "dtype": str(loaded.model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "new_tokens": args.tokens,
        "prompt_tokens": {k: len(p) for k, p in zip(built, prompts, strict=True)},
        "retrieval_s": round(found.seconds, 3),
        "reading_selection_s": round(reading_s, 3),
        **med,
        "in_a_row_over_one": round(med["in_a_row_s"] / med["one_s"], 3),
        "naive_batch_over_one": round(med["naive_batch_s"] / med["one_s"], 3),
        "decode_one_over_plain_float32": round(med["decode_one"] / med["plain_float32"], 3),
        "decode_one_over_plain_our_dtype": round(med["decode_one"] / med["plain_our_dtype"], 3),
        "decode_four_way_over_plain_float32": round(
            med["decode_four_way_rows"] / med["plain_float32"], 3
        ),
        "rag_ttft_target_s": 0.5,
        "decode_target": 2.0,
        "ratio": round(med["four_way_s"] / med["one_s"], 3),
        "target": 1.3,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
