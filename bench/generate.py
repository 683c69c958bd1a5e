"""Our streamed generation path against plain `model.generate`, same model, prompt and settings.

"Plain" is what a user gets from transformers' defaults: the model loaded in float32 and
`model.generate`. "Ours" is the studio's path: the model loaded as the studio loads it (bfloat16 on
CPUs that compute it natively) and streamed generation. A third run, plain `generate` on our
loaded model, shows what the streaming wrapper itself costs.

Prints one JSON line: decode tokens/s and time to first token of each, "ratio" (ours over plain,
decode tokens/s) and "target" (1.0).

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

from core.model import compute
from core.model.chat import SamplingParams
from core.model.loading import load_chat_model
from core.model.local import HFChatModel
from core.settings import load_settings

QUESTION = "Write a long story about a lighthouse keeper who finds a message in a bottle."


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
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(ids),
        "ours": our_stats,
        "plain_generate_float32": plain_stats,
        "plain_generate_our_dtype": same_stats,
        "ours_beside_a_busy_process": busy_stats,
        "busy_slowdown": round(our_stats[decode] / busy_stats[decode], 2),
        "busy_slowdown_target": 2.5,
        "wrapper_ratio_same_dtype": round(our_stats[decode] / same_stats[decode], 3),
        "ttft_ratio_plain_over_ours": round(plain_stats["ttft_s"] / our_stats["ttft_s"], 3),
        "ratio": round(our_stats[decode] / plain_stats[decode], 3),
        "target": 1.0,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
