"""Whether a device runs bfloat16 matmuls natively.

Pretraining's `bf16=None` and the bfloat16 MiniLM encoder pay off only there; elsewhere autocast
to bfloat16 emulates the matmuls and is slower than float32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True on a CUDA GPU with bfloat16 support, or a CPU with AVX512-BF16 (AMX implies it)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # a private helper, hence the guard
        return bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False
