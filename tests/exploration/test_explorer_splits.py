"""An explorer can profile a subset of the sampled splits (`explorers[].splits`)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from lettingo_dagster.exploration.sampling import run_explorers
from lettingo_dagster.exploration.synthetic import genre_lover_histories
from lettingo_dagster.models.cache import ModelCallCache
from lettingo_dagster.settings import ExplorationSettings, ExplorerSettings, load_preset


def _histories():
    return genre_lover_histories(5, 20, seed=1, split="train", user_prefix="t") + (
        genre_lover_histories(3, 20, seed=2, split="calibration", user_prefix="c")
    )


def test_writers_limited_to_calibration_users(tmp_path: Path) -> None:
    styles = ["genre_focus", "rating_tendency"]
    exploration = ExplorationSettings(
        explorers=[
            ExplorerSettings(name="all-writers", kind="writers", styles=styles),
            ExplorerSettings(
                name="calibration-writers", kind="writers", styles=styles, splits=["calibration"]
            ),
        ]
    )
    preset = load_preset("ci").model_copy(update={"exploration": exploration})
    run = run_explorers(preset, _histories(), "", ModelCallCache(tmp_path / "cache.duckdb"))
    users = {
        name: {row.user_id for row in run.rows if row.explorer == name}
        for name in ("all-writers", "calibration-writers")
    }
    assert len(users["all-writers"]) == 8
    assert users["calibration-writers"] == {u for u in users["all-writers"] if u.startswith("c")}
    assert len(users["calibration-writers"]) == 3
    summary = {row["explorer"]: row for row in run.per_explorer}
    assert summary["calibration-writers"]["users"] == 3
    assert summary["calibration-writers"]["per_user"] == len(styles)


def test_an_explorer_cannot_profile_a_split_that_is_not_sampled() -> None:
    with pytest.raises(ValidationError, match="does not sample"):
        ExplorationSettings(
            explorers=[ExplorerSettings(name="w", kind="writers", splits=["calibration"])],
            splits=["train"],
        )
