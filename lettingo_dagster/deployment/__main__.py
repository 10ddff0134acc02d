"""`python -m lettingo_dagster.deployment`: the team deployment's commands.

up | down | status     the local stack (PostgreSQL, Redis, MLflow server, Celery workers)
check                  is every service of the team URLs reachable?
run --preset NAME      materialize the graph through the Celery workers, recorded in PostgreSQL
ui                     the Dagster UI on the team instance
env                    the team environment as shell `export` lines
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from lettingo_dagster.deployment import (
    DEFAULT_QUEUE,
    TRAINING_QUEUE,
    DeploymentError,
    TeamSettings,
    check_broker,
    check_mlflow,
    check_postgres,
    check_workers,
    prepare_team_home,
    redact,
)
from lettingo_dagster.paths import PROJECT_ROOT


def _settings() -> TeamSettings:
    from lettingo_dagster.deployment.stack import export_environment

    os.environ["LETTINGO_DEPLOYMENT"] = "team"
    settings = TeamSettings.from_env()
    export_environment(settings)
    return settings


def _cmd_up(args: argparse.Namespace) -> int:
    from lettingo_dagster.deployment.stack import log_file, stack_dir, up

    started = time.perf_counter()
    settings = up(_settings())
    print(
        f"team stack up in {time.perf_counter() - started:.0f} s (data and logs under "
        f"{stack_dir()}):\n"
        f"  PostgreSQL   {redact(settings.postgres_url)} (Dagster), "
        f"{redact(settings.mlflow_db_url)} (MLflow)\n"
        f"  Redis        {redact(settings.broker_url)}\n"
        f"  MLflow       {settings.mlflow_uri}\n"
        f"  workers      queues {DEFAULT_QUEUE} (x{settings.step_concurrency}) and "
        f"{TRAINING_QUEUE} (x{settings.training_concurrency}), logs {log_file('worker-*')}"
    )
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from lettingo_dagster.deployment.stack import down, status

    stopped = down()
    left = [service for service, pid in status().items() if pid is not None]
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if left:
        print(f"still running: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from lettingo_dagster.deployment.stack import status

    for service, pid in status().items():
        print(f"{service:16} {'running, pid ' + str(pid) if pid else 'stopped'}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _settings()
    checks = [
        ("PostgreSQL (Dagster)", lambda: check_postgres(settings.postgres_url)),
        ("Redis broker", lambda: check_broker(settings.broker_url)),
        ("Celery workers", lambda: check_workers(settings, (DEFAULT_QUEUE, TRAINING_QUEUE))),
        ("MLflow server", lambda: check_mlflow(settings.mlflow_uri)),
    ]
    failed = False
    for name, check in checks:
        try:
            check()
            print(f"ok     {name}")
        except DeploymentError as exc:
            print(f"error  {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _cmd_env(args: argparse.Namespace) -> int:
    from lettingo_dagster.deployment import team_dagster_home
    from lettingo_dagster.deployment.stack import team_environment

    settings = _settings()
    env = team_environment(settings)
    env["DAGSTER_HOME"] = str(team_dagster_home())
    names = ["LETTINGO_DEPLOYMENT", "LETTINGO_HOME", "DAGSTER_HOME"]
    names += [variable for variable, _ in TeamSettings.ENV.values()]
    for name in names:
        print(f"export {name}={shlex.quote(env[name])}")
    return 0


def _failure_message(instance: object, run_id: str) -> str:
    """The run failure's own error, e.g. the executor's check of a service."""
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.is_run_failure:
            error = getattr(event.event_specific_data, "error", None)
            return error.message.strip().splitlines()[0] if error else record.user_message
    return ""


def run_team(
    preset_name: str,
    datasets: list[str] | None = None,
    job_name: str = "lettingo_pipeline",
    log_level: str | None = None,
) -> int:
    """Materialize `job_name` for each dataset through the Celery workers, recorded in
    PostgreSQL: `lettingo run` and `make team-run` under `LETTINGO_DEPLOYMENT=team`."""
    settings = _settings()
    os.environ["LETTINGO_PRESET"] = preset_name
    from lettingo_dagster.deployment import preflight
    from lettingo_dagster.settings import PresetError, load_preset

    try:
        preset = load_preset(preset_name)
        # The storage first: without it the run cannot even be recorded.
        preflight(settings, mlflow_uri=settings.mlflow_uri if job_name != "ingest_data" else None)
    except (PresetError, DeploymentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    prepare_team_home()

    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from lettingo_dagster.cli import print_report
    from lettingo_dagster.definitions import defs

    job_def = defs.resolve_job_def(job_name)
    known = job_def.partitions_def.get_partition_keys() if job_def.partitions_def else []
    datasets = datasets or preset.data.datasets or known
    unknown = [name for name in datasets if name not in known]
    if unknown:
        print(f"error: not in the dataset registry: {', '.join(unknown)}", file=sys.stderr)
        return 1
    # Workers rebuild the job from this pointer, so they need the same code and environment.
    job = ReconstructableRepository.for_module(
        "lettingo_dagster.definitions", "defs", working_directory=str(PROJECT_ROOT)
    ).get_reconstructable_job(job_name)
    # Workers were started with their own LETTINGO_PRESET; the run's config carries this one.
    run_config: dict = {"resources": {"settings": {"config": {"preset": preset_name}}}}
    if log_level:
        run_config["loggers"] = {"console": {"config": {"log_level": log_level}}}
    failed = False
    with dg.DagsterInstance.get() as instance:
        for dataset in datasets:
            print(f"==> {job_name} for {dataset} (preset {preset_name}) on the Celery workers")
            started = time.perf_counter()
            result = dg.execute_job(
                job, instance, run_config=run_config,
                tags={"dagster/partition": dataset, "lettingo/preset": preset_name},
            )  # fmt: skip
            materialized = sorted(
                event.asset_key.to_user_string()
                for event in result.get_asset_materialization_events()
                if event.asset_key is not None
            )
            print(
                f"    run {result.run_id}: {'succeeded' if result.success else 'FAILED'} in "
                f"{time.perf_counter() - started:.0f} s; materialized: "
                f"{', '.join(materialized) or 'nothing'}"
            )
            if not result.success:
                failed = True
                for event in result.all_events:
                    if event.is_step_failure:
                        error = event.step_failure_data.error
                        print(f"    step {event.step_key} failed: {error.message.strip() if error else ''}")  # fmt: skip
                message = _failure_message(instance, result.run_id)
                if message:
                    print(f"error: {message}", file=sys.stderr)
            elif job_name == "lettingo_pipeline":
                print_report(dataset)
    print(f"\nDagster UI: make team-ui   MLflow: {settings.mlflow_uri}")
    return 1 if failed else 0


def serve_team_ui(host: str = "127.0.0.1", port: int = 3000) -> int:
    """The Dagster UI (and daemon) on the team instance, once every service answers: `lettingo
    ui` and `make team-ui` under `LETTINGO_DEPLOYMENT=team`. Replaces this process."""
    settings = _settings()
    from lettingo_dagster.deployment import preflight

    try:
        preflight(settings, mlflow_uri=settings.mlflow_uri)
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    home = prepare_team_home()
    command = [
        sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    print(f"Dagster UI on http://{host}:{port} (team instance {home})")
    os.execv(sys.executable, command)
    return 0  # not reached


def _cmd_run(args: argparse.Namespace) -> int:
    return run_team(args.preset, args.dataset, args.job)


def _cmd_ui(args: argparse.Namespace) -> int:
    return serve_team_ui(args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lettingo_dagster.deployment",
        description="The team deployment: PostgreSQL storage, Celery workers, an MLflow server.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler, text in (
        ("up", _cmd_up, "start the local stack (kept when already running)"),
        ("down", _cmd_down, "stop everything `up` started"),
        ("status", _cmd_status, "which services of the local stack run"),
        ("check", _cmd_check, "is every service of the team URLs reachable"),
        ("env", _cmd_env, "the team environment as shell export lines"),
    ):
        commands.add_parser(name, help=text).set_defaults(handler=handler)
    run = commands.add_parser("run", help="materialize a job through the Celery workers")
    run.add_argument("--preset", default=os.environ.get("LETTINGO_PRESET", "default"))
    run.add_argument(
        "--dataset", action="append", help="dataset partition(s); default: the preset's"
    )
    run.add_argument("--job", default="lettingo_pipeline", choices=["lettingo_pipeline", "ingest_data"])  # fmt: skip
    run.set_defaults(handler=_cmd_run)
    ui = commands.add_parser("ui", help="the Dagster UI on the team instance")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
