"""Our streamed generation path against plain `model.generate`, same model, prompt and settings.

"Plain" is what a user gets from transformers' defaults: the model loaded in float32 and
`model.generate`. "Ours" is the studio's path: the model loaded as the studio loads it (bfloat16 on
CPUs that compute it natively), decoding through packed weights (core.model.weights) and
streamed. A third run, plain `generate` on our loaded model in its own number format, shows what
the studio's decoder adds. Where `make bench-peers` has installed llama-cpp-python (in
.venv-peers), llama.cpp decodes the same GGUF file from the same prompt, and its figures are
printed beside ours.

Prints one JSON line: decode tokens/s and time to first token of each, "ratio" (ours over plain
float32 `generate`, decode tokens/s) and "target" (5.6: what llama.cpp reached against plain
`generate` on the machine where the target was set).

    .venv/bin/python bench/generate.py [--tokens 96] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.model import compute, loading
from core.model.chat import SamplingParams
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.settings import load_settings

QUESTION = "Write a long story about a lighthouse keeper who finds a message in a bottle."


ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"  # `make bench-peers`

# A second torch process computing on every core until it is killed.
BUSY = "import torch\nx = torch.randn(768, 768)\nprint('busy', flush=True)\nwhile True:\n    x @ x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per answer")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds on tiny inputs, the same code path (the test command runs it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.rounds = 8, 1

    threads = torch.get_num_threads()
    settings = load_settings()
    loaded = load_chat_model(settings)
    default_model = load_chat_model(settings.model_copy(update={"dtype": "float32"})).model
    chat = HFChatModel(loaded)
    messages = [{"role": "user", "content": QUESTION}]
    params = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=args.tokens)
    ids, _, _ = chat.build_prompt(messages, settings.system_prompt, args.tokens)
    input_ids = torch.tensor([ids], device=loaded.model.device)
    plain_kwargs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "pad_token_id": loaded.tokenizer.pad_token_id,
    }

    def plain(model: torch.nn.Module) -> tuple[float, float, int]:
        """Time to first token from a one-token generate; then the whole answer."""
        # On the torch thread, like the studio's own generation (see core/model/compute.py).
        start = time.perf_counter()
        compute.call(model.generate, **plain_kwargs, max_new_tokens=1)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = compute.call(model.generate, **plain_kwargs, max_new_tokens=args.tokens)
        total = time.perf_counter() - start
        new = out.shape[1] - input_ids.shape[1]
        return first, (new - 1) / (total - first), new

    def ours() -> tuple[float, float, int]:
        chat.engine.prefixes.clear()  # the prompt is read afresh, as plain `generate` reads it
        timings = chat.stream_chat(messages, params, settings.system_prompt).read().timings
        return timings.time_to_first_token_s, timings.tokens_per_s, timings.new_tokens

    plain(default_model)
    plain(loaded.model)
    ours()  # warm-up: first calls allocate and tune kernels
    plain_runs, same_runs, our_runs = [], [], []
    for _ in range(args.rounds):  # interleaved, so drift on a noisy machine hits all alike
        plain_runs.append(plain(default_model))
        same_runs.append(plain(loaded.model))
        our_runs.append(ours())

    # Beside a second torch process that keeps the cores busy (a fine-tune, another studio): the
    # studio should slow down in proportion to the cores it lost, not many times over.
    busy = subprocess.Popen([sys.executable, "-u", "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "busy"
        busy_runs = [ours() for _ in range(args.rounds)]
    finally:
        busy.kill()
        busy.wait(timeout=30)
    peer = llama_cpp(settings.base_model, ids, args.tokens, args.rounds, threads)

    def summary(runs: list[tuple[float, float, int]]) -> dict[str, float]:
        return {
            "ttft_s": round(statistics.median(r[0] for r in runs), 4),
            "decode_tokens_per_s": round(statistics.median(r[1] for r in runs), 2),
            "new_tokens": statistics.median(r[2] for r in runs),
        }

    plain_stats, same_stats, our_stats = summary(plain_runs), summary(same_runs), summary(our_runs)
    busy_stats = summary(busy_runs)
    decode = "decode_tokens_per_s"
    result = {
        "benchmark": "generate",
        "model": loaded.name,
        "device": loaded.device,
        "our_dtype": str(loaded.model.dtype).removeprefix("torch."),
        "threads": threads,
        "weights": chat.decoding.info.text or "as loaded",
        "prompt_tokens": len(ids),
        "ours": our_stats,
        "plain_generate_float32": plain_stats,
        "plain_generate_our_dtype": same_stats,
        "ours_beside_a_busy_process": busy_stats,
        "busy_slowdown": round(our_stats[decode] / busy_stats[decode], 2),
        "busy_slowdown_target": 2.5,
        "wrapper_ratio_same_dtype": round(our_stats[decode] / same_stats[decode], 3),
        "ttft_ratio_plain_over_ours": round(plain_stats["ttft_s"] / our_stats["ttft_s"], 3),
        "llama_cpp": peer,
        "ours_over_llama_cpp": (
            round(our_stats[decode] / peer[decode], 3) if decode in peer else None
        ),
        "llama_cpp_over_plain": (
            round(peer[decode] / plain_stats[decode], 3) if decode in peer else None
        ),
        "peak_rss_mb": peak_rss_mb(),
        "ratio": round(our_stats[decode] / plain_stats[decode], 3),
        "target": 5.6,
    }
    print(json.dumps(result))


def llama_cpp(
    spec: str, ids: list[int], tokens: int, rounds: int, threads: int
) -> dict[str, object]:
    """llama.cpp's figures on the GGUF file of an embedded model, or why there are none."""
    if not spec.startswith("embedded:") or not loading.EMBEDDED_MODELS[spec][1].endswith(".gguf"):
        return {"skipped": "the model is not a GGUF file"}
    if not PEERS_PYTHON.exists():
        return {"skipped": "llama-cpp-python is not installed: run `make bench-peers`"}
    job = {
        "gguf": str(loading.embedded_path(spec)),
        "ids": ids,
        "tokens": tokens,
        "rounds": rounds,
        "threads": threads,
    }
    for prompt_batch in (None, 1):  # see bench/peers/llama_cpp_decode.py
        done = subprocess.run(
            [str(PEERS_PYTHON), str(ROOT / "bench" / "peers" / "llama_cpp_decode.py")],
            input=json.dumps({**job, "prompt_batch": prompt_batch}),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode == 0:
            figures = dict(json.loads(done.stdout.strip().splitlines()[-1]))
            if prompt_batch == 1:
                figures["note"] = "prompt read a token at a time (its AMX kernel crashed)"
            return figures
    return {"skipped": f"llama.cpp failed (exit {done.returncode}): {done.stderr.strip()[-200:]}"}


def peak_rss_mb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


if __name__ == "__main__":
    main()
