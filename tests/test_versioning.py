"""Code versions derived from logic and settings; data versions computed from content."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from lettingo_dagster import versioning
from lettingo_dagster.definitions import defs
from lettingo_dagster.settings import load_preset

ASSET_MODULES = {
    "interactions": "lettingo_dagster.data.assets",
    "task_samples": "lettingo_dagster.data.assets",
    "preference_pairs": "lettingo_dagster.alignment.assets",
}


def _materializable() -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    return {k.to_user_string(): graph.get(k) for k in graph.materializable_asset_keys}


def test_every_asset_has_a_derivation_and_a_data_version_rule() -> None:
    preset = load_preset("ci")
    assets = _materializable()
    assert set(assets) == set(versioning.SETTINGS_READ) == set(versioning.DATA_VERSION_FROM)
    for key, node in assets.items():
        # Every settings path exists in a preset, and the definitions carry the derived version.
        versioning.settings_values(preset, versioning.SETTINGS_READ[key])
        assert node.code_version and len(node.code_version) == 16, key
    for key, module in ASSET_MODULES.items():
        assert assets[key].code_version == versioning.code_version(key, module, preset)


def test_code_version_follows_the_settings_an_asset_reads() -> None:
    preset = load_preset("ci")
    module = ASSET_MODULES["task_samples"]
    before = versioning.code_version("task_samples", module, preset)
    changed_task = preset.model_copy(
        update={"task": preset.task.model_copy(update={"long_window": 7})}
    )
    changed_dpo = preset.model_copy(update={"dpo": preset.dpo.model_copy(update={"beta": 0.7})})
    assert versioning.code_version("task_samples", module, changed_task) != before
    assert versioning.code_version("task_samples", module, changed_dpo) == before
    assert versioning.code_version("interactions", module, changed_task) == (
        versioning.code_version("interactions", module, preset)
    )


def test_logic_is_the_module_and_what_it_imports_without_plumbing() -> None:
    modules = versioning.logic_modules("lettingo_dagster.data.assets")
    assert "lettingo_dagster.data.assets" in modules
    assert "lettingo_dagster.data.samples" in modules  # the task builder it calls
    assert "lettingo_dagster.data.formats.movielens" in modules  # imported inside a function
    assert "lettingo_dagster.storage" not in modules and "lettingo_dagster.settings" not in modules
    inputs = versioning.code_version_inputs("sampled_profiles", ASSET_MODULES["interactions"], None)
    assert "prompts" in inputs and inputs["settings"] == {
        "unreadable preset": ["task", "base_generator", "exploration"]
    }


def test_table_data_version_is_the_rows_in_any_order() -> None:
    rows = pd.DataFrame(
        {"dataset": ["a", "a", "a", "b"], "user_id": ["1", "2", "3", "1"], "rating": [4.0, 2, 5, 1]}
    )
    with duckdb.connect() as con:

        def version(frame: pd.DataFrame) -> str:
            con.execute("CREATE OR REPLACE TABLE t AS SELECT * FROM frame")
            return versioning.table_data_version(con, "t", "a")

        original = version(rows)
        assert version(rows.iloc[::-1]) == original  # another order
        assert version(rows.assign(rating=[4.0, 2, 5, 3])) == original  # another partition
        assert version(rows.assign(rating=[4.0, 2, 4, 1])) != original  # one value
        assert version(pd.concat([rows, rows.head(1)])) != original  # a duplicated row
        assert version(rows.iloc[1:]) != original  # a row less


def test_folder_and_metadata_versions(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "sub" / "config.json").write_text("{}")
    first = versioning.folder_data_version(tmp_path)
    (tmp_path / ".scratch").write_text("ignored")
    assert versioning.folder_data_version(tmp_path) == first
    (tmp_path / "sub" / "config.json").write_text('{"a": 1}')
    assert versioning.folder_data_version(tmp_path) != first

    findings = {"choice": "ranking", "ceiling": 0.1}
    version = versioning.metadata_data_version({**findings, "seconds": 3.2})
    assert version == versioning.metadata_data_version({**findings, "seconds": 9.9})
    assert version != versioning.metadata_data_version({**findings, "ceiling": 0.2})


@pytest.mark.parametrize("name", ["ci", "default"])
def test_settings_paths_exist_in_the_shipped_presets(name: str) -> None:
    preset = load_preset(name)
    for sections in versioning.SETTINGS_READ.values():
        versioning.settings_values(preset, sections)
