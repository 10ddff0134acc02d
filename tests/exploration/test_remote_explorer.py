"""`sampled_profiles` with an OpenAI-compatible explorer through a bad hour: a real server on
loopback (tests/chat_server.py) cuts JSON bodies off, answers without `choices`, rate-limits
with Retry-After, fails with 500 and answers past the timeout; a real Dagster instance and
DuckDB warehouse. Two samples for each of the ci preset's 80 users: 160 calls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml
from chat_server import Chaos, ChatServer
from synthetic import TINY_GENERATOR, write_movielens_atomic

from lettingo_dagster.data.assets import data_assets
from lettingo_dagster.dataset_assets import dataset_partitions
from lettingo_dagster.exploration.assets import sampled_profiles
from lettingo_dagster.paths import PRESETS_DIR
from lettingo_dagster.resources import SettingsResource, Warehouse

pytestmark = pytest.mark.integration

KEY = "sk-remote-Hq7Zt2-LEAK-CHECK-9d"
KEY_ENV = "LETTINGO_TEST_REMOTE_KEY"
USERS = 80
SAMPLES = 2
CALLS = USERS * SAMPLES
CONCURRENCY = 4
# The mix of faults per attempt of a bad hour; two calls fail all five attempts (500), and no
# other call meets more than four faults in a row.
BAD_HOUR = Chaos(
    truncated=0.05,
    malformed=0.02,
    rate_limited=0.15,
    server_error=0.10,
    slow=0.05,
    doomed=frozenset({17, 101}),
    max_faults=4,
)


@dataclass(frozen=True)
class World:
    home: Path  # LETTINGO_HOME: the model-call cache
    warehouse: Path  # task_samples of the 80 train and calibration users
    generator: str  # a base generator's folder


def trained_generator(folder: str) -> dg.AssetsDefinition:
    """The base_generator asset's value without training it again in every test."""

    @dg.asset(key="base_generator", partitions_def=dataset_partitions)
    def base_generator() -> str:
        return folder

    return base_generator


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """task_samples, a random toy base generator (a preset needs one as DPO policy) whose
    samples are cached once, and the API key in the environment."""
    from lettingo_dagster.exploration import base_generator as bg

    root = tmp_path_factory.mktemp("remote")
    data = Path(os.environ["LETTINGO_DATA"]) / "synthetic"
    write_movielens_atomic(data, users=220, items=150, min_ratings=25, max_ratings=60, seed=11)
    tokenizer = bg.train_tokenizer(["Toy Story (1995) Comedy: like 5"] * 20, 300)
    generator = root / "generator"
    bg.build_model(tokenizer, TINY_GENERATOR).save_pretrained(generator)
    tokenizer.save_pretrained(generator)
    world = World(root / "home", root / "warehouse.duckdb", str(generator))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LETTINGO_HOME", str(world.home))
        patch.setenv(KEY_ENV, KEY)
        result = dg.materialize(
            data_assets,
            partition_key="synthetic",
            instance=dg.DagsterInstance.ephemeral(),
            resources={
                "settings": SettingsResource(preset="ci"),
                "warehouse": Warehouse(database=str(world.warehouse)),
            },
        )
        assert result.success
        with duckdb.connect(str(world.warehouse), read_only=True) as con:
            (users,) = con.execute(
                "SELECT count(DISTINCT user_id) FROM task_samples "
                "WHERE dataset = 'synthetic' AND split IN ('train', 'calibration')"
            ).fetchone()
        assert users == USERS
        presets = write_preset(root / "presets", None)
        assert materialize(presets, world, dg.DagsterInstance.ephemeral()).success
        yield world


@pytest.fixture
def server() -> Iterator[ChatServer]:
    server = ChatServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def no_retry_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dagster's real waits between a step's tries (about 30 s, then 90 s) are not what these
    tests are about: the tries follow each other at once."""
    monkeypatch.setattr(dg.RetryPolicy, "calculate_delay", lambda self, attempt: 0)


def write_preset(folder: Path, url: str | None) -> Path:
    """The ci preset with the endpoint explorer at `url` first (none without one), its timeouts
    and waits scaled down to fractions of a second, and the base generator after it."""
    preset = yaml.safe_load((PRESETS_DIR / "ci.yaml").read_text())
    remote = {
        "name": "remote",
        "kind": "openai",
        "base_url": url,
        "model": "test-model",
        "api_key_env": KEY_ENV,
        "samples_per_user": SAMPLES,
        "max_concurrency": CONCURRENCY,
        "timeout_s": 0.5,
        "max_retries": 4,
        "retry_backoff_s": 0.02,
        "decoding": {"temperature": 1.0, "max_new_tokens": 40, "seed": 0},
    }
    generator = {
        "name": "base-generator",
        "kind": "base_generator",
        "decoding": {"temperature": 1.0, "max_new_tokens": 4, "seed": 0},
    }
    preset["exploration"]["explorers"] = [remote, generator] if url else [generator]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "remote.yaml").write_text(yaml.safe_dump(preset), encoding="utf-8")
    return folder


def materialize(
    presets: Path, world: World, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [trained_generator(world.generator), sampled_profiles],
        partition_key="synthetic",
        instance=instance,
        resources={
            "settings": SettingsResource(preset="remote", presets_dir=str(presets)),
            "warehouse": Warehouse(database=str(world.warehouse)),
        },
        raise_on_error=False,
    )


def failures_of(result: dg.ExecuteInProcessResult) -> str:
    """The step's errors, for the assertion message of a run that should have succeeded."""
    return "\n".join(
        str(e.event_specific_data.error)
        for e in result.all_events
        if e.event_type_value in ("STEP_FAILURE", "STEP_UP_FOR_RETRY")
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "sampled_profiles"
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def remote_rows(warehouse: Path) -> list[tuple[str, int]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "SELECT user_id, sample_index FROM sampled_profiles WHERE explorer = 'remote'"
        ).fetchall()


def failure_rows(warehouse: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(
            "SELECT user_id, explorer, sample_index, error_class, attempts, message "
            "FROM model_call_failures WHERE dataset = 'synthetic'"
        ).fetchall()


def files_containing(root: Path, secret: str) -> list[Path]:
    return [
        path for path in root.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()
    ]


def test_bad_hour_completes_within_the_budget_and_leaks_no_key(
    world: World,
    server: ChatServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    no_retry_waits: None,
) -> None:
    caplog.set_level("DEBUG")  # httpx and httpcore too
    server.chaos = BAD_HOUR
    presets = write_preset(tmp_path / "presets", server.url)
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    result = materialize(presets, world, instance)
    assert result.success, failures_of(result)

    meta = metadata(result)
    faults = Counter(r.fault for r in server.requests)
    failures = failure_rows(world.warehouse)
    failed = meta["failed_model_calls"]
    figures = (
        f"\nbad hour: {len(server.requests)} requests for {CALLS} calls, faults {dict(faults)}, "
        f"{failed} calls failed for good, rate-limit wait {meta['rate_limit_wait_s']} s"
    )
    # Every fault of the issue happened, and each was retried rather than ending the step.
    assert {"malformed", "HTTP 429", "HTTP 500", "slow"} <= set(faults)
    assert faults["malformed"] >= 5 and faults["HTTP 429"] >= 20
    assert failed == 2  # the budget: max_failed_call_share 0.02 of 160 calls, 3
    # The endpoint's answers are all the new calls: the base generator's come from the cache.
    assert len(failures) == failed and meta["new_model_calls"] == CALLS - failed
    for _, explorer, _, error_class, attempts, message in failures:
        assert (explorer, error_class, attempts) == ("remote", "HTTP 500", 5)
        assert KEY not in message
    # Users of failed calls simply lack those samples.
    kept = set(remote_rows(world.warehouse))
    assert len(kept) == CALLS - failed
    assert not {(user, j) for user, _, j, *_ in failures} & kept
    assert meta["rate_limit_wait_s"] > 0
    assert "rate_limit_wait_s" in meta["explorers"] and "failed_calls" in meta["explorers"]

    # The next run asks again for exactly the failed calls, and for nothing that was kept.
    server.chaos = None
    answered_before = set(server.answered)
    server.answered.clear()
    again = materialize(presets, world, instance)
    assert again.success, failures_of(again)
    assert len(server.answered) == failed and not set(server.answered) & answered_before
    assert metadata(again)["failed_model_calls"] == 0 and failure_rows(world.warehouse) == []
    assert len(remote_rows(world.warehouse)) == CALLS

    # The key went out with every request (the server even echoed it in its 500s) ...
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    # ... and is nowhere at rest: cache and home, warehouse, Dagster's event log and compute
    # logs, nor in any log line or output of the test process.
    assert files_containing(world.home, KEY) == []  # the model-call cache, models
    assert files_containing(world.warehouse.parent, KEY) == []
    assert files_containing(tmp_path / "dagster", KEY) == []
    assert KEY not in caplog.text
    out, err = capfd.readouterr()
    assert KEY not in out and KEY not in err
    events = instance.get_records_for_run(result.run_id).records
    assert all(KEY not in str(record.event_log_entry) for record in events)
    with capfd.disabled():
        print(figures)


def test_past_the_budget_the_step_fails_with_counts_after_its_retries(
    world: World, server: ChatServer, tmp_path: Path, no_retry_waits: None
) -> None:
    server.chaos = Chaos(doomed=frozenset(range(31, 39)))  # 8 calls answered 500 every time
    presets = write_preset(tmp_path / "presets", server.url)
    result = materialize(presets, world, dg.DagsterInstance.ephemeral())

    assert not result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == sampled_profiles.op.retry_policy.max_retries == 2
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.event_specific_data.error)
    print(f"\npast the budget: {message[:600]}")
    found = re.search(r"'remote': (\d+) of 160 model calls failed after their retries", message)
    assert found is not None and int(found.group(1)) >= 4
    budget = "more than max_failed_call_share 0.02 allows (3)"
    assert f"(HTTP 500 {found.group(1)}), {budget}" in message
    assert "calls not attempted" in message and "answers are cached" in message
    failures = failure_rows(world.warehouse)
    assert len(failures) == int(found.group(1)) and {f[3] for f in failures} == {"HTTP 500"}
    # Each try resumed from the cache: no call was answered twice.
    assert len(server.answered) == len(set(server.answered))


def test_a_dagster_retry_resumes_from_the_cache(
    world: World, server: ChatServer, tmp_path: Path, no_retry_waits: None
) -> None:
    # Five calls fail their first five attempts and are answered after that. The first try
    # meets the first four (more than the budget of 3) and stops; the second try gets those
    # four and meets the fifth (within the budget).
    server.chaos = Chaos(doomed=frozenset({3, 10, 20, 30, 150}), doomed_attempts=5)
    presets = write_preset(tmp_path / "presets", server.url)
    result = materialize(presets, world, dg.DagsterInstance.ephemeral())

    assert result.success, failures_of(result)
    assert [e.event_type_value for e in result.all_events].count("STEP_UP_FOR_RETRY") == 1
    # The second try asked only for what the first did not keep: no call answered twice. The
    # doomed calls the first try never reached fail in the second, within the budget.
    assert metadata(result)["failed_model_calls"] == len(failure_rows(world.warehouse)) == 1
    assert len(server.answered) == len(set(server.answered)) == CALLS - 1


CHILD = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from lettingo_dagster.dataset_assets import dataset_partitions
    from lettingo_dagster.exploration.assets import sampled_profiles
    from lettingo_dagster.resources import SettingsResource, Warehouse

    presets, warehouse, generator = sys.argv[1:4]

    @dg.asset(key="base_generator", partitions_def=dataset_partitions)
    def base_generator() -> str:
        return generator

    dg.materialize(
        [base_generator, sampled_profiles],
        partition_key="synthetic",
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "settings": SettingsResource(preset="remote", presets_dir=presets),
            "warehouse": Warehouse(database=warehouse),
        },
    )
    """
)


def test_sigkill_during_sampling_loses_at_most_the_calls_in_flight(
    world: World, server: ChatServer, tmp_path: Path, no_retry_waits: None
) -> None:
    from lettingo_dagster.models.openai_compat import OpenAICompatibleModel
    from lettingo_dagster.paths import model_cache_path

    server.delay_s = 0.02
    presets = write_preset(tmp_path / "presets", server.url)
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script), str(presets), str(world.warehouse), world.generator],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def kill_after_126(answers: int) -> None:
        if answers == 126:
            os.kill(child.pid, signal.SIGKILL)

    server.on_answer = kill_after_126
    output, _ = child.communicate(timeout=180)
    assert child.returncode == -signal.SIGKILL, output.decode()[-3000:]
    server.on_answer = None
    answered_before = list(server.answered)
    with OpenAICompatibleModel(base_url=server.url, model="test-model") as remote:
        fingerprint = remote.fingerprint
    with duckdb.connect(str(model_cache_path()), read_only=True) as con:
        (kept,) = con.execute(
            "SELECT count(*) FROM model_calls WHERE model_fingerprint = ?", [fingerprint]
        ).fetchone()
    lost = len(answered_before) - kept

    server.answered.clear()
    rerun = materialize(presets, world, dg.DagsterInstance.ephemeral())
    assert rerun.success, failures_of(rerun)
    redone = set(server.answered) & set(answered_before)
    print(
        f"\nkill: {len(answered_before)} calls answered before SIGKILL, {kept} kept, "
        f"{lost} lost; the rerun made {len(server.answered)} calls, {len(redone)} of them redone"
    )
    assert len(answered_before) >= 126 and 0 <= lost <= CONCURRENCY
    # The rerun asked for every call not kept, and for none that was.
    assert len(server.answered) == CALLS - kept and len(redone) == lost
    assert metadata(rerun)["new_model_calls"] == CALLS - kept
    assert len(remote_rows(world.warehouse)) == CALLS
