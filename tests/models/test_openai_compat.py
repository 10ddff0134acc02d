"""The OpenAI-compatible endpoint backend against a real, fault-injecting server on loopback
(the `chat_server` fixture in this folder's conftest)."""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lettingo_dagster.models.base import (
    CallFailed,
    ChatPrompt,
    Decoding,
    GenerationTask,
    ModelError,
)
from lettingo_dagster.models.openai_compat import (
    LogProbsUnavailable,
    OpenAICompatibleModel,
    parse_option,
    sample_seed,
)

KEY = "sk-test-Zq8xVv3KEY-do-not-leak"
KEY_ENV = "LETTINGO_TEST_API_KEY"
OPTIONS = ["like", "neutral", "dislike"]
PROMPTS = [
    ChatPrompt(user="Describe user 1.", system="You write profiles."),
    ChatPrompt(user="Describe user 2."),
    ChatPrompt(user="Describe user 3.", system="Be brief."),
]


@pytest.fixture
def make_model(chat_server: Any) -> Iterator[Any]:
    """Builds models on the test server with fast timeouts and backoff; closes them after."""
    models: list[OpenAICompatibleModel] = []

    def make(**overrides: Any) -> OpenAICompatibleModel:
        settings: dict[str, Any] = {
            "base_url": chat_server.url,
            "model": "test-model",
            "timeout_s": 0.3,
            "max_retries": 4,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            **overrides,
        }
        models.append(OpenAICompatibleModel(**settings))
        return models[-1]

    yield make
    for model in models:
        model.close()


def assert_no_key(exc: BaseException) -> None:
    assert exc.__cause__ is None
    assert exc.__context__ is None
    assert KEY not in "".join(traceback.format_exception(exc))


def test_generate_returns_samples_in_order_with_usage(chat_server: Any, make_model: Any) -> None:
    model = make_model(extra_body={"top_k": 5})
    decoding = Decoding(temperature=0.7, top_p=0.9, max_new_tokens=32, seed=3)
    result = model.generate(PROMPTS, decoding, num_samples=2)

    assert [len(row) for row in result] == [2, 2, 2]
    for prompt, row in zip(PROMPTS, result, strict=True):
        for j, generation in enumerate(row):
            expected = chat_server.completion_text(prompt.as_messages(), sample_seed(3, j))
            assert generation.text == expected
            assert generation.completion_tokens == 2
            assert generation.prompt_tokens == sum(
                len(m["content"].split()) for m in prompt.as_messages()
            )
            assert generation.finish_reason == "stop"
            assert generation.seconds > 0
    assert len(chat_server.requests) == 6
    body = chat_server.requests[0].body
    assert body["model"] == "test-model"
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["n"]) == (0.7, 0.9, 32, 1)
    assert body["top_k"] == 5
    assert "authorization" not in {name.lower() for name in chat_server.requests[0].headers}


def test_sample_seed_depends_only_on_seed_and_index(chat_server: Any, make_model: Any) -> None:
    model = make_model()
    decoding = Decoding(seed=11)
    alone = model.generate(PROMPTS[1:2], decoding, num_samples=3)[0]
    in_batch = model.generate(PROMPTS, decoding, num_samples=3)[1]
    assert [g.text for g in alone] == [g.text for g in in_batch]
    assert len({g.text for g in alone}) == 3

    # Requests run concurrently, so compare seeds per call, not in order.
    seeds = [r.body["seed"] for r in chat_server.requests]
    assert sorted(seeds[:3]) == sorted(sample_seed(11, j) for j in range(3))
    assert sorted(seeds[3:]) == sorted(seeds[:3] * 3)
    assert sample_seed(12, 0) != sample_seed(11, 0)


def test_retries_429_500_and_timeout_then_succeeds(
    chat_server: Any, make_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.fail(429, retry_after="0")
    chat_server.fail(500)
    chat_server.hang(2.0)
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="lettingo_dagster.models.openai_compat"):
        [[generation]] = model.generate(PROMPTS[:1], Decoding())

    assert generation.text == chat_server.completion_text(
        PROMPTS[0].as_messages(), sample_seed(0, 0)
    )
    assert len(chat_server.requests) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all(chat_server.url in w for w in warnings)
    assert "HTTP 429" in warnings[0] and "HTTP 500" in warnings[1]
    assert "Timeout" in warnings[2]


def test_retry_after_is_honored_and_capped(
    chat_server: Any, make_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.fail(429, retry_after="0")
    chat_server.fail(503, retry_after="100")
    # Backoff alone would wait a jittered 0.1 to 0.2 s each time: exact 0 and 0.2 (the cap)
    # show the header was used.
    model = make_model(backoff_base_s=30, backoff_max_s=0.2)
    with caplog.at_level(logging.WARNING, logger="lettingo_dagster.models.openai_compat"):
        model.generate(PROMPTS[:1], Decoding())
    assert [record.args[-1] for record in caplog.records] == [0.0, 0.2]
    assert len(chat_server.requests) == 3


def test_gives_up_after_max_retries(
    chat_server: Any, make_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    for _ in range(5):
        chat_server.fail(500, body=f'{{"error": "bad key {KEY}"}}'.encode())
    model = make_model(max_retries=2, api_key_env=KEY_ENV)
    with pytest.raises(ModelError) as caught:
        model.generate(PROMPTS[:1], Decoding())

    message = str(caught.value)
    assert f"{chat_server.url}/chat/completions" in message
    assert "test-model" in message and "HTTP 500" in message and "3 attempts" in message
    assert_no_key(caught.value)
    assert len(chat_server.requests) == 3


def test_timeouts_exhaust_retries(chat_server: Any, make_model: Any) -> None:
    chat_server.hang(2.0)
    chat_server.hang(2.0)
    model = make_model(max_retries=1, timeout_s=0.2)
    with pytest.raises(ModelError, match="ReadTimeout.*2 attempts") as caught:
        model.generate(PROMPTS[:1], Decoding())
    assert_no_key(caught.value)
    assert len(chat_server.requests) == 2


def test_connection_refused_is_retried_then_reported(chat_server: Any) -> None:
    url = chat_server.url
    chat_server.stop()  # nothing listens on the port any more
    with (
        OpenAICompatibleModel(base_url=url, model="m", max_retries=1, backoff_base_s=0.01) as model,
        pytest.raises(ModelError, match="ConnectError.*2 attempts"),
    ):
        model.generate(PROMPTS[:1], Decoding())


def test_client_error_fails_at_once(chat_server: Any, make_model: Any) -> None:
    chat_server.fail(400, body=b'{"error": "max_tokens too large"}')
    model = make_model()
    with pytest.raises(ModelError, match=r"HTTP 400.*max_tokens too large.*after 1 attempt$"):
        model.generate(PROMPTS[:1], Decoding())
    assert len(chat_server.requests) == 1


def test_concurrency_limit(chat_server: Any, make_model: Any) -> None:
    chat_server.delay_s = 0.05
    model = make_model(max_concurrency=3, timeout_s=5)
    prompts = [ChatPrompt(user=f"Describe user {i}.") for i in range(12)]
    result = model.generate(prompts, Decoding())
    assert [row[0].text for row in result] == [
        chat_server.completion_text(p.as_messages(), sample_seed(0, 0)) for p in prompts
    ]
    assert 1 < chat_server.max_in_flight <= 3


def test_key_is_sent_but_never_shown(
    chat_server: Any,
    make_model: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore too
    chat_server.fail(429, retry_after="0", body=f"rate limited for {KEY}".encode())
    chat_server.fail(401, body=f'{{"error": "invalid key {KEY}"}}'.encode())
    model = make_model(api_key_env=KEY_ENV)
    with pytest.raises(ModelError) as caught:
        model.generate(PROMPTS[:1], Decoding())

    assert chat_server.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert "HTTP 401" in str(caught.value)
    assert_no_key(caught.value)
    assert KEY not in repr(model) and KEY not in model.fingerprint
    assert any("HTTP 429" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text


def test_missing_key_variable_is_named(
    chat_server: Any, make_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    model = make_model(api_key_env=KEY_ENV)
    with pytest.raises(ModelError, match=KEY_ENV):
        model.generate(PROMPTS[:1], Decoding())
    assert chat_server.requests == []


def test_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    def fingerprint(**settings: Any) -> str:
        with OpenAICompatibleModel(**{"model": "m", **settings}) as model:
            return model.fingerprint

    base = fingerprint(base_url="http://h/v1")
    assert fingerprint(base_url="http://h/v1/") == base
    monkeypatch.setenv(KEY_ENV, KEY)
    assert fingerprint(base_url="http://h/v1", api_key_env=KEY_ENV, name="other") == base
    assert fingerprint(base_url="http://h/v1", model="m2") != base
    assert fingerprint(base_url="http://h2/v1") != base
    with_extra = fingerprint(base_url="http://h/v1", extra_body={"a": 1, "b": 2})
    assert with_extra != base
    assert fingerprint(base_url="http://h/v1", extra_body={"b": 2, "a": 1}) == with_extra


GARBAGE = [
    b"",
    b"<html>oops</html>",
    b"[]",
    b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess',  # cut off mid-body
    b'{"id": "chatcmpl-1"}',
    b'{"choices": []}',
    b'{"choices": [{"message": {}}]}',
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_malformed_reply_is_retried_like_a_5xx(
    chat_server: Any, make_model: Any, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    chat_server.garbage(garbage)
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="lettingo_dagster.models.openai_compat"):
        [[generation]] = model.generate(PROMPTS[:1], Decoding())
    assert generation.text == chat_server.completion_text(
        PROMPTS[0].as_messages(), sample_seed(0, 0)
    )
    assert len(chat_server.requests) == 2
    assert "malformed response" in caplog.records[0].getMessage()


def test_malformed_after_the_budget_is_a_failed_call(chat_server: Any, make_model: Any) -> None:
    chat_server.fail(500)
    for garbage in GARBAGE[:2]:
        chat_server.garbage(garbage)
    model = make_model(max_retries=2)
    with pytest.raises(
        CallFailed, match=r"malformed response \(the body is not a JSON object\) after 3 attempts$"
    ) as caught:
        model.generate(PROMPTS[:1], Decoding())
    assert caught.value.error_class == "malformed response" and caught.value.attempts == 3
    assert len(chat_server.requests) == 3
    assert_no_key(caught.value)


def test_score_options_maps_tokens_and_renormalizes(chat_server: Any, make_model: Any) -> None:
    chat_server.top_logprobs = {
        "a": [(" like", -0.5), ("Like", -1.0), ("ne", -2.0), ("xyz", -0.1), (" ", -0.2)],
        "b": [("D", -3.0), ("dis", -1.0), ("Neutral", -4.0)],
        "c": [("yes", -0.1), ("no", -0.2)],
    }
    model = make_model()
    scores = model.score_options([ChatPrompt(user=u) for u in "abc"], OPTIONS)

    assert scores.shape == (3, 3)
    like, neutral = -0.5, -2.0
    total = math.log(math.exp(like) + math.exp(neutral))
    np.testing.assert_allclose(scores[0], [like - total, neutral - total, -np.inf])
    assert scores[1, 0] == -np.inf and scores[1, 2] > scores[1, 1]
    for row in scores[:2]:
        assert np.exp(row).sum() == pytest.approx(1.0)
    assert np.isnan(scores[2]).all()
    body = chat_server.requests[0].body
    assert (body["temperature"], body["max_tokens"], body["logprobs"]) == (0, 1, True)
    assert body["top_logprobs"] == 20


def test_score_options_without_logprobs_raises(chat_server: Any, make_model: Any) -> None:
    model = make_model()
    with pytest.raises(LogProbsUnavailable, match="endpoint returned no log-probabilities"):
        model.score_options(PROMPTS[:1], OPTIONS)
    assert issubclass(LogProbsUnavailable, ModelError)
    assert len(chat_server.requests) == 1


def test_choose_option_parses_strictly(chat_server: Any, make_model: Any) -> None:
    answers = {
        "a": "like",
        "b": " Like.",
        "c": '"neutral"',
        "d": "I think like",
        "e": "",
        "f": "likes",
        "g": "DISLIKE\n",
    }
    chat_server.answers = answers
    model = make_model()
    chosen = model.choose_option([ChatPrompt(user=u) for u in answers], OPTIONS)
    assert chosen == ["like", "like", "neutral", None, None, None, "dislike"]
    body = chat_server.requests[0].body
    assert body["temperature"] == 0 and body["max_tokens"] <= 8


def test_parse_option_needs_exactly_one_match() -> None:
    assert parse_option("'Neutral.'", OPTIONS) == "neutral"
    assert parse_option("like, probably", OPTIONS) is None
    assert parse_option("yes", ["Yes", "yes"]) is None


def test_generate_each_hands_over_failures_and_starts_no_call_ahead(
    chat_server: Any, make_model: Any
) -> None:
    chat_server.delay_s = 0.01
    chat_server.fail(400, body=b'{"error": "prompt too long"}')
    model = make_model(max_concurrency=2, timeout_s=5)
    tasks = [GenerationTask(ChatPrompt(user=f"user {i}"), Decoding(seed=1), 0) for i in range(10)]
    outcomes: dict[int, Any] = {}
    for batch in model.generate_each(tasks):
        outcomes.update(batch)
        # While the consumer holds a batch (storing it), no request beyond the two in flight
        # may start: whatever it stored before asking again is all a kill can lose.
        time.sleep(0.05)
        assert len(chat_server.requests) <= len(outcomes) + 2
    assert sorted(outcomes) == list(range(10))
    failed = [o for o in outcomes.values() if isinstance(o, CallFailed)]
    assert len(failed) == 1 and failed[0].error_class == "HTTP 400" and failed[0].attempts == 1
    assert failed[0].__traceback__ is None
    for position, outcome in outcomes.items():
        if not isinstance(outcome, CallFailed):
            assert outcome.text == chat_server.completion_text(
                tasks[position].prompt.as_messages(), sample_seed(1, 0)
            )


def test_sustained_429s_lower_concurrency_which_recovers(chat_server: Any, make_model: Any) -> None:
    # 0.05 s a reply, so that requests sent at concurrency 3-4 overlap at the server even when
    # the client's threads start late on busy cores (at 0.02 s the server once saw at most 2).
    chat_server.delay_s = 0.05
    for _ in range(12):
        chat_server.fail(429, retry_after="0.05")
    model = make_model(max_concurrency=4, timeout_s=5, max_retries=10, backoff_max_s=1)
    prompts = [ChatPrompt(user=f"Describe user {i}.") for i in range(40)]
    result = model.generate(prompts, Decoding())

    assert [row[0].text for row in result] == [
        chat_server.completion_text(p.as_messages(), sample_seed(0, 0)) for p in prompts
    ]
    stats = model.call_stats()
    assert (stats.rate_limited, stats.min_concurrency, stats.max_concurrency) == (12, 1, 4)
    assert stats.requests == 52 and stats.retries == 12
    # At least the 0.05 s Retry-After of the last, sequential 429s; far below their sum.
    assert 0.05 <= stats.rate_limit_wait_s < 12 * 0.05 * 4
    in_flight = [r.in_flight for r in chat_server.requests]
    # One at a time right after the 429s, two after the first answer (+1 each: the server may
    # not yet have counted the previous reply out), back to four once answers came.
    assert in_flight[12] <= 2 and in_flight[13] <= 3
    assert max(in_flight[-16:]) >= 3


def test_a_single_429_is_not_sustained(chat_server: Any, make_model: Any) -> None:
    chat_server.fail(429, retry_after="0")
    model = make_model(max_concurrency=4)
    model.generate(PROMPTS, Decoding())
    stats = model.call_stats()
    assert (stats.rate_limited, stats.min_concurrency) == (1, 4)
