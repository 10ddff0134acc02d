"""`lettingo lineage`: the chain behind a registered generator, from the registry's tags.

Unit tests build a registry version with lineage tags by hand; the integration test runs the ci
graph, changes the interactions file, and follows Dagster's own staleness and the chains of the
versions trained before and after the change.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from lettingo_dagster import cli
from lettingo_dagster.data.landing import file_sha256
from lettingo_dagster.data.sources import SOURCE_KEYS
from lettingo_dagster.lineage import (
    LINEAGE_CHAIN,
    Link,
    links_from_tags,
    links_to_tags,
    stale_statuses,
)
from lettingo_dagster.paths import landing_dir
from lettingo_dagster.registry import get_dataset
from lettingo_dagster.tracking import MlflowTracking, registered_model_name

SHA_A = "a" * 64


def _links() -> list[Link]:
    links = [
        Link(asset, f"dv-{asset}", f"cv-{asset}", f"run-{i}", "2026-01-01T00:00:00+00:00")
        for i, asset in enumerate(LINEAGE_CHAIN[:-1])
    ]
    links[0].checks = {"reloads_and_generates": "passed", "margin_grew": "failed (WARN)"}
    source = Link("interactions_file", SHA_A, None, "run-9", "2026-01-01T00:00:00+00:00")
    source.sha256, source.path = SHA_A, "/data/ratings.inter"
    return [*links, source]


def _lineage(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["lineage", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tagged_registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A registry with one version of `lettingo-profile-generator-unit` carrying a chain."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking = MlflowTracking(tracking_uri=uri, artifact_root=str(root / "artifacts"))
    (root / "model").mkdir()
    (root / "model" / "weights.bin").write_bytes(b"w")
    name = "lettingo-profile-generator-unit"
    with tracking.start_run("lettingo-unit", "dpo-unit", {"dagster.run_id": "run-0"}) as run:
        tracking.log_artifacts(run.info.run_id, root / "model", "model")
        version = tracking.register(name, run, "model", tags={"dagster.run_id": "run-0"})
    for key, value in links_to_tags(_links(), "unit").items():
        tracking.set_version_tag(name, version, key, value)
    return uri, version


def test_tags_round_trip_the_chain() -> None:
    links = _links()
    tags = links_to_tags(links, "unit")
    assert tags["lineage.assets"] == ",".join(LINEAGE_CHAIN)
    assert tags["lineage.interactions_file.sha256"] == SHA_A
    assert links_from_tags(tags) == links


def test_lineage_json_is_a_chain_of_links_ending_at_the_file(
    tagged_registry: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, version = tagged_registry
    code, out, _ = _lineage(
        capsys, "lettingo-profile-generator-unit", version, "--json", "--mlflow-uri", uri
    )
    assert code == 0
    found = json.loads(out)
    assert found["model"] == "lettingo-profile-generator-unit" and found["version"] == version
    assert found["mlflow_run"]["status"] == "FINISHED" and found["dagster_run"]["run_id"]
    chain = found["chain"]
    assert [link["asset"] for link in chain] == list(LINEAGE_CHAIN)
    for link in chain:
        assert {"asset", "data_version", "code_version", "run_id", "time", "checks"} <= set(link)
    assert chain[0]["checks"]["margin_grew"] == "failed (WARN)"
    assert chain[-1]["sha256"] == SHA_A and chain[-1]["path"] == "/data/ratings.inter"
    assert all("sha256" not in link for link in chain[:-1])

    # The text form names the same chain.
    code, out, _ = _lineage(capsys, "lettingo-profile-generator-unit", version, "--mlflow-uri", uri)
    assert code == 0 and f"sha256 {SHA_A}" in out and "preference_pairs" in out

    # And the reverse question finds the version from the file's hash (or a prefix of it).
    code, out, _ = _lineage(capsys, "--source", SHA_A[:12], "--json", "--mlflow-uri", uri)
    assert code == 0 and [v["version"] for v in json.loads(out)] == [version]


def test_unknown_version_or_model_exits_1_with_a_clear_message(
    tagged_registry: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, version = tagged_registry
    code, out, err = _lineage(capsys, "lettingo-profile-generator-unit", "99", "--mlflow-uri", uri)
    assert code == 1 and not out
    assert "has no version '99'" in err and f"versions: {version}" in err
    code, _, err = _lineage(capsys, "no-such-model", "1", "--mlflow-uri", uri)
    assert code == 1 and "no registered model 'no-such-model'" in err
    code, _, err = _lineage(
        capsys, "lettingo-profile-generator-unit", "--champion", "--mlflow-uri", uri
    )
    assert code == 1 and "no champion" in err
    code, _, err = _lineage(capsys, "--source", "f" * 64, "--mlflow-uri", uri)
    assert code == 1 and "no registered version" in err


# --------------------------------------------------------------------------- integration


def _changed_copy(source: Path, target: Path, warehouse: Path) -> None:
    """`source` with one calibration user's long-window rating changed: the pairs DPO holds out
    change, and so does the trained checkpoint, while the base generator (trained on training
    users) is reused."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        user, item, rating = con.execute(
            """
            SELECT user_id, long_item_ids[1], long_ratings[1] FROM task_samples
            WHERE dataset = 'synthetic' AND split = 'calibration' ORDER BY user_id LIMIT 1
            """
        ).fetchone()
    lines = source.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    changed = 0
    for i, row in enumerate(rows):
        cells = row.split("\t")
        if cells[0] == user and cells[1] == item:
            cells[2] = "1" if float(rating) >= 3 else "5"
            rows[i] = "\t".join(cells)
            changed += 1
    assert changed == 1, (user, item)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join([header, *rows]) + "\n")


@pytest.mark.integration
def test_lineage_follows_a_changed_interactions_file(
    pipeline_world, capsys: pytest.CaptureFixture[str]
) -> None:
    from lettingo_dagster.definitions import all_assets, defs

    world = pipeline_world
    sources = dg.AssetSelection.assets(*SOURCE_KEYS)
    upstream_of_dpo = dg.AssetSelection.assets("dpo_checkpoint").upstream() | sources
    name = registered_model_name("synthetic")
    graph = defs.resolve_asset_graph()

    def status() -> dict[str, tuple[str, list[str]]]:
        return stale_statuses(world.instance, graph, "synthetic")

    def chain(version: str) -> list[dict]:
        code, out, err = _lineage(capsys, name, version, "--json", "--mlflow-uri", world.mlflow_uri)
        assert code == 0, err
        return json.loads(out)["chain"]

    # The world's own files (another test may have written other `synthetic` files since).
    registry_file = world.write_files()
    # The ci graph through the trained generator: the shared pipeline world (materialized through
    # preference_pairs, its files observed first), then DPO (reused when already trained).
    first = world.materialize(all_assets, ["dpo_checkpoint"])
    assert first.success
    version_1 = str(first.asset_materializations_for_node("dpo_checkpoint")[0].metadata[
        "model_version"
    ].value)  # fmt: skip
    assert registry_file == get_dataset("synthetic").interactions
    sha_1 = file_sha256(registry_file)
    chain_assets = LINEAGE_CHAIN[:-1]
    assert all(status()[asset][0] == "FRESH" for asset in chain_assets), status()
    links = chain(version_1)
    assert [link["asset"] for link in links] == list(LINEAGE_CHAIN)
    assert links[-1]["sha256"] == sha_1
    assert all(link["data_version"] and link["run_id"] for link in links)
    assert all(link["code_version"] for link in links[:-1])

    landed = landing_dir("synthetic") / "ratings-changed.inter"
    try:
        _changed_copy(registry_file, landed, world.warehouse)
        sha_2 = file_sha256(landed)
        assert sha_2 != sha_1

        # Observing the new file: Dagster marks interactions unsynced, from the file.
        assert world.materialize(all_assets, sources).success
        now = status()
        assert now["interactions"][0] == "STALE", now
        assert any("interactions_file" in cause for cause in now["interactions"][1])
        # Ingesting it: the assets that read interactions are unsynced in turn.
        assert world.materialize(all_assets, dg.AssetSelection.assets("interactions") | sources)
        now = status()
        assert now["interactions"][0] == "FRESH"
        for asset in ("task_samples", "item_knowledge"):
            assert now[asset][0] == "STALE", (asset, now)
            assert any("interactions" in cause for cause in now[asset][1])
        # The model trained before the change still names the first file.
        assert chain(version_1)[-1]["sha256"] == sha_1

        # The rerun trains and registers a new version, whose chain names the second file.
        second = world.materialize(all_assets, upstream_of_dpo)
        assert second.success
        version_2 = str(second.asset_materializations_for_node("dpo_checkpoint")[0].metadata[
            "model_version"
        ].value)  # fmt: skip
        assert version_2 != version_1
        links_2 = chain(version_2)
        assert links_2[-1]["sha256"] == sha_2 and links_2[-1]["path"] == str(landed)
        assert links_2[1]["data_version"] != links[1]["data_version"]  # other pairs
        # The training run states the asset's derived code version, as the chain does.
        tracking = MlflowTracking(tracking_uri=world.mlflow_uri)
        run = tracking.client().get_run(tracking.client().get_model_version(name, version_2).run_id)
        assert run.data.tags["dagster.code_version"] == links_2[0]["code_version"]
        assert chain(version_1)[-1]["sha256"] == sha_1
        code, out, _ = _lineage(
            capsys, "--source", sha_2, "--json", "--mlflow-uri", world.mlflow_uri
        )
        assert code == 0 and [v["version"] for v in json.loads(out)] == [version_2]
        now = status()
        for asset in LINEAGE_CHAIN[1:-1]:
            assert now[asset][0] == "FRESH", (asset, now)
    finally:
        landed.unlink(missing_ok=True)
