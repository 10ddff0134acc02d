"""The interface every text model backend implements.

The pipeline only ever asks two things of a model: sample N continuations for a batch of
prompts, and score a fixed set of short answers (the recommender's labels). Backends differ in
how they do it (a local forward pass, an HTTP endpoint) but not in what they return.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ChatPrompt:
    """A prompt as a system and a user message. Chat models get them as messages; plain
    completion models get them joined into one text by the backend."""

    user: str
    system: str | None = None

    def as_messages(self) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": self.user}]

    def digest(self) -> str:
        payload = json.dumps({"system": self.system, "user": self.user}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Decoding:
    """Sampling settings; temperature 0 means greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time attributed to this sample (its batch's time shared evenly)
    finish_reason: str | None = None  # "stop", "length", ... when the backend says


class ModelError(RuntimeError):
    """A model call failed for good (after the backend's own retries)."""


class CallFailed(ModelError):
    """One request failed for good after its retries. `error_class` names the last problem in a
    form that groups well (`HTTP 500`, `ReadTimeout`, `malformed response`); the message never
    holds a credential."""

    def __init__(self, message: str, *, error_class: str, attempts: int) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.attempts = attempts


@dataclass(frozen=True)
class GenerationTask:
    """One independent request: sample `sample_index` of `prompt` under `decoding`."""

    prompt: ChatPrompt
    decoding: Decoding
    sample_index: int


@dataclass(frozen=True)
class CallStats:
    """What a remote backend's requests met so far (for metadata)."""

    requests: int  # HTTP attempts, retries included
    retries: int
    rate_limited: int  # 429 responses
    # Wall-clock seconds during which at least one call was waiting after a 429.
    rate_limit_wait_s: float
    min_concurrency: int  # the lowest the adaptive limit went
    max_concurrency: int


class TextModel(ABC):
    """A text generation backend."""

    name: str

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the model's outputs could change (weights, adapter, endpoint model).
        Part of every cache key."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[ChatPrompt], decoding: Decoding, num_samples: int = 1
    ) -> list[list[Generation]]:
        """`num_samples` samples for each prompt: result[i][j] is sample j of prompt i.
        A call with the same arguments returns the same samples (backends seed themselves
        from `decoding.seed`); the cache relies on this to make a resumed run reproduce an
        uninterrupted one."""

    @abstractmethod
    def score_options(self, prompts: Sequence[ChatPrompt], options: Sequence[str]) -> np.ndarray:
        """Log-probabilities, shape (len(prompts), len(options)), of each option as the start of
        the answer, renormalized over the options. Raises ModelError when the backend cannot
        score (e.g. an endpoint without log-probabilities)."""


class StreamingTextModel(TextModel):
    """A backend whose samples are independent requests (an HTTP endpoint): each answer can be
    kept the moment it arrives, and one failed request need not fail the others."""

    max_concurrency: int

    @abstractmethod
    def generate_each(
        self, tasks: Sequence[GenerationTask]
    ) -> Generator[list[tuple[int, Generation | CallFailed]], bool | None, None]:
        """Answers as they arrive, in batches of (position in `tasks`, answer or CallFailed).

        At most `max_concurrency` tasks are ever between submission and being yielded, and new
        requests start only when the consumer asks for the next batch: whatever the consumer
        has stored before asking is safe, so a kill loses at most `max_concurrency` answers.
        `send(True)` instead of `next` stops: no new request starts and no call retries, and
        the answers still in flight arrive in the following batches (their calls that were
        cut short come as CallFailed). Closing the generator drops them."""

    @abstractmethod
    def call_stats(self) -> CallStats:
        """Counters of the requests made so far."""
