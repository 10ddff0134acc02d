"""Training that gives the same weights on every rerun.

With several threads, some of torch's backward kernels (the embedding's gradient among them)
accumulate in an order that depends on thread timing, so two runs of the same seeded pretraining
can end with different weights, and every reward, pair and figure downstream moves with them.
Torch's deterministic algorithms remove that; on CUDA they also need cuBLAS's fixed workspace.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels inside the block; the process's previous choice after it.

    `warn_only`: an operation without a deterministic implementation warns instead of failing,
    so a model with such a layer still trains."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)
