"""Loaders and validators for the raw rating and item files that real users have.

Six formats, as they are distributed: RecBole atomic files, MovieLens-100K (``u.data`` /
``u.item``), MovieLens-1M/10M (``ratings.dat`` / ``movies.dat``), Amazon reviews 2018 and 2023
(JSON lines), and the Yelp open dataset (JSON lines). Every loader turns one raw file into one
DuckDB table with a fixed schema and checks every record on the way.

- `engine`: what every format shares: errors, the load pipeline (read lines, find the first bad
  one, swap the table in), and the SQL blocks plans are made of;
- `movielens`, `amazon`, `yelp`: each family's formats, as plans for the engine;
- `dispatch`: the entry points below, which pick a format's plans by name.
"""

from lettingo_dagster.data.formats.dispatch import (
    FORMATS,
    load_interactions,
    load_items,
    rating_scale,
    validate_files,
)
from lettingo_dagster.data.formats.engine import DataFormatError, RatingScale, ValidationSummary
from lettingo_dagster.data.formats.movielens import ML100K_GENRES

__all__ = [
    "FORMATS",
    "ML100K_GENRES",
    "DataFormatError",
    "RatingScale",
    "ValidationSummary",
    "load_interactions",
    "load_items",
    "rating_scale",
    "validate_files",
]
