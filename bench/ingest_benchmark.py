"""Ingest benchmark: load a 10M-row ML-10M-style ratings.dat with ``load_interactions``.

Generates ``UserID::MovieID::Rating::Timestamp`` lines with half-star ratings into a temporary
directory (with DuckDB's COPY, in seconds), then loads them into an on-disk DuckDB file in a child
process, so that the peak resident memory measured is the ingest's alone. Targets: 60 s and
2048 MiB peak.

    python bench/ingest_benchmark.py [--rows N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from verdict import verdict

MAX_SECONDS = 60.0
MAX_PEAK_MIB = 2048.0
# ML-10M's shape: 71,567 users, 10,681 movies, ratings 0.5..5 in half stars, 1995..2009.
USERS = 71_567
MOVIES = 10_681
FIRST_TIMESTAMP = 789_652_009
TIMESTAMP_SPAN = 441_479_727


def generate_ratings(path: Path, rows: int) -> None:
    """Write ``rows`` ratings.dat lines; ratings are written like ML-10M does ("5", "3.5")."""
    with duckdb.connect() as con:
        con.execute(
            f"""
            COPY (
                SELECT user_id || '::' || movie_id || '::' ||
                       CASE WHEN half_stars % 2 = 0 THEN CAST(half_stars // 2 AS VARCHAR)
                            ELSE CAST(half_stars / 2 AS VARCHAR) END
                       || '::' || unix_seconds AS line
                FROM (SELECT i // 140 + 1 AS user_id,
                             hash(i, 'movie') % {MOVIES} + 1 AS movie_id,
                             hash(i, 'rating') % 10 + 1 AS half_stars,
                             {FIRST_TIMESTAMP} + hash(i, 'time') % {TIMESTAMP_SPAN} AS unix_seconds
                      FROM range({rows}) AS t(i))
            ) TO '{path}' (FORMAT csv, HEADER false, QUOTE '', DELIMITER '\t')
            """
        )


def ingest(ratings: Path, database: Path, threads: int | None) -> dict[str, float]:
    """Runs in the child process: one load_interactions call into an on-disk database."""
    from lettingo_dagster.data.formats import load_interactions

    with duckdb.connect(str(database)) as con:
        if threads:
            con.execute(f"SET threads = {threads}")
        started = time.perf_counter()
        rows = load_interactions(
            con, "movielens-dat", ratings, table="interactions", dataset="ml-10m-synthetic"
        )
        con.execute("CHECKPOINT")  # count writing the table to disk as part of the ingest
        seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    parser.add_argument(
        "--ingest", nargs=2, metavar=("RATINGS", "DATABASE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.ingest:  # child mode
        result = ingest(Path(args.ingest[0]), Path(args.ingest[1]), args.threads)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="lettingo-ingest-") as tmp:
        ratings = Path(tmp) / "ratings.dat"
        started = time.perf_counter()
        generate_ratings(ratings, args.rows)
        size_mib = ratings.stat().st_size / 2**20
        print(f"generated {args.rows:,} rows ({size_mib:,.0f} MiB) in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip

        command = [
            sys.executable,
            __file__,
            "--ingest",
            str(ratings),
            str(Path(tmp) / "bench.duckdb"),
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stdout + child.stderr, file=sys.stderr)
            return 1
        result = json.loads(child.stdout.strip().splitlines()[-1])
        # ru_maxrss is in KiB on Linux; RUSAGE_CHILDREN covers only the finished ingest child.
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    rows, seconds = int(result["rows"]), float(result["seconds"])
    passed = rows == args.rows and seconds <= MAX_SECONDS and peak_mib <= MAX_PEAK_MIB
    print(f"rows:      {rows:,}")
    print(f"seconds:   {seconds:.2f}  (limit {MAX_SECONDS:g})")
    print(f"rows/s:    {rows / seconds:,.0f}")
    print(f"peak RSS:  {peak_mib:,.0f} MiB  (limit {MAX_PEAK_MIB:g})")
    return verdict(passed, f"{rows:,} rows in {seconds:.2f}s, peak {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
