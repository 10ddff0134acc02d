"""A real chat-completions server on 127.0.0.1 for the endpoint backend's tests.

It answers deterministically from the messages and seed, reports usage, optionally returns
log-probabilities, and plays a script of faults (one per request, in order) before answering
normally. `chaos` adds faults drawn per attempt: cut-off JSON, replies without `choices` or with
an empty body, 429 with Retry-After, 500, and replies slower than the client's timeout. Each is
drawn from a hash of (request, attempt number), so a run meets the same faults whatever the
threads' timing. Every request is recorded, and the server counts how many were in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fault:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang_s: float = 0.0  # > 0: answer nothing for this long, then drop the connection
    late_s: float = 0.0  # > 0: answer normally, but only after this long


@dataclass(frozen=True)
class Chaos:
    """Shares of attempts that meet each fault (the rest are answered normally), drawn from a
    hash of (call, attempt number). Which calls fail for good is fixed apart from that: the
    calls numbered in `doomed` (by first arrival, from 1) are answered 500 on their first
    `doomed_attempts` attempts, and any other call meets at most `max_faults` faults in a row,
    so a test knows how many calls a client with that many retries loses."""

    truncated: float = 0.0  # HTTP 200 whose JSON body is cut off
    malformed: float = 0.0  # HTTP 200 without `choices`, or with an empty body
    rate_limited: float = 0.0  # 429 with Retry-After
    server_error: float = 0.0  # 500, its body echoing the request's credentials
    slow: float = 0.0  # the normal answer, after `slow_s`
    doomed: frozenset[int] = frozenset()
    doomed_attempts: int = 1_000_000
    max_faults: int = 1_000_000
    retry_after: str = "0.05"
    slow_s: float = 1.0
    seed: int = 0

    def draw(self, request_key: str, attempt: int, arrival: int) -> str | None:
        if arrival in self.doomed:
            return "server_error" if attempt <= self.doomed_attempts else None
        if attempt > self.max_faults:
            return None
        digest = hashlib.sha256(f"{self.seed}:{request_key}:{attempt}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        for name in ("truncated", "malformed", "rate_limited", "server_error", "slow"):
            share = getattr(self, name)
            if u < share:
                return name
            u -= share
        return None


@dataclass(frozen=True)
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]
    in_flight: int  # requests in flight when this one arrived, itself included
    fault: str | None


class ChatServer:
    @staticmethod
    def completion_text(messages: list[dict[str, str]], seed: int | None) -> str:
        """What the server answers for these messages and seed (no fault, no canned answer)."""
        payload = json.dumps([messages, seed], sort_keys=True).encode()
        return f"sample {hashlib.sha256(payload).hexdigest()[:12]}"

    @staticmethod
    def request_key(body: dict[str, Any]) -> str:
        """Which call a request is (its retries share it)."""
        return json.dumps([body.get("messages"), body.get("seed")], sort_keys=True)

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.chaos: Chaos | None = None
        # Canned answers by user message (for choose_option); others get completion_text.
        self.answers: dict[str, str] = {}
        # Top log-probabilities by user message; None: the server never returns logprobs.
        self.top_logprobs: dict[str, list[tuple[str, float]]] | None = None
        self.delay_s = 0.0  # added to every normal answer
        self.max_in_flight = 0
        # Keys of the calls answered normally and in time, once per answer sent (a key seen
        # twice is a call made again).
        self.answered: list[str] = []
        # Called with the number of normal answers sent so far, after each one is sent.
        self.on_answer: Callable[[int], None] | None = None
        self._attempts: Counter[str] = Counter()
        self._arrivals: dict[str, int] = {}  # each call's number, by first arrival
        self._in_flight = 0
        self._lock = threading.Lock()
        self.released = threading.Event()  # set at teardown to end hanging handlers
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
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

    def _chaos_fault(self, body: dict[str, Any], headers: dict[str, str]) -> Fault | None:
        if self.chaos is None:
            return None
        key = self.request_key(body)
        self._attempts[key] += 1
        arrival = self._arrivals.setdefault(key, len(self._arrivals) + 1)
        drawn = self.chaos.draw(key, self._attempts[key], arrival)
        full = json.dumps(self._answer(body)).encode()
        if drawn == "truncated":
            return Fault(body=full[: len(full) // 2])
        if drawn == "malformed":
            return Fault(body=b"" if self._attempts[key] % 2 else b'{"id": "chatcmpl-test"}')
        if drawn == "rate_limited":
            return Fault(status=429, headers={"Retry-After": self.chaos.retry_after})
        if drawn == "server_error":
            # Some servers echo the credentials back; the client must not pass them on.
            echoed = headers.get("Authorization", "")
            return Fault(status=500, body=f'{{"error": "overloaded ({echoed})"}}'.encode())
        if drawn == "slow":
            return Fault(late_s=self.chaos.slow_s)
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                headers = dict(self.headers)
                with server._lock:
                    fault = server.faults.popleft() if server.faults else None
                    if fault is None:
                        fault = server._chaos_fault(body, headers)
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                    kind = None if fault is None else _fault_name(fault)
                    server.requests.append(Recorded(headers, body, server._in_flight, kind))
                try:
                    self._respond(body, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout) before the answer
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _respond(self, body: dict[str, Any], fault: Fault | None) -> None:
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}', {})
                elif fault is not None and fault.hang_s > 0:
                    server.released.wait(fault.hang_s)
                    self.close_connection = True
                elif fault is not None and fault.late_s == 0:
                    self._send(fault.status, fault.body, fault.headers)
                else:
                    late = fault is not None
                    server.released.wait(fault.late_s if late else server.delay_s)
                    self._send(200, json.dumps(server._answer(body)).encode(), {})
                    if late:
                        return  # past the client's timeout: not counted as answered
                    with server._lock:
                        server.answered.append(server.request_key(body))
                        count = len(server.answered)
                    if server.on_answer is not None:
                        server.on_answer(count)

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()

        return Handler


def _fault_name(fault: Fault) -> str:
    if fault.hang_s:
        return "hang"
    if fault.late_s:
        return "slow"
    return f"HTTP {fault.status}" if fault.status != 200 else "malformed"
