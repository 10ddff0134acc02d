"""The team deployment's services on one machine, for trying it and for its tests.

`up` starts PostgreSQL (Debian's server binaries), Redis, the MLflow tracking server and two
Celery workers on the loopback ports of the team URLs; `down` stops exactly those processes.
Each service keeps its data and log under `$LETTINGO_HOME/team/`:

    postgres/            the cluster (owned by the `postgres` user when run as root)
    redis/               Redis' working directory (nothing is persisted)
    mlflow/artifacts/    the MLflow server's artifact root
    celery/              the workers' Celery settings (dagster_celery_config.py)
    logs/<service>.log   one log per service
    pids/<service>.pid   what `down` stops

The PostgreSQL cluster trusts connections from 127.0.0.1 and listens nowhere else: it is for one
machine. A real team points the URLs at its own servers and runs only the workers here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from lettingo_dagster.deployment import (
    CONNECT_TIMEOUT_S,
    DEFAULT_QUEUE,
    TRAINING_QUEUE,
    DeploymentError,
    ServiceUnavailable,
    TeamSettings,
    check_broker,
    check_mlflow,
    check_postgres,
    prepare_team_home,
    redact,
)
from lettingo_dagster.paths import lettingo_home

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")  # fmt: skip
PG_SERVICE_USER = "postgres"  # the server refuses to run as root
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WORKERS = {"worker-steps": DEFAULT_QUEUE, "worker-training": TRAINING_QUEUE}
START_TIMEOUT_S = 180  # the MLflow server migrates a fresh database on its first start
STOP_TIMEOUT_S = 60


def stack_dir() -> Path:
    return lettingo_home() / "team"


def log_file(service: str) -> Path:
    return stack_dir() / "logs" / f"{service}.log"


def pid_file(service: str) -> Path:
    return stack_dir() / "pids" / f"{service}.pid"


def team_environment(settings: TeamSettings) -> dict[str, str]:
    """The environment every team process gets: the caller's, with each service's URL spelled
    out (the instance's dagster.yaml reads LETTINGO_PG_URL from it)."""
    env = dict(os.environ)
    env["LETTINGO_DEPLOYMENT"] = "team"
    env["LETTINGO_HOME"] = str(lettingo_home())
    for field, (variable, _) in TeamSettings.ENV.items():
        env[variable] = str(getattr(settings, field))
    return env


def export_environment(settings: TeamSettings) -> None:
    os.environ.update(team_environment(settings))


def _endpoint(url: str, what: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK or parts.port is None:
        raise DeploymentError(
            f"{what} {redact(url)} is not a loopback address with a port: the local stack only "
            "starts services on this machine (unset the variable to use the default)"
        )
    return parts.hostname, parts.port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of this process has exited
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _read_pid(service: str) -> int | None:
    try:
        return int(pid_file(service).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _wait(what: str, ready: Callable[[], bool], timeout: float, log: Path, pids: list[int]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if not all(_alive(pid) for pid in pids):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise DeploymentError(f"{what} exited while starting: {' '.join(tail)} (see {log})")
        time.sleep(0.5)
    raise DeploymentError(f"{what} did not start within {timeout:.0f} s; see {log}")


def _answers(check: Callable[[], None]) -> bool:
    try:
        check()
    except ServiceUnavailable:
        return False
    return True


def _spawn(service: str, command: list[str], env: dict[str, str]) -> int:
    """Start a long-running service in its own session (so `down` can stop its whole process
    group by its id) with its output in its log file."""
    log = log_file(service)
    with log.open("ab") as handle:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
    pid_file(service).write_text(f"{process.pid}\n")
    return process.pid


def _stop_group(service: str, pid: int) -> None:
    """SIGTERM to the service's process group, SIGKILL if it outlives STOP_TIMEOUT_S."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)
    if _alive(pid):
        raise DeploymentError(f"{service} (pid {pid}) did not stop")


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bin(name: str) -> str:
    for folder in PG_BIN_DIRS:
        if (Path(folder) / name).is_file():
            return str(Path(folder) / name)
    found = shutil.which(name)
    if found:
        return found
    raise DeploymentError(
        f"PostgreSQL's {name} was not found (looked in {', '.join(PG_BIN_DIRS)} and PATH): "
        "install the server, e.g. `apt-get install -y postgresql`"
    )


def _as_service_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", PG_SERVICE_USER, "--", *command]


def _give_to_service_user(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    for path in paths:
        shutil.chown(path, user=PG_SERVICE_USER, group=None)


def _pg_run(command: list[str], what: str) -> None:
    completed = subprocess.run(
        _as_service_user(command), capture_output=True, text=True, check=False, timeout=300
    )
    if completed.returncode != 0:
        raise DeploymentError(f"{what} failed: {(completed.stderr or completed.stdout).strip()}")


def _postgres_up(settings: TeamSettings) -> None:
    host, port = _endpoint(settings.postgres_url, "LETTINGO_PG_URL")
    if _endpoint(settings.mlflow_db_url, "LETTINGO_MLFLOW_DB_URL") != (host, port):
        raise DeploymentError("LETTINGO_PG_URL and LETTINGO_MLFLOW_DB_URL must name one server")
    user = urlsplit(settings.postgres_url).username or "lettingo"
    data = stack_dir() / "postgres"
    log = log_file("postgres")
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        _give_to_service_user(data)
        if os.geteuid() == 0:
            probe = subprocess.run(_as_service_user(["test", "-w", str(data)]), check=False)
            if probe.returncode != 0:
                raise DeploymentError(
                    f"user {PG_SERVICE_USER} cannot reach {data}: every folder above it must be "
                    "searchable by that user (chmod o+x), or set LETTINGO_HOME elsewhere"
                )
        _pg_run(
            [_pg_bin("initdb"), "-D", str(data), "-U", user, "--auth=trust", "--encoding=UTF8",
             "--no-locale", "--no-instructions"],
            "initdb",
        )  # fmt: skip
    if not log.exists():
        log.touch()
    _give_to_service_user(log)
    # A cluster left running (a crash, a killed test) is reused rather than started twice.
    if not _answers(lambda: check_postgres(settings.postgres_url.rsplit("/", 1)[0] + "/postgres")):
        _pg_run(
            [_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "120",
             "-o", f"-h {host} -p {port} -k {data}", "start"],
            "pg_ctl start",
        )  # fmt: skip
    postmaster = data / "postmaster.pid"
    pid_file("postgres").write_text(postmaster.read_text().splitlines()[0] + "\n")
    _create_databases(settings)


def _create_databases(settings: TeamSettings) -> None:
    import psycopg2

    from lettingo_dagster.deployment import _postgres_dsn

    admin = _postgres_dsn(settings.postgres_url).rsplit("/", 1)[0] + "/postgres"
    connection = psycopg2.connect(admin, connect_timeout=CONNECT_TIMEOUT_S)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for url in (settings.postgres_url, settings.mlflow_db_url):
                name = urlsplit(url).path.lstrip("/")
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()


def _postgres_down() -> None:
    data = stack_dir() / "postgres"
    if (data / "postmaster.pid").is_file():
        _pg_run([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], "pg_ctl stop")
    pid_file("postgres").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Redis, MLflow, Celery


def _redis_up(settings: TeamSettings, env: dict[str, str]) -> None:
    host, port = _endpoint(settings.broker_url, "LETTINGO_BROKER_URL")
    if _endpoint(settings.result_backend, "LETTINGO_RESULT_BACKEND") != (host, port):
        raise DeploymentError(
            "LETTINGO_BROKER_URL and LETTINGO_RESULT_BACKEND must name one server"
        )
    server = shutil.which("redis-server")
    if server is None:
        raise DeploymentError(
            "redis-server was not found: install it, e.g. `apt-get install -y redis-server`"
        )
    if _answers(lambda: check_broker(settings.broker_url)):
        return
    folder = stack_dir() / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    # Queued steps do not outlive the stack: no snapshots, no append-only file.
    pid = _spawn(
        "redis",
        [server, "--bind", host, "--port", str(port), "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
        env,
    )  # fmt: skip
    _wait(
        "Redis", lambda: _answers(lambda: check_broker(settings.broker_url)), 30,
        log_file("redis"), [pid],
    )  # fmt: skip


def _mlflow_up(settings: TeamSettings, env: dict[str, str]) -> None:
    host, port = _endpoint(settings.mlflow_uri, "LETTINGO_MLFLOW_URI")
    if _answers(lambda: check_mlflow(settings.mlflow_uri)):
        return
    artifacts = stack_dir() / "mlflow" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    # The server proxies artifacts (`mlflow-artifacts:` URIs), so clients need no access to the
    # artifact root; the backend store URL goes through the environment, not the command line.
    server_env = {**env, "MLFLOW_BACKEND_STORE_URI": settings.mlflow_db_url}
    pid = _spawn(
        "mlflow",
        [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
         "--artifacts-destination", artifacts.resolve().as_uri(), "--workers", "1"],
        server_env,
    )  # fmt: skip
    _wait(
        "The MLflow server",
        lambda: _answers(lambda: check_mlflow(settings.mlflow_uri)),
        START_TIMEOUT_S,
        log_file("mlflow"),
        [pid],
    )


def celery_config_module(settings: TeamSettings) -> str:
    """The settings dagster-celery's worker app reads (`dagster_celery_config`), the same
    broker and result backend the executor is configured with."""
    return (
        "# Written by lettingo_dagster.deployment: the Celery settings of this stack's workers.\n"
        f"broker_url = {settings.broker_url!r}\n"
        f"result_backend = {settings.result_backend!r}\n"
    )


def _workers_up(settings: TeamSettings, env: dict[str, str]) -> None:
    folder = stack_dir() / "celery"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster_celery_config.py").write_text(celery_config_module(settings))
    worker_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))}  # fmt: skip
    concurrency = {
        "worker-steps": settings.step_concurrency,
        "worker-training": settings.training_concurrency,
    }
    pids = []
    # One step per worker process, as Dagster's multiprocess executor does: models and caches a
    # step keeps in memory never carry over into the next step, whichever run it belongs to.
    for service, queue in WORKERS.items():
        pid = _read_pid(service)
        if pid is not None and _alive(pid):
            pids.append(pid)
            continue
        pid = _spawn(
            service,
            [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker",
             "-Q", queue, "-n", f"lettingo-{queue}@%h", "-c", str(concurrency[service]),
             "--prefetch-multiplier=1", "--max-tasks-per-child=1", "--loglevel", "INFO",
             "--without-gossip", "--without-mingle"],
            worker_env,
        )  # fmt: skip
        pids.append(pid)
    from lettingo_dagster.deployment import check_workers

    _wait(
        "The Celery workers",
        lambda: _answers(lambda: check_workers(settings, WORKERS.values())),
        START_TIMEOUT_S,
        log_file("worker-steps"),
        pids,
    )


# ---------------------------------------------------------------------------------------------
# The stack


SERVICES = ("postgres", "redis", "mlflow", *WORKERS)


def up(settings: TeamSettings | None = None) -> TeamSettings:
    """Start every service (those already running are kept) and write the team instance."""
    settings = settings or TeamSettings.from_env()
    for folder in ("logs", "pids"):
        (stack_dir() / folder).mkdir(parents=True, exist_ok=True)
    export_environment(settings)
    home = prepare_team_home()
    env = team_environment(settings)
    env["DAGSTER_HOME"] = str(home)
    try:
        _postgres_up(settings)
        _redis_up(settings, env)
        _mlflow_up(settings, env)
        _workers_up(settings, env)
    except BaseException:
        down()
        raise
    return settings


def down() -> list[str]:
    """Stop every service this stack started, workers first; returns what was stopped."""
    stopped = []
    for service in reversed(SERVICES):
        if service == "postgres":
            if (stack_dir() / "postgres" / "postmaster.pid").is_file():
                _postgres_down()
                stopped.append(service)
            continue
        pid = _read_pid(service)
        if pid is not None and _alive(pid):
            _stop_group(service, pid)
            stopped.append(service)
        pid_file(service).unlink(missing_ok=True)
    return stopped


def status() -> dict[str, int | None]:
    """Each service's pid when it runs, else None."""
    running: dict[str, int | None] = {}
    for service in SERVICES:
        pid = _read_pid(service)
        running[service] = pid if pid is not None and _alive(pid) else None
    return running
