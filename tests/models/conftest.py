"""A real chat-completions server on 127.0.0.1 for the endpoint backend's tests.

It answers deterministically from the messages and seed, reports usage, optionally returns
log-probabilities, and plays a script of faults (one per request, in order) before answering
normally. Every request is recorded, and it counts how many were in flight at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass(frozen=True)
class Fault:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang_s: float = 0.0  # > 0: answer nothing for this long, then drop the connection


@dataclass(frozen=True)
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    @staticmethod
    def completion_text(messages: list[dict[str, str]], seed: int | None) -> str:
        """What the server answers for these messages and seed (no fault, no canned answer)."""
        payload = json.dumps([messages, seed], sort_keys=True).encode()
        return f"sample {hashlib.sha256(payload).hexdigest()[:12]}"

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        # Canned answers by user message (for choose_option); others get completion_text.
        self.answers: dict[str, str] = {}
        # Top log-probabilities by user message; None: the server never returns logprobs.
        self.top_logprobs: dict[str, list[tuple[str, float]]] | None = None
        self.delay_s = 0.0  # added to every normal answer
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self.released = threading.Event()  # set at teardown to end hanging handlers
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # A short poll interval keeps shutdown (teardown) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def fail(self, status: int, retry_after: str | None = None, body: bytes = b"") -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.faults.append(Fault(status=status, headers=headers, body=body))

    def hang(self, seconds: float) -> None:
        self.faults.append(Fault(hang_s=seconds))

    def garbage(self, body: bytes) -> None:
        self.faults.append(Fault(status=200, body=body))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        user = messages[-1]["content"]
        text = self.answers.get(user, self.completion_text(messages, body.get("seed")))
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and self.top_logprobs is not None:
            top = [{"token": t, "logprob": lp} for t, lp in self.top_logprobs.get(user, [])]
            first = top[0] if top else {"token": "", "logprob": 0.0}
            choice["logprobs"] = {"content": [{**first, "top_logprobs": top}]}
        prompt_words = sum(len(m["content"].split()) for m in messages)
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": len(text.split()),
                "total_tokens": prompt_words + len(text.split()),
            },
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with server._lock:
                    server.requests.append(Recorded(dict(self.headers), body))
                    fault = server.faults.popleft() if server.faults else None
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    self._respond(body, fault)
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _respond(self, body: dict[str, Any], fault: Fault | None) -> None:
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}', {})
                elif fault is not None and fault.hang_s > 0:
                    server.released.wait(fault.hang_s)
                    self.close_connection = True
                elif fault is not None:
                    self._send(fault.status, fault.body, fault.headers)
                else:
                    server.released.wait(server.delay_s)
                    self._send(200, json.dumps(server._answer(body)).encode(), {})

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    server.start()
    yield server
    server.stop()
