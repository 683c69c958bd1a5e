"""A stand-in for an OpenAI-compatible serving engine (vLLM's API surface that the studio uses),
with switches for the ways a real one goes wrong. The real vLLM server is tested separately.

Answers are made of words that name the model asked and the prompt's length, so a test can tell
the base model from an adapter and check what the server received."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Behaviour:
    base: str = "served-base"
    max_model_len: int = 512
    api_key: str | None = None
    lora: bool = True  # runtime adapters allowed
    max_lora_rank: int = 64  # larger adapters are refused, in vLLM's words
    delay_s: float = 0.0  # before the first chunk
    garbage: bool = False  # an HTML page instead of JSON
    stop_after: int | None = None  # drop the connection after this many chunks
    words: int = 6
    chunk_text: str | None = None  # what every chunk says instead (a looping answer)
    pace_s: float = 0.0  # between two chunks
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path
    received: list[dict[str, Any]] = field(default_factory=list)
    disconnected: threading.Event = field(default_factory=threading.Event)


def _rank(folder: str) -> int:
    """The adapter's rank, from the PEFT config in its folder (0 for a folder this stand-in
    cannot see: it plays a server on another machine there)."""
    config = Path(folder) / "adapter_config.json"
    return int(json.loads(config.read_text())["r"]) if config.exists() else 0


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.behaviour.api_key
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": {"message": "Invalid API key", "code": 401}})
            return False
        return True

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path == "/v1/models":
            b = self.behaviour
            data = [{"id": b.base, "object": "model", "max_model_len": b.max_model_len}]
            data += [{"id": n, "object": "model", "parent": b.base} for n in b.adapters]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": {"message": "Not Found"}})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        b = self.behaviour
        if self.path == "/v1/load_lora_adapter":
            if not b.lora:
                self._json(404, {"detail": "Not Found"})
            elif body["lora_name"] in b.adapters:
                self._json(400, {"error": {"message": "The lora adapter has already been loaded."}})
            elif (rank := _rank(body["lora_path"])) > b.max_lora_rank:
                message = (
                    "Call to add_lora method failed: Worker failed with error 'LoRA rank "
                    f"{rank} is greater than max_lora_rank {b.max_lora_rank}.', please check the "
                    "stack trace above for the root cause"
                )
                self._json(500, {"error": {"message": message, "type": "InternalServerError"}})
            else:
                b.adapters[body["lora_name"]] = body["lora_path"]
                self._json(200, {"message": "Success"})
        elif self.path == "/v1/completions":
            self._complete(body)
        else:
            self._json(404, {"error": {"message": "Not Found"}})

    def _complete(self, body: dict[str, Any]) -> None:
        b = self.behaviour
        b.received.append(body)
        if body["model"] != b.base and body["model"] not in b.adapters:
            self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            return
        if b.garbage:
            page = b"<html><body>Welcome to nginx</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"data: " + page + b"\n\n")
            return
        time.sleep(b.delay_s)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        words = min(b.words, body.get("max_tokens") or b.words)
        try:
            for n in range(words):
                if b.stop_after is not None and n >= b.stop_after:
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the server went away mid-answer
                    return
                text = b.chunk_text or f"{body['model']}:{len(body['prompt'])}:{n} "
                finish = "length" if n == words - 1 else None
                chunk = {
                    "id": "c",
                    "object": "text_completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(b.pace_s)
            usage = {
                "id": "c",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": [],
                "usage": {
                    "prompt_tokens": len(body["prompt"]),
                    "completion_tokens": words,
                    "total_tokens": len(body["prompt"]) + words,
                },
            }
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            b.disconnected.set()


@contextmanager
def serving(behaviour: Behaviour | None = None) -> Iterator[tuple[str, Behaviour]]:
    """A server on a free port for the block: its /v1 address and its switches."""
    behaviour = behaviour or Behaviour()
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
