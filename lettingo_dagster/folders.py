"""Folders written whole or not at all: models, adapters, recommenders, reports.

Everything is written into a scratch folder beside the target and renamed into place at the end,
so a crash or an exception never leaves a half-written folder under the final name, and readers
see the old folder or the new one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def write_folder_atomically(target: Path) -> Iterator[Path]:
    """Yield a fresh scratch folder; on success it replaces `target`, on failure it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
