"""The deployment choice and the team deployment's early failures, without any service running:
every service URL points at a loopback port nothing listens on."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lettingo_dagster.deployment import (
    DEFAULT_QUEUE,
    QUEUE_TAG,
    TRAINING_QUEUE,
    DeploymentError,
    ServiceUnavailable,
    TeamSettings,
    check_broker,
    check_mlflow,
    check_postgres,
    deployment,
    executor_for_deployment,
    prepare_team_home,
    queue_for_step,
    redact,
    route_plan,
    team_instance_config,
)

ROOT = Path(__file__).resolve().parents[2]
SERVICE_VARIABLES = [variable for variable, _ in TeamSettings.ENV.values()]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def isolated_env() -> Iterator[None]:
    """The team commands export their settings into os.environ; give them back afterwards."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def services_down(monkeypatch: pytest.MonkeyPatch, fresh_home: Path) -> dict[str, str]:
    urls = {
        "LETTINGO_PG_URL": f"postgresql://lettingo:s3cret@127.0.0.1:{closed_port()}/dagster",
        "LETTINGO_BROKER_URL": f"redis://127.0.0.1:{closed_port()}/0",
        "LETTINGO_RESULT_BACKEND": f"redis://127.0.0.1:{closed_port()}/1",
        "LETTINGO_MLFLOW_URI": f"http://127.0.0.1:{closed_port()}",
    }
    for variable, value in urls.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("LETTINGO_DEPLOYMENT", "team")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return urls


def test_local_is_the_default_and_keeps_dagsters_executor(monkeypatch) -> None:
    monkeypatch.delenv("LETTINGO_DEPLOYMENT", raising=False)
    assert deployment() == "local"
    assert executor_for_deployment() is None
    from lettingo_dagster.definitions import defs
    from lettingo_dagster.tracking import MlflowTracking

    assert defs.resolve_job_def("lettingo_pipeline").executor_def.name == (
        "multi_or_in_process_executor"
    )
    assert MlflowTracking().tracking_uri.startswith("sqlite:///")


def test_an_unknown_deployment_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("LETTINGO_DEPLOYMENT", "cluster")
    with pytest.raises(DeploymentError, match="LETTINGO_DEPLOYMENT='cluster'.*local, team"):
        deployment()


def test_team_reads_every_service_from_the_environment(services_down) -> None:
    settings = TeamSettings.from_env()
    # SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql:// URL; psycopg2 is installed.
    assert settings.postgres_url.startswith("postgresql+psycopg2://lettingo:s3cret@")
    assert settings.broker_url == services_down["LETTINGO_BROKER_URL"]
    executor = executor_for_deployment()
    assert executor is not None and executor.name == "lettingo_team_celery"
    from lettingo_dagster.tracking import MlflowTracking

    tracking = MlflowTracking()
    assert tracking.tracking_uri == services_down["LETTINGO_MLFLOW_URI"]
    assert tracking.ui_url == services_down["LETTINGO_MLFLOW_URI"]


def test_team_instance_is_the_local_one_on_postgres(services_down, isolated_env) -> None:
    local = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    team = team_instance_config()
    assert team["storage"] == {"postgres": {"postgres_url": {"env": "LETTINGO_PG_URL"}}}
    assert team["concurrency"]["pools"]["default_limit"] == local["concurrency"]["pools"]["default_limit"]  # fmt: skip
    assert team["concurrency"]["pools"]["granularity"] == "op"
    assert team["concurrency"]["runs"] == local["concurrency"]["runs"]
    assert team["telemetry"] == {"enabled": False}

    home = prepare_team_home()
    assert home == Path(os.environ["LETTINGO_HOME"]) / "team" / "dagster"
    assert os.environ["DAGSTER_HOME"] == str(home)
    assert "s3cret" not in (home / "dagster.yaml").read_text()  # the URL stays in the environment
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(str(home))  # a valid instance config for dagster 1.13
    assert "postgres" in config["storage"]


def test_training_and_generation_steps_have_their_own_queue() -> None:
    from dagster._core.execution.api import create_execution_plan

    from lettingo_dagster.definitions import defs

    job = defs.resolve_job_def("lettingo_pipeline")
    plan = route_plan(create_execution_plan(job, tags={"dagster/partition": "synthetic"}))
    queues = {key: plan.get_step_by_key(key).tags[QUEUE_TAG] for key in plan.step_keys_to_execute}
    training = {key for key, queue in queues.items() if queue == TRAINING_QUEUE}
    assert training == {"base_generator", "sampled_profiles", "dpo_checkpoint", "heldout_profiles"}
    assert {queues[key] for key in ("interactions", "reward_scores", "evaluation_report")} == {
        DEFAULT_QUEUE
    }
    # An op's own tag wins over the table.
    assert queue_for_step("interactions", {QUEUE_TAG: "big-memory"}) == "big-memory"


def test_passwords_never_reach_messages() -> None:
    assert redact("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def _fails_fast(check, *args) -> str:
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        check(*args)
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_each_service_down_is_one_line_naming_it(services_down) -> None:
    settings = TeamSettings.from_env()
    message = _fails_fast(check_postgres, settings.postgres_url)
    assert message.startswith("PostgreSQL (Dagster run and event storage) is not reachable at ")
    assert "s3cret" not in message and "***" in message
    message = _fails_fast(check_broker, settings.broker_url)
    assert message.startswith(f"The Celery broker (Redis) is not reachable at {settings.broker_url}")  # fmt: skip
    message = _fails_fast(check_mlflow, settings.mlflow_uri)
    assert message.startswith(f"The MLflow tracking server is not reachable at {settings.mlflow_uri}")  # fmt: skip


def test_a_malformed_database_url_is_named(services_down) -> None:
    message = _fails_fast(check_postgres, "postgresql://lettingo@127.0.0.1:notaport/dagster")
    assert message.startswith("PostgreSQL (Dagster run and event storage) is not reachable")


def test_team_run_stops_before_anything_is_written(services_down, isolated_env, capsys) -> None:
    from lettingo_dagster.deployment.__main__ import main

    assert main(["run", "--preset", "ci", "--dataset", "synthetic"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: PostgreSQL (Dagster run and event storage)")
    home = Path(os.environ["LETTINGO_HOME"])
    assert not (home / "warehouse.duckdb").exists()


# A job on the team executor whose one step would write to the warehouse; built at import from
# the environment the test sets, as the code location would be.
def _team_job() -> dg.JobDefinition:
    from lettingo_dagster.deployment import team_executor

    @dg.op
    def write_rows() -> None:
        import duckdb

        with duckdb.connect(os.environ["LETTINGO_WAREHOUSE_UNDER_TEST"]) as con:
            con.execute("CREATE TABLE written AS SELECT 1 AS x")

    @dg.job(executor_def=team_executor())
    def team_job() -> None:
        write_rows()

    return team_job


def test_a_run_with_the_broker_down_fails_before_its_first_step(
    services_down, isolated_env, tmp_path, monkeypatch
) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("LETTINGO_WAREHOUSE_UNDER_TEST", str(warehouse))
    # A persistent sqlite instance: the executor, not the storage, is under test here.
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(dg.reconstructable(_team_job), instance, raise_on_error=False)
        assert not result.success
        events = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event]
        (failure,) = [e for e in events if e.is_run_failure]
        assert failure.event_specific_data.error.message.startswith(
            "lettingo_dagster.deployment.ServiceUnavailable: The Celery broker (Redis) is not "
            "reachable at redis://127.0.0.1:"
        )
        assert not any(e.is_step_start for e in events)
    assert not warehouse.exists()


def test_pools_exist_before_the_first_claim(tmp_path) -> None:
    from lettingo_dagster.deployment import ensure_pools

    overrides = {"concurrency": {"pools": {"default_limit": 1}}}
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        ensure_pools(instance, {"warehouse", "model"})
        ensure_pools(instance, {"warehouse"})  # an existing pool is left as it is
        storage = instance.event_log_storage
        assert storage.get_concurrency_keys() == {"warehouse", "model"}
        assert storage.get_concurrency_info("warehouse").slot_count == 1


# `lettingo run` and `lettingo ui` follow LETTINGO_DEPLOYMENT through the same commands as
# `make team-run` and `make team-ui`.


@pytest.fixture
def team_commands(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """The team deployment's run and UI, recording what they were asked for, and the local
    instance's set-up failing the test if it is reached."""
    import lettingo_dagster.cli as cli
    import lettingo_dagster.deployment.__main__ as team

    called: dict[str, tuple] = {}

    def run_team(*args, **kwargs) -> int:
        called["run"] = (args, kwargs)
        return 0

    def serve_team_ui(*args, **kwargs) -> int:
        called["ui"] = (args, kwargs)
        return 0

    def local_home() -> Path:
        called["local"] = ()
        raise AssertionError("the local instance was set up")

    monkeypatch.setattr(team, "run_team", run_team)
    monkeypatch.setattr(team, "serve_team_ui", serve_team_ui)
    monkeypatch.setattr(cli, "prepare_dagster_home", local_home)
    return called


def test_lettingo_run_and_ui_under_team_use_the_team_deployment(
    monkeypatch, fresh_home, team_commands
) -> None:
    from lettingo_dagster.cli import main

    monkeypatch.setenv("LETTINGO_DEPLOYMENT", "team")
    argv = ["run", "--preset", "ci", "--dataset", "synthetic", "--log-level", "WARNING"]
    assert main(argv) == 0
    assert team_commands["run"] == (("ci", ["synthetic"]), {"log_level": "WARNING"})
    assert main(["ui", "--port", "3999"]) == 0
    assert team_commands["ui"] == (("127.0.0.1", 3999), {})
    assert "local" not in team_commands and not (fresh_home / "dagster").exists()


@pytest.mark.parametrize("value", [None, "", "local", " Local "])
def test_lettingo_run_and_ui_stay_local_by_default(monkeypatch, team_commands, value) -> None:
    from lettingo_dagster.cli import main

    if value is None:
        monkeypatch.delenv("LETTINGO_DEPLOYMENT", raising=False)
    else:
        monkeypatch.setenv("LETTINGO_DEPLOYMENT", value)
    for argv in (["run", "--preset", "ci"], ["ui"]):
        team_commands.pop("local", None)
        with pytest.raises(AssertionError, match="the local instance was set up"):
            main(argv)
        assert "local" in team_commands
    assert "run" not in team_commands and "ui" not in team_commands


def test_an_unknown_deployment_stops_lettingo_run_and_ui(
    monkeypatch, fresh_home, team_commands, capsys
) -> None:
    from lettingo_dagster.cli import main

    monkeypatch.setenv("LETTINGO_DEPLOYMENT", "cluster")
    for argv in (["run", "--preset", "ci"], ["ui"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "error: LETTINGO_DEPLOYMENT='cluster' is not a deployment; use one of local, team"
        ]
    assert not team_commands and not fresh_home.exists()


def test_lettingo_run_under_team_resolves_the_team_instance_and_executor(
    services_down, isolated_env, monkeypatch, capsys
) -> None:
    """Everything `lettingo run` decides before the first run is launched, with the services'
    checks and the launch itself replaced: nothing is started."""
    import lettingo_dagster.deployment as deployment_module
    from lettingo_dagster.cli import main

    launched: dict[str, object] = {}

    class Instance:
        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    class Result:
        run_id, success, all_events = "fake-run", True, []

        def get_asset_materialization_events(self) -> list:
            return []

    def get_instance() -> Instance:
        launched["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
        return Instance()

    def execute_job(job, instance, **kwargs) -> Result:
        launched["job"], launched["run"] = job, kwargs
        return Result()

    monkeypatch.setattr(deployment_module, "preflight", lambda *args, **kwargs: None)
    monkeypatch.setattr(dg.DagsterInstance, "get", staticmethod(get_instance))
    monkeypatch.setattr(dg, "execute_job", execute_job)

    argv = ["run", "--preset", "ci", "--dataset", "synthetic", "--log-level", "WARNING"]
    assert main(argv) == 0, capsys.readouterr()
    home = Path(os.environ["LETTINGO_HOME"])
    # The team instance, on PostgreSQL, not the local sqlite one.
    assert launched["DAGSTER_HOME"] == str(home / "team" / "dagster")
    assert not (home / "dagster").exists()
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(launched["DAGSTER_HOME"])
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "LETTINGO_PG_URL"}}}
    # A job the Celery workers rebuild from the code location, with this run's preset.
    assert launched["job"].get_python_origin().repository_origin.code_pointer.module == (
        "lettingo_dagster.definitions"
    )
    assert launched["run"] == {
        "run_config": {
            "resources": {"settings": {"config": {"preset": "ci"}}},
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
        "tags": {"dagster/partition": "synthetic", "lettingo/preset": "ci"},
    }
    # What the job's definitions resolve in this environment (and the workers' environment).
    assert os.environ["LETTINGO_DEPLOYMENT"] == "team"
    assert executor_for_deployment().name == "lettingo_team_celery"
    from lettingo_dagster.tracking import MlflowTracking

    assert MlflowTracking().tracking_uri == services_down["LETTINGO_MLFLOW_URI"]


def _team_tracking_job() -> dg.JobDefinition:
    """`_team_job` with a step that tracks to MLflow, so the run needs the tracking server."""
    from lettingo_dagster.deployment import team_executor

    @dg.op(required_resource_keys={"mlflow"})
    def write_and_track() -> None:
        import duckdb

        with duckdb.connect(os.environ["LETTINGO_WAREHOUSE_UNDER_TEST"]) as con:
            con.execute("CREATE TABLE written AS SELECT 1 AS x")

    @dg.job(
        executor_def=team_executor(),
        resource_defs={"mlflow": dg.ResourceDefinition.none_resource()},
    )
    def team_tracking_job() -> None:
        write_and_track()

    return team_tracking_job


def test_a_run_with_the_mlflow_server_down_fails_before_its_first_step(
    services_down, isolated_env, tmp_path, monkeypatch
) -> None:
    import lettingo_dagster.deployment as deployment_module

    # The broker and its workers answer; the MLflow server (a closed port) does not.
    monkeypatch.setattr(deployment_module, "check_broker", lambda url: None)
    monkeypatch.setattr(deployment_module, "check_workers", lambda settings, queues: None)
    warehouse = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("LETTINGO_WAREHOUSE_UNDER_TEST", str(warehouse))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(
            dg.reconstructable(_team_tracking_job), instance, raise_on_error=False
        )
        assert not result.success
        events = [r.dagster_event for r in instance.all_logs(result.run_id) if r.dagster_event]
        (failure,) = [e for e in events if e.is_run_failure]
        assert failure.event_specific_data.error.message.startswith(
            "lettingo_dagster.deployment.ServiceUnavailable: The MLflow tracking server is not "
            f"reachable at {services_down['LETTINGO_MLFLOW_URI']}"
        )
        assert not any(e.is_step_start for e in events)
    assert not warehouse.exists()


@pytest.mark.parametrize(
    ("up", "service"),
    [
        ((), "PostgreSQL (Dagster run and event storage)"),
        (("check_postgres",), "The Celery broker (Redis)"),
        (("check_postgres", "check_broker", "check_workers"), "The MLflow tracking server"),
    ],
)
def test_lettingo_run_under_team_names_the_first_service_down(
    services_down, isolated_env, monkeypatch, capsys, up, service
) -> None:
    """Each service in turn is the first one down (those before it answer): `lettingo run`
    stops with one line naming it, before any instance, run or warehouse is written."""
    import lettingo_dagster.deployment as deployment_module
    from lettingo_dagster.cli import main

    for check in up:
        monkeypatch.setattr(deployment_module, check, lambda *args, **kwargs: None)
    assert main(["run", "--preset", "ci", "--dataset", "synthetic"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {service} is not reachable at "), err
    home = Path(os.environ["LETTINGO_HOME"])
    assert not (home / "warehouse.duckdb").exists()
    assert not (home / "dagster").exists() and not (home / "team" / "dagster").exists()
