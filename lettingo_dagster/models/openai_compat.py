"""Any OpenAI-compatible chat-completions endpoint (vLLM, Ollama's `/v1`, hosted APIs) as a
TextModel.

One request per (prompt, sample) with `n=1` and a seed fixed per sample index, because not all
servers support `n>1` and a sample must not depend on the batch it ran in. Requests run in a
bounded thread pool over one shared `httpx.Client`, with bounded retries on transient failures.
The API key is read from the environment at call time and kept out of every message, log line,
`repr` and exception chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import numpy as np

from lettingo_dagster.models.base import ChatPrompt, Decoding, Generation, ModelError, TextModel

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
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


class LogProbsUnavailable(ModelError):
    """The endpoint answered but without log-probabilities: score by `choose_option`."""


class OpenAICompatibleModel(TextModel):
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
            max_retries: retries after the first try on 429/500/502/503/504, connection errors
                and timeouts.
            backoff_base_s, backoff_max_s: retry k waits min(max, base * 2**k) scaled by a
                random factor in [0.5, 1], or Retry-After (capped by max) on 429/503.
            max_concurrency: requests in flight at once.
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
        key = self._api_key()
        tasks = [(prompt, j) for prompt in prompts for j in range(num_samples)]
        flat = self._map(lambda task: self._generate_one(task[0], decoding, task[1], key), tasks)
        return [flat[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]

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

    def _generate_one(
        self, prompt: ChatPrompt, decoding: Decoding, sample_index: int, key: str | None
    ) -> Generation:
        body = {
            "messages": prompt.as_messages(),
            "temperature": decoding.temperature,
            "top_p": decoding.top_p,
            "max_tokens": decoding.max_new_tokens,
            "seed": sample_seed(decoding.seed, sample_index),
            "n": 1,
        }
        data, seconds = self._post(body, key)
        choice = self._first_choice(data)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self._malformed("choices[0].message is missing")
        text = message.get("content")
        if not isinstance(text, str):
            raise self._malformed("choices[0].message.content is missing")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=seconds,
            finish_reason=choice.get("finish_reason"),
        )

    def _score_one(self, prompt: ChatPrompt, options: Sequence[str], key: str | None) -> np.ndarray:
        body = {
            "messages": prompt.as_messages(),
            "temperature": 0.0,
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": TOP_LOGPROBS,
        }
        data, _ = self._post(body, key)
        logprobs = self._first_choice(data).get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
        if not top:
            raise LogProbsUnavailable(
                f"{self.endpoint} (model {self.model!r}): endpoint returned no log-probabilities;"
                " use choose_option instead"
            )
        tokens = [(entry.get("token"), entry.get("logprob")) for entry in top]
        if not all(isinstance(t, str) and isinstance(lp, int | float) for t, lp in tokens):
            raise self._malformed("a top_logprobs entry lacks token or logprob")
        return option_log_probs(tokens, options)

    def _post(self, body: dict[str, Any], key: str | None) -> tuple[dict[str, Any], float]:
        """POST one request under the retry policy; returns the JSON object and the wall time
        of the attempt that succeeded. Errors are raised outside `except` blocks so no httpx
        exception (which holds the request and its headers) is chained to them."""
        payload = {**self.extra_body, **body, "model": self.model}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        attempts = self.max_retries + 1
        problem = ""
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            outcome = self._send(payload, headers)
            seconds = time.perf_counter() - started
            retry_after = None
            if isinstance(outcome, httpx.HTTPError):
                problem = f"{type(outcome).__name__} ({outcome})"
                if not isinstance(outcome, RETRY_ERRORS):
                    raise self._failure(problem, attempt, key)
            elif outcome.is_success:
                data = _json_or_none(outcome)
                if not isinstance(data, dict):
                    raise self._malformed("the response is not a JSON object")
                return data, seconds
            else:
                snippet = _snippet(outcome)
                problem = f"HTTP {outcome.status_code}" + (f": {snippet}" if snippet else "")
                if outcome.status_code not in RETRY_STATUSES:
                    raise self._failure(problem, attempt, key)
                if outcome.status_code in RETRY_AFTER_STATUSES:
                    retry_after = _retry_after_s(outcome)
            if attempt < attempts:
                wait = self._wait_s(attempt - 1, retry_after)
                logger.warning(
                    "%s: %s; retry %d of %d in %.2f s",
                    self.endpoint,
                    _redact(problem, key),
                    attempt,
                    self.max_retries,
                    wait,
                )
                time.sleep(wait)
        raise self._failure(problem, attempts, key)

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

    def _first_choice(self, data: dict[str, Any]) -> dict[str, Any]:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._malformed("choices is missing or empty")
        return choices[0]

    def _failure(self, problem: str, attempts: int, key: str | None) -> ModelError:
        return ModelError(
            _redact(
                f"chat completion failed: POST {self.endpoint} (model {self.model!r}): "
                f"{problem} after {attempts} attempt{'s' if attempts > 1 else ''}",
                key,
            )
        )

    def _malformed(self, what: str) -> ModelError:
        return ModelError(f"malformed response from {self.endpoint} (model {self.model!r}): {what}")
