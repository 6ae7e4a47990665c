"""Random draws with a ``torch.Generator`` that may live on another device than the tensors.

Every sampler in wm-agent is seeded through a CPU generator (``torch.Generator().manual_seed(s)``),
also when the model runs on a GPU: torch refuses a CPU generator for a CUDA tensor, so the draws here
happen on the generator's device and the result moves to the tensor's. One seed then gives one stream
of draws on every device.
"""

from __future__ import annotations

import torch

__all__ = ["multinomial", "randn", "rand"]


def multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (N, K), on ``probs``' device."""
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)


def randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers of ``shape`` with ``like``'s device and dtype."""
    device = like.device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def rand(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in [0, 1) of ``shape`` with ``like``'s device and dtype."""
    device = like.device if generator is None else generator.device
    return torch.rand(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
