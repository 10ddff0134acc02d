"""Dagster resources (the active preset and the DuckDB warehouse) and the retry policy of the
steps that call models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from lettingo_dagster.paths import PRESETS_DIR, warehouse_path
from lettingo_dagster.settings import Preset, active_preset_name, load_preset
from lettingo_dagster.storage import missing_table_failure

# For the steps that call models, which may be remote endpoints. A step fails when more of an
# explorer's calls failed than its budget allows (max_failed_call_share) or an endpoint is down;
# Dagster runs it again after about 30 s and then 90 s (each +-50%), and the model-call cache
# makes each try ask only for the answers still missing. Two retries: a failure that is no
# outage (a bug) is not held back for long. A failure that waiting cannot fix (an upstream
# partition not materialized) opts out with `Failure(allow_retries=False)`.
MODEL_CALL_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class SettingsResource(dg.ConfigurableResource):
    """The preset every asset reads its settings from (LETTINGO_PRESET selects it)."""

    preset: str = Field(
        default_factory=active_preset_name,
        description="Name of a preset under assets/presets/ (LETTINGO_PRESET, default 'default').",
    )
    presets_dir: str = Field(
        default=str(PRESETS_DIR), description="Folder holding the preset YAML files."
    )

    def load(self) -> Preset:
        from pathlib import Path

        return load_preset(self.preset, Path(self.presets_dir))


class Warehouse(DuckDBResource):
    """The DuckDB file holding every table asset (one writer at a time: the `duckdb` pool)."""

    database: str = Field(
        default_factory=lambda: str(warehouse_path()),
        description="Path of the DuckDB warehouse file (default $LETTINGO_HOME/warehouse.duckdb).",
    )

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        from pathlib import Path

        if self.database != ":memory:":
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        with super().get_connection() as connection:
            try:
                yield connection
            except duckdb.CatalogException as error:
                # A read of a table no asset has written yet: say which asset to materialize
                # instead of DuckDB's catalog error (read sites also check their partition).
                failure = missing_table_failure(error)
                if failure is None:
                    raise
                raise failure from None
            finally:
                # The parent only closes on success; a failed step must not hold the file lock.
                connection.close()
