"""Per-run options of the `interactions` asset (the launchpad shows them); the landing sensor
sets them through `automation.landing_run_config`."""

import dagster as dg
from pydantic import Field


class InteractionsConfig(dg.Config):
    """Per-run options of the `interactions` asset (the launchpad shows them)."""

    source_file: str | None = Field(
        default=None,
        description=(
            "Read interactions from this file instead of the registry's; the landing sensor "
            "sets it. The file has the registry entry's format; items still come from the "
            "registry. When unset, the newest file in the dataset's landing folder "
            "(`LETTINGO_HOME/landing/{dataset}`) is read if there is one, else the registry's."
        ),
    )
