"""Where the graph runs, chosen by `LETTINGO_DEPLOYMENT` (no code edits).

- `local` (the default): the sqlite instance under `LETTINGO_HOME`, Dagster's multiprocess
  executor, MLflow in a sqlite file.
- `team`: run, event, schedule and sensor storage and the pools' slots in PostgreSQL
  (`dagster-postgres`), steps on Celery workers through a Redis broker (`dagster-celery`), the
  steps that train or sample the generator on their own queue, and an MLflow tracking server
  behind the same `MlflowTracking` resource.

Every service is named by one URL in the environment, read by the orchestrating process and by
the workers alike. Before a team run sends its first step, the executor checks the broker, the
workers and the MLflow server and fails the run with one line naming the service that is down,
so nothing is half-written to the warehouse. `python -m lettingo_dagster.deployment` stands the
services up on this machine and runs the graph through them; `lettingo run` and `lettingo ui`
call the same run and UI when the deployment is `team` (docs/scaling-out.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import yaml

from lettingo_dagster.paths import PROJECT_ROOT, lettingo_home

DEPLOYMENT_ENV = "LETTINGO_DEPLOYMENT"
DEPLOYMENTS = ("local", "team")
DEPLOY_DIR = PROJECT_ROOT / "deploy"
TEAM_INSTANCE_OVERLAY = DEPLOY_DIR / "team" / "dagster.yaml"

# Celery queues: every step goes to `dagster` (dagster-celery's default) except the steps that
# train or sample the generator, which go to `training`, so GPU machines can consume only those.
DEFAULT_QUEUE = "dagster"
TRAINING_QUEUE = "training"
TRAINING_STEPS = frozenset(
    {"base_generator", "sampled_profiles", "dpo_checkpoint", "heldout_profiles"}
)
QUEUE_TAG = "dagster-celery/queue"

# A service that does not answer within this many seconds counts as down.
CONNECT_TIMEOUT_S = 5


class DeploymentError(RuntimeError):
    """A deployment setting or service is wrong; the message says which and what to do."""


class ServiceUnavailable(DeploymentError):
    """One service of the team deployment cannot be reached."""

    def __init__(self, service: str, where: str, reason: str, hint: str = "") -> None:
        self.service = service
        reason = " ".join(str(reason).split()) or "no answer"
        message = f"{service} is not reachable at {where}: {reason}"
        super().__init__(f"{message} ({hint})" if hint else message)


def deployment() -> str:
    """The active deployment: `LETTINGO_DEPLOYMENT`, default `local`."""
    name = os.environ.get(DEPLOYMENT_ENV, "").strip().lower() or "local"
    if name not in DEPLOYMENTS:
        raise DeploymentError(
            f"{DEPLOYMENT_ENV}={name!r} is not a deployment; use one of {', '.join(DEPLOYMENTS)}"
        )
    return name


def is_team() -> bool:
    return deployment() == "team"


@dataclass(frozen=True)
class TeamSettings:
    """The team deployment's services, one URL each (defaults: the stack `make team-up` starts
    on loopback ports). Credentials belong in the URLs' environment variables, never in files."""

    postgres_url: str
    mlflow_db_url: str
    broker_url: str
    result_backend: str
    mlflow_uri: str
    step_concurrency: int
    training_concurrency: int

    ENV = {
        "postgres_url": ("LETTINGO_PG_URL", "postgresql+psycopg2://lettingo@127.0.0.1:55432/dagster"),
        "mlflow_db_url": ("LETTINGO_MLFLOW_DB_URL", "postgresql+psycopg2://lettingo@127.0.0.1:55432/mlflow"),
        "broker_url": ("LETTINGO_BROKER_URL", "redis://127.0.0.1:56379/0"),
        "result_backend": ("LETTINGO_RESULT_BACKEND", "redis://127.0.0.1:56379/1"),
        "mlflow_uri": ("LETTINGO_MLFLOW_URI", "http://127.0.0.1:55000"),
        "step_concurrency": ("LETTINGO_STEP_WORKERS", "2"),
        "training_concurrency": ("LETTINGO_TRAINING_WORKERS", "1"),
    }  # fmt: skip

    @classmethod
    def from_env(cls) -> TeamSettings:
        values: dict[str, Any] = {}
        for field, (variable, default) in cls.ENV.items():
            value = os.environ.get(variable, "").strip() or default
            if field.endswith("concurrency"):
                try:
                    values[field] = max(1, int(value))
                except ValueError as exc:
                    raise DeploymentError(f"{variable}={value!r} is not a number") from exc
            elif field.endswith("db_url") or field == "postgres_url":
                values[field] = with_psycopg2(value)
            else:
                values[field] = value
        return cls(**values)


def with_psycopg2(url: str) -> str:
    """SQLAlchemy 2.1 reads a bare `postgresql://` as the psycopg 3 driver, which is not
    installed; both Dagster and the MLflow server get psycopg2 spelled out."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg2://{rest}"
    return url


def redact(url: str) -> str:
    """A URL fit for logs and messages: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


# ---------------------------------------------------------------------------------------------
# The Dagster instance


def team_dagster_home() -> Path:
    """`DAGSTER_HOME` when set, else a folder of its own under `LETTINGO_HOME`, so the local
    sqlite instance and the team instance never overwrite each other's dagster.yaml."""
    override = os.environ.get("DAGSTER_HOME")
    return (
        Path(override).expanduser().resolve() if override else lettingo_home() / "team" / "dagster"
    )


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def team_instance_config() -> dict[str, Any]:
    """The project's dagster.yaml (telemetry, pools, run limits) with deploy/team/dagster.yaml
    over it (PostgreSQL storage): one source for the settings both deployments share."""
    base = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text(encoding="utf-8")) or {}
    overlay = yaml.safe_load(TEAM_INSTANCE_OVERLAY.read_text(encoding="utf-8")) or {}
    return _merge(base, overlay)


def prepare_team_home() -> Path:
    """Write the team instance's dagster.yaml and point `DAGSTER_HOME` at it."""
    home = team_dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    text = (
        "# Written by lettingo_dagster.deployment from dagster.yaml and deploy/team/dagster.yaml;\n"
        "# edit those instead.\n" + yaml.safe_dump(team_instance_config(), sort_keys=False)
    )
    target = home / "dagster.yaml"
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# ---------------------------------------------------------------------------------------------
# Early checks of each service


def _postgres_dsn(url: str) -> str:
    # SQLAlchemy's driver suffix (`postgresql+psycopg2://`) is not part of a libpq URL.
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def check_postgres(url: str, role: str = "Dagster run and event storage") -> None:
    import psycopg2

    try:
        psycopg2.connect(_postgres_dsn(url), connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg2.Error as exc:
        lines = str(exc).strip().splitlines()
        raise ServiceUnavailable(
            f"PostgreSQL ({role})", redact(url), lines[0] if lines else type(exc).__name__,
            "check LETTINGO_PG_URL, or start the local stack with `make team-up`",
        ) from None  # fmt: skip


def check_broker(url: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            connection.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT_S
            )
    except Exception as exc:  # kombu wraps every transport's error differently
        raise ServiceUnavailable(
            "The Celery broker (Redis)", redact(url), str(exc) or type(exc).__name__,
            "check LETTINGO_BROKER_URL, or start the local stack with `make team-up`",
        ) from None  # fmt: skip


def check_workers(settings: TeamSettings, queues: Iterable[str]) -> None:
    """Every queue the run will use has a worker; otherwise its steps would wait forever."""
    from celery import Celery

    wanted = set(queues)
    app = Celery("lettingo-check", broker=settings.broker_url, backend=settings.result_backend)
    consumed: set[str] = set()
    try:
        # Busy workers answer from their main process; ask twice before calling them absent.
        for _ in range(2):
            replies = app.control.inspect(timeout=CONNECT_TIMEOUT_S / 2).active_queues() or {}
            consumed = {queue["name"] for found in replies.values() for queue in found}
            if wanted <= consumed:
                return
    except Exception as exc:
        raise ServiceUnavailable(
            "The Celery broker (Redis)", redact(settings.broker_url), str(exc)
        ) from None
    finally:
        app.close()
    missing = ", ".join(sorted(wanted - consumed))
    raise ServiceUnavailable(
        "Celery workers", redact(settings.broker_url),
        f"no worker consumes queue(s) {missing}",
        "start them with `make team-up`, or `celery -A dagster_celery.app worker -Q QUEUE`",
    )  # fmt: skip


def check_mlflow(uri: str) -> None:
    """An HTTP tracking server answers /health; file and database stores need no check."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    url = f"{uri.rstrip('/')}/health"
    try:
        response = httpx.get(url, timeout=CONNECT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
    else:
        if response.status_code == 200:
            return
        reason = f"/health answered HTTP {response.status_code}"
    raise ServiceUnavailable(
        "The MLflow tracking server", redact(uri), reason,
        "check LETTINGO_MLFLOW_URI, or start the local stack with `make team-up`",
    )  # fmt: skip


def preflight(
    settings: TeamSettings,
    *,
    storage: bool = True,
    queues: Iterable[str] = (DEFAULT_QUEUE, TRAINING_QUEUE),
    mlflow_uri: str | None = None,
) -> None:
    """Every service a team run needs, in the order a run would need them."""
    if storage:
        check_postgres(settings.postgres_url)
    check_broker(settings.broker_url)
    check_workers(settings, queues)
    if mlflow_uri:
        check_mlflow(mlflow_uri)


# ---------------------------------------------------------------------------------------------
# The executor


def queue_for_step(step_key: str, tags: Mapping[str, str] | None) -> str:
    """An op's own `dagster-celery/queue` tag wins; else training and generation steps go to
    the training queue and everything else to the default one."""
    if tags and tags.get(QUEUE_TAG):
        return tags[QUEUE_TAG]
    return TRAINING_QUEUE if step_key in TRAINING_STEPS else DEFAULT_QUEUE


def route_plan(execution_plan: Any) -> Any:
    """The plan with each step's queue written into its `dagster-celery/queue` tag, which is
    what dagster-celery's execution loop routes on (and names in its log)."""
    routed = {}
    for handle, step in execution_plan.step_dict.items():
        tags = dict(step.tags or {})
        tags[QUEUE_TAG] = queue_for_step(step.key, tags)
        routed[handle] = step._replace(tags=tags)
    return execution_plan._replace(
        step_dict=routed, step_dict_by_key={step.key: step for step in routed.values()}
    )


def _mlflow_uri_for_run(run_config: Mapping[str, Any]) -> str:
    from lettingo_dagster.tracking import default_tracking_uri

    configured = (
        (run_config.get("resources") or {}).get("mlflow", {}).get("config", {}).get("tracking_uri")
    )
    return configured or default_tracking_uri()


def _required_resources(plan_context: Any, execution_plan: Any) -> set[str]:
    job = plan_context.job.get_definition()
    keys: set[str] = set()
    for step_key in execution_plan.step_keys_to_execute:
        step = execution_plan.get_step_by_key(step_key)
        keys |= set(job.get_node(step.node_handle).definition.required_resource_keys)
    return keys


def ensure_pools(instance: dg.DagsterInstance, pools: Iterable[str]) -> None:
    """Create each pool's row at the default limit before any step claims a slot.

    Dagster creates a pool when the first step of it claims a slot; on PostgreSQL, two runs doing
    that at the same moment make the second insert fail and abort its transaction, which fails
    that run. Here the loser of that race sees the winner's row and carries on."""
    import sqlalchemy.exc

    storage = instance.event_log_storage
    if instance.global_op_concurrency_default_limit is None:
        return
    for pool in pools:
        for attempt in range(5):
            if pool in storage.get_concurrency_keys():
                break
            try:
                storage.initialize_concurrency_limit_to_default(pool)
            except sqlalchemy.exc.DBAPIError:
                time.sleep(0.2 * (attempt + 1))


def team_executor() -> dg.ExecutorDefinition:
    """dagster-celery's executor, configured from the environment, that checks the services and
    routes the queues before the first step is sent."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

    class TeamCeleryExecutor(CeleryExecutor):
        def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
            settings = replace(
                TeamSettings.from_env(), broker_url=self.broker, result_backend=self.backend
            )
            plan = route_plan(execution_plan)
            queues = {
                plan.get_step_by_key(key).tags[QUEUE_TAG] for key in plan.step_keys_to_execute
            }
            needs_mlflow = "mlflow" in _required_resources(plan_context, plan)
            preflight(
                settings,
                storage=False,  # this run is already recorded in it
                queues=queues,
                mlflow_uri=_mlflow_uri_for_run(plan_context.dagster_run.run_config)
                if needs_mlflow
                else None,
            )
            ensure_pools(
                plan_context.instance,
                {plan.get_step_by_key(key).pool for key in plan.step_keys_to_execute} - {None},
            )
            plan_context.log.info(
                f"Team deployment: broker {redact(self.broker)}, queues {', '.join(sorted(queues))}"
                + (", MLflow server reachable" if needs_mlflow else "")
            )
            yield from super().execute(plan_context, plan)

    @dg.executor(
        name="lettingo_team_celery",
        config_schema=CELERY_CONFIG,
        requirements=dg.multiple_process_executor_requirements(),
    )
    def lettingo_team_celery(init_context: dg.InitExecutorContext) -> TeamCeleryExecutor:
        config = init_context.executor_config
        return TeamCeleryExecutor(
            broker=config.get("broker"),
            backend=config.get("backend"),
            include=config.get("include"),
            config_source=config.get("config_source"),
            retries=RetryMode.from_config(config["retries"]),
        )

    settings = TeamSettings.from_env()
    return lettingo_team_celery.configured(
        {"broker": settings.broker_url, "backend": settings.result_backend},
        name="lettingo_team_celery",
    )


def executor_for_deployment() -> dg.ExecutorDefinition | None:
    """The `Definitions` executor: None (Dagster's default multiprocess executor) for `local`."""
    return team_executor() if is_team() else None


def mlflow_tracking_uri() -> str | None:
    """The team deployment's MLflow server; None means the local sqlite store."""
    return TeamSettings.from_env().mlflow_uri if is_team() else None
