"""Random draws with a ``torch.Generator`` that may live on another device than the tensors.

Every sampler in wm-agent is seeded through a CPU generator (``torch.Generator().manual_seed(s)``),
also when the model runs on a GPU: torch refuses a CPU generator for a CUDA tensor, so the draws here
happen on the generator's device and the result moves to the tensor's. One seed then gives one stream
of draws on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["EpisodeUniforms", "multinomial", "rand", "randn"]

_ACTIONS = 1  # stream tag: an episode's action numbers are seeded from (reset seed, _ACTIONS)


class EpisodeUniforms:
    """One stream of uniform numbers per episode, seeded from the episode's reset seed: the episode's
    t-th sampled action uses the t-th number of its own stream, so an episode plays the same whatever
    else runs in its batch (``wm-agent evaluate --episodes 10`` and ``--episodes 200`` agree on their
    first ten episodes; ``wm-agent render --seed S`` shows the episode that evaluate scored with seed S).
    Episodes that share a reset seed share the stream: common random numbers for CMA-ES candidates."""

    def __init__(self, seeds: Sequence[int], block: int = 256):
        self._streams = [np.random.default_rng([int(s), _ACTIONS]) for s in seeds]
        self._block, self._start, self._table = block, 0, np.zeros((len(seeds), 0))

    def at(self, step: int, episodes: np.ndarray | Sequence[int]) -> torch.Tensor:
        """Numbers in [0, 1) for step ``step`` (0, 1, 2, ... in order) of the given episodes (indices into seeds)."""
        if step >= self._start + self._table.shape[1]:  # next block of every stream, so they stay aligned
            self._start = step
            self._table = np.stack([s.random(self._block) for s in self._streams])
        return torch.as_tensor(self._table[np.asarray(episodes), step - self._start])


def multinomial(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``probs`` (N, K), on ``probs``' device."""
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)


def _draw(fill, shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = like.device if generator is None else generator.device
    return fill(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal numbers of ``shape`` with ``like``'s device and dtype."""
    return _draw(torch.randn, shape, generator, like)


def rand(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in [0, 1) of ``shape`` with ``like``'s device and dtype."""
    return _draw(torch.rand, shape, generator, like)
