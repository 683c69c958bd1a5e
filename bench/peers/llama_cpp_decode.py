"""llama.cpp's decode speed on a GGUF file, for bench/generate.py to print beside ours.

Runs in the peers' own environment (`make bench-peers` installs llama-cpp-python there; it has
no torch). Reads one JSON object on standard input: {"gguf", "ids", "tokens", "rounds",
"threads", "prompt_batch"}; prints one JSON line: median time to first token and decode
tokens/s, greedy. "prompt_batch": 1 reads the prompt a token at a time (on a CPU with AMX,
llama.cpp 0.3.36's AMX kernel crashed here on prompts read in batches).
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def main() -> None:
    from llama_cpp import Llama

    job = json.load(sys.stdin)
    ids, tokens = job["ids"], job["tokens"]
    llm = Llama(
        model_path=job["gguf"],
        n_ctx=len(ids) + tokens + 16,
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        verbose=False,
        **({"n_batch": 1, "n_ubatch": 1} if job.get("prompt_batch") == 1 else {}),
    )

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        first = start
        count = 0
        for _ in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count >= tokens:
                break
        end = time.perf_counter()
        return first - start, (count - 1) / (end - first)

    once()  # warm-up
    runs = [once() for _ in range(job["rounds"])]
    print(
        json.dumps(
            {
                "ttft_s": round(statistics.median(r[0] for r in runs), 4),
                "decode_tokens_per_s": round(statistics.median(r[1] for r in runs), 2),
                "version": __import__("llama_cpp").__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
