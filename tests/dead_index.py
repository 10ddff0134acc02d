"""The real `lettingo` command with pip pointed at a closed port on loopback and no other source,
for the tests that a fetch from an unreachable package index fails with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys


def run_against_dead_index(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m lettingo_dagster.cli ARGS` with no reachable package index; `env` adds to
    the environment."""
    full_env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "lettingo_dagster.cli", *args],
        capture_output=True, text=True, env=full_env, timeout=300, check=False,
    )  # fmt: skip
