"""Any OpenAI-compatible chat-completions endpoint (vLLM, Ollama's `/v1`, hosted APIs) as a
TextModel.

One request per (prompt, sample) with `n=1` and a seed fixed per sample index, because not all
servers support `n>1` and a sample must not depend on the batch it ran in. Requests run in a
bounded thread pool over one shared `httpx.Client`, with bounded retries on transient failures:
429 and 5xx, timeouts, dropped connections and malformed replies (a cut-off JSON body, no
`choices`, an empty body) share one budget of attempts. An adaptive limit lowers the number of
requests in flight while the server keeps answering 429 and raises it again as answers come
back. `generate_each` hands over each answer as it arrives, so the caller can keep it at once.
The API key is read from the environment at call time and kept out of every message, log line,
`repr` and exception chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import numpy as np

from lettingo_dagster.models.base import (
    CallFailed,
    CallStats,
    ChatPrompt,
    Decoding,
    Generation,
    GenerationTask,
    ModelError,
    StreamingTextModel,
)

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
RATE_LIMITED = 429
# 429s in a row (no answer between them) that halve the number of requests in flight: one alone
# is often a burst, not an overloaded server.
RATE_LIMITED_STREAK = 2
MALFORMED = "malformed response"
# Transient transport failures; other httpx errors (an unsupported scheme, a proxy set-up
# error) cannot get better by waiting.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
TOP_LOGPROBS = 20  # the most OpenAI allows, and vLLM's default limit
CHOOSE_MAX_TOKENS = 8
QUOTES = "\"'`\u201c\u201d\u2018\u2019"

T = TypeVar("T")
R = TypeVar("R")


def sample_seed(seed: int, sample_index: int) -> int:
    """The seed requested for sample `sample_index`: fixed per (seed, index), so a sample is
    asked for the same way whatever batch it is in; 31 bits, which every server accepts."""
    digest = hashlib.sha256(f"{seed}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def option_log_probs(tokens: Sequence[tuple[str, float]], options: Sequence[str]) -> np.ndarray:
    """Each option's log-probability from the first answer token's top candidates: the best
    candidate whose stripped, lower-cased text is a non-empty prefix of the option, -inf when
    none is, renormalized over the options; all NaN when no option matched at all."""
    best = np.full(len(options), -np.inf)
    for token, logprob in tokens:
        piece = token.strip().lower()
        if not piece:
            continue
        for k, option in enumerate(options):
            if option.lower().startswith(piece):
                best[k] = max(best[k], logprob)
    matched = np.isfinite(best)
    if not matched.any():
        return np.full(len(options), np.nan)
    return best - np.logaddexp.reduce(best[matched])


def parse_option(answer: str, options: Sequence[str]) -> str | None:
    """The option the answer names, or None: after stripping whitespace, surrounding quotes and
    a trailing period the answer must equal exactly one option, ignoring case. Nothing is
    guessed, so an unparseable answer stays recorded as such."""
    text = answer.strip().removesuffix(".").strip().strip(QUOTES).strip().removesuffix(".")
    text = text.strip().lower()
    matches = [option for option in options if option.lower() == text]
    return matches[0] if text and len(matches) == 1 else None


def _redact(text: str, key: str | None) -> str:
    # Servers may echo the key back in an error body.
    return text.replace(key, "[redacted]") if key else text


def _snippet(response: httpx.Response) -> str:
    return " ".join(response.text.split())[:200]


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds; the HTTP-date form is ignored (the normal backoff applies)."""
    try:
        value = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class LogProbsUnavailable(ModelError):
    """The endpoint answered but without log-probabilities: score by `choose_option`."""


class _Malformed(Exception):
    """A 2xx reply the client cannot use; retried like a 5xx (internal: never leaves `_post`)."""


class RequestGate:
    """Admits requests under an adaptive limit and counts what they meet.

    The limit starts at `ceiling`, halves after RATE_LIMITED_STREAK 429s in a row and grows by
    one after `limit` answers in a row (additive increase, multiplicative decrease), never below
    1 or above `ceiling`. A request waiting out a 429 holds no slot. `rate_limit_wait_s` is the
    wall-clock time during which at least one call was waiting after a 429: how long the run was
    held back by rate limits, whatever the concurrency."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self.lowest = ceiling
        self.requests = 0
        self.retries = 0
        self.rate_limited_responses = 0
        self._cond = threading.Condition()
        self._in_use = 0
        self._streak = 0
        self._answers = 0
        self._waiting = 0
        self._wait_started = 0.0
        self._wait_s = 0.0

    @contextmanager
    def slot(self, retry: bool) -> Iterator[None]:
        with self._cond:
            while self._in_use >= self.limit:
                self._cond.wait()
            self._in_use += 1
            self.requests += 1
            self.retries += int(retry)
        try:
            yield
        finally:
            with self._cond:
                self._in_use -= 1
                self._cond.notify_all()

    def answered(self) -> None:
        with self._cond:
            self._streak = 0
            self._answers += 1
            if self.limit < self.ceiling and self._answers >= self.limit:
                self.limit += 1
                self._answers = 0
                self._cond.notify_all()

    def rate_limited(self) -> None:
        with self._cond:
            self.rate_limited_responses += 1
            self._streak += 1
            self._answers = 0
            if self._streak >= RATE_LIMITED_STREAK:
                self._streak = 0
                if self.limit > 1:
                    self.limit //= 2
                    self.lowest = min(self.lowest, self.limit)
                    logger.warning("rate limited: at most %d requests in flight now", self.limit)

    @contextmanager
    def waiting_out_rate_limit(self) -> Iterator[None]:
        with self._cond:
            if self._waiting == 0:
                self._wait_started = time.monotonic()
            self._waiting += 1
        try:
            yield
        finally:
            with self._cond:
                self._waiting -= 1
                if self._waiting == 0:
                    self._wait_s += time.monotonic() - self._wait_started

    def stats(self) -> CallStats:
        with self._cond:
            ongoing = time.monotonic() - self._wait_started if self._waiting else 0.0
            return CallStats(
                requests=self.requests,
                retries=self.retries,
                rate_limited=self.rate_limited_responses,
                rate_limit_wait_s=self._wait_s + ongoing,
                min_concurrency=self.lowest,
                max_concurrency=self.ceiling,
            )


class OpenAICompatibleModel(StreamingTextModel):
    """A model served behind an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float = 60,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 20,
        max_concurrency: int = 4,
        name: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            base_url: the API root, e.g. `http://127.0.0.1:8000/v1`; `/chat/completions` is
                appended.
            model: the model name the server knows.
            api_key_env: NAME of the environment variable holding the API key, read at each
                call; without it no Authorization header is sent.
            timeout_s: per-request timeout (connect, read, write, pool).
            max_retries: retries after the first try on 429/500/502/503/504, connection errors,
                timeouts and malformed replies.
            backoff_base_s, backoff_max_s: retry k waits min(max, base * 2**k) scaled by a
                random factor in [0.5, 1], or Retry-After (capped by max) on 429/503.
            max_concurrency: requests in flight at once (the adaptive limit's ceiling).
            name: display name; the model name by default.
            extra_body: extra request fields (e.g. `{"top_k": 50}`); the fields this class sets
                take precedence. Part of the fingerprint.
        """
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if timeout_s <= 0 or max_retries < 0 or max_concurrency < 1:
            raise ValueError("need timeout_s > 0, max_retries >= 0 and max_concurrency >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_concurrency = max_concurrency
        self.name = name or model
        self.extra_body = dict(extra_body or {})
        self.endpoint = f"{self.base_url}/chat/completions"
        self._gate = RequestGate(max_concurrency)
        self._client = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
        )

    def __repr__(self) -> str:
        return (
            f"OpenAICompatibleModel(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, name={self.name!r})"
        )

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(
            {"base_url": self.base_url, "model": self.model, "extra_body": self.extra_body},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def generate(
        self, prompts: Sequence[ChatPrompt], decoding: Decoding, num_samples: int = 1
    ) -> list[list[Generation]]:
        """All samples, or the first failed call's CallFailed (the calls not yet started are
        cancelled)."""
        tasks = [GenerationTask(p, decoding, j) for p in prompts for j in range(num_samples)]
        flat: list[Generation | None] = [None] * len(tasks)
        stream = self.generate_each(tasks)
        try:
            for batch in stream:
                for position, outcome in batch:
                    if isinstance(outcome, CallFailed):
                        raise outcome
                    flat[position] = outcome
        finally:
            stream.close()
        return [
            [g for g in flat[i * num_samples : (i + 1) * num_samples] if g is not None]
            for i in range(len(prompts))
        ]

    def generate_each(
        self, tasks: Sequence[GenerationTask]
    ) -> Generator[list[tuple[int, Generation | CallFailed]], bool | None, None]:
        key = self._api_key()  # a missing key fails here, before any request
        return self._stream(list(tasks), key)

    def call_stats(self) -> CallStats:
        return self._gate.stats()

    def score_options(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> np.ndarray:
        key = self._api_key()
        rows = self._map(lambda prompt: self._score_one(prompt, options, key), list(prompts))
        return np.array(rows, dtype=float).reshape(len(prompts), len(options))

    def choose_option(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str]
    ) -> list[str | None]:
        """The fallback for endpoints without log-probabilities: a short greedy answer per
        prompt, parsed strictly (see `parse_option`); None where it names no single option."""
        greedy = Decoding(temperature=0.0, max_new_tokens=CHOOSE_MAX_TOKENS)
        return [parse_option(g[0].text, options) for g in self.generate(prompts, greedy)]

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ModelError(
                f"environment variable {self.api_key_env} (the API key for model "
                f"{self.model!r} at {self.endpoint}) is not set"
            )
        return key

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """fn over items, at most max_concurrency at once, results in input order; the first
        failure cancels the requests not yet started."""
        if not items:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)))
        try:
            futures = [pool.submit(fn, item) for item in items]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _stream(
        self, tasks: list[GenerationTask], key: str | None
    ) -> Generator[list[tuple[int, Generation | CallFailed]], bool | None, None]:
        # New requests are submitted only after the consumer has taken the previous batch, so at
        # most max_concurrency tasks are ever started and not yet handed over.
        if not tasks:
            return
        cancel = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(tasks)))
        pending: dict[Future[Generation | CallFailed], int] = {}
        submitted = 0
        try:
            while submitted < len(tasks) or pending:
                while submitted < len(tasks) and len(pending) < self.max_concurrency:
                    future = pool.submit(self._run_task, tasks[submitted], key, cancel)
                    pending[future] = submitted
                    submitted += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                # result() re-raises anything but CallFailed (a bug, not a bad reply).
                batch = sorted(((pending.pop(f), f.result()) for f in done), key=lambda x: x[0])
                if (yield batch) and not cancel.is_set():
                    # Stop: nothing new starts and no call retries; what is in flight still
                    # arrives, so an answer the server already gave is not thrown away.
                    cancel.set()
                    submitted = len(tasks)
        finally:
            # Closed early: the same, but answers still in flight are dropped.
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _run_task(
        self, task: GenerationTask, key: str | None, cancel: threading.Event
    ) -> Generation | CallFailed:
        try:
            return self._generate_one(task.prompt, task.decoding, task.sample_index, key, cancel)
        except CallFailed as failure:
            return failure.with_traceback(None)  # its frames hold the key

    def _generate_one(
        self,
        prompt: ChatPrompt,
        decoding: Decoding,
        sample_index: int,
        key: str | None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        body = {
            "messages": prompt.as_messages(),
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "max_tokens": decoding.max_new_tokens,
            "seed": sample_seed(decoding.seed, sample_index),
            "n": 1,
        }

        def parse(data: dict[str, Any]) -> Generation:
            choice = _first_choice(data)
            message = choice.get("message")
            if not isinstance(message, dict):
                raise _Malformed("choices[0].message is missing")
            text = message.get("content")
            if not isinstance(text, str):
                raise _Malformed("choices[0].message.content is missing")
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            finish = choice.get("finish_reason")
            return Generation(
                text=text,
                prompt_tokens=_count(usage.get("prompt_tokens")),
                completion_tokens=_count(usage.get("completion_tokens")),
                seconds=0.0,
                finish_reason=finish if isinstance(finish, str) else None,
            )

        generation, seconds = self._post(body, key, parse, cancel)
        return Generation(
            text=generation.text,
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            seconds=seconds,
            finish_reason=generation.finish_reason,
        )

    def _score_one(self, prompt: ChatPrompt, options: Sequence[str], key: str | None) -> np.ndarray:
        body = {
            "messages": prompt.as_messages(),
            "temperature": 0.0,
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }

        def parse(data: dict[str, Any]) -> list[tuple[str, float]] | None:
            logprobs = _first_choice(data).get("logprobs")
            content = logprobs.get("content") if isinstance(logprobs, dict) else None
            first = content[0] if isinstance(content, list) and content else None
            top = first.get("top_logprobs") if isinstance(first, dict) else None
            if not top:
                return None  # a well-formed answer without log-probabilities: not retried
            tokens = [
                (entry.get("token"), entry.get("logprob")) if isinstance(entry, dict) else (0, 0)
                for entry in top
            ]
            if not all(isinstance(t, str) and isinstance(lp, int | float) for t, lp in tokens):
                raise _Malformed("a top_logprobs entry lacks token or logprob")
            return tokens

        tokens, _ = self._post(body, key, parse)
        if tokens is None:
            raise LogProbsUnavailable(
                f"{self.endpoint} (model {self.model!r}): endpoint returned no log-probabilities;"
                " use choose_option instead"
            )
        return option_log_probs(tokens, options)

    def _post(
        self,
        body: dict[str, Any],
        key: str | None,
        parse: Callable[[dict[str, Any]], R],
        cancel: threading.Event | None = None,
    ) -> tuple[R, float]:
        """POST one request under the retry policy; returns the parsed answer and the wall time
        of the attempt that succeeded. A reply `parse` rejects counts as a failed attempt. Errors
        are raised outside `except` blocks so no httpx exception (which holds the request and
        its headers) is chained to them."""
        payload = {**self.extra_body, **body, "model": self.model}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        attempts = self.max_retries + 1
        problem, error_class, attempt = "", "", 0
        for attempt in range(1, attempts + 1):
            with self._gate.slot(retry=attempt > 1):
                started = time.perf_counter()
                outcome = self._send(payload, headers)
                seconds = time.perf_counter() - started
            retry_after = None
            rate_limited = False
            if isinstance(outcome, httpx.HTTPError):
                error_class = type(outcome).__name__
                problem = f"{error_class} ({outcome})"
                if not isinstance(outcome, RETRY_ERRORS):
                    raise self._failure(problem, error_class, attempt, key)
            elif outcome.is_success:
                data = _json_or_none(outcome)
                try:
                    if not isinstance(data, dict):
                        raise _Malformed("the body is not a JSON object")
                    result = parse(data)
                except _Malformed as malformed:
                    error_class, problem = MALFORMED, f"{MALFORMED} ({malformed})"
                else:
                    self._gate.answered()
                    return result, seconds
            else:
                error_class = f"HTTP {outcome.status_code}"
                snippet = _snippet(outcome)
                problem = error_class + (f": {snippet}" if snippet else "")
                if outcome.status_code not in RETRY_STATUSES:
                    raise self._failure(problem, error_class, attempt, key)
                if outcome.status_code in RETRY_AFTER_STATUSES:
                    retry_after = _retry_after_s(outcome)
                if outcome.status_code == RATE_LIMITED:
                    rate_limited = True
                    self._gate.rate_limited()
            if attempt == attempts or (cancel is not None and cancel.is_set()):
                break
            wait_s = self._wait_s(attempt - 1, retry_after)
            logger.warning(
                "%s: %s; retry %d of %d in %.2f s",
                self.endpoint,
                _redact(problem, key),
                attempt,
                self.max_retries,
                wait_s,
            )
            with self._gate.waiting_out_rate_limit() if rate_limited else nullcontext():
                if cancel is None:
                    time.sleep(wait_s)
                else:
                    cancel.wait(wait_s)
        raise self._failure(problem, error_class, attempt, key)

    def _send(
        self, payload: dict[str, Any], headers: dict[str, str]
    ) -> httpx.Response | httpx.HTTPError:
        try:
            return self._client.post(self.endpoint, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            return exc

    def _wait_s(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, retry_after)
        backoff = min(self.backoff_max_s, self.backoff_base_s * 2**retry)
        return backoff * random.uniform(0.5, 1.0)

    def _failure(
        self, problem: str, error_class: str, attempts: int, key: str | None
    ) -> CallFailed:
        return CallFailed(
            _redact(
                f"chat completion failed: POST {self.endpoint} (model {self.model!r}): "
                f"{problem} after {attempts} attempt{'s' if attempts > 1 else ''}",
                key,
            ),
            error_class=error_class,
            attempts=attempts,
        )


def _first_choice(data: dict[str, Any]) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("choices is missing or empty")
    return choices[0]
