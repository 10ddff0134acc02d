"""Training that gives the same weights on every rerun.

With several threads, some of torch's backward kernels (the embedding's gradient among them)
accumulate in an order that depends on thread timing, so two runs of the same seeded pretraining
can end with different weights, and every reward, pair and figure downstream moves with them.
Torch's deterministic algorithms remove that; on CUDA they also need cuBLAS's fixed workspace.

Those algorithms also fill every new uninitialized tensor (`torch.empty`) with NaN, a debugging
aid against kernels that read memory before writing it. It is switched off here: every kernel
these trainers run writes its output before reading it (a rerun gives the same weights, which the
tests check), and the fill cost seconds per DPO step (TRL's chunked log-probability buffer is
4,096 x 32,768 floats, filled on every forward and backward;
bench/deterministic_fill_benchmark.py measures both).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# torch.utils.deterministic.fill_uninitialized_memory inside `deterministic_torch` (the
# benchmark turns it on to measure what it costs).
FILL_UNINITIALIZED_MEMORY = False


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Deterministic kernels inside the block; the process's previous choice after it.

    `warn_only`: an operation without a deterministic implementation warns instead of failing,
    so a model with such a layer still trains."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill
