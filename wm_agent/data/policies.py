"""The data policies that collection rolls out: uniform random actions, or temporally correlated
("brownian") ones."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["BROWNIAN_DT", "POLICIES", "STICKY_MAX_REPEAT", "Policy", "make_policy"]

# The choices, once: the configs' Literal type (and so the CLI's choices) and the checks both read these.
Policy = Literal["random", "brownian"]
POLICIES: tuple[str, ...] = get_args(Policy)
# The sticky discrete policy repeats each action 1..STICKY_MAX_REPEAT steps.
STICKY_MAX_REPEAT = 8
# Brownian continuous actions: the per-step increment has std sqrt(dt) * (high - low) / 2, with the
# dt = 1/50 of the popular PyTorch world-models reimplementation (for CarRacing's steering: 0.14).
BROWNIAN_DT = 1.0 / 50.0


def _check_action_space(space: gym.Space) -> None:
    if isinstance(space, spaces.Discrete):
        return
    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):  # the policies draw and walk in real numbers
            raise ValueError(f"the data policies need a float Box (or Discrete) action space, got {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"the data policies need a bounded Box action space, got {space}")
        return
    raise ValueError(f"the data policies support Discrete and Box action spaces, got {space}")


class _RandomPolicy:
    """Uniform random actions, drawn in chunks: one Generator call per 4096 steps, not per step."""

    CHUNK = 4096

    def __init__(self, space: gym.Space, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self._buffer: list | np.ndarray = []
        self._next = 0

    def start_episode(self) -> None:
        pass

    def _refill(self) -> None:
        space = self.space
        if isinstance(space, spaces.Discrete):
            start = int(space.start)
            # Python ints: Discrete.contains and the envs' step take them fastest.
            self._buffer = self.rng.integers(start, start + int(space.n), size=self.CHUNK).tolist()
        else:
            draws = self.rng.uniform(space.low, space.high, size=(self.CHUNK, *space.shape))
            self._buffer = np.clip(draws.astype(space.dtype), space.low, space.high)
        self._next = 0

    def __call__(self):
        if self._next == len(self._buffer):
            self._refill()
        action = self._buffer[self._next]
        self._next += 1
        return action


class _BrownianPolicy:
    """Temporally correlated exploration.

    Box: a random walk clipped to the bounds, restarted from a uniform draw each episode (the
    "brownian" data policy used for CarRacing). Discrete: a random action held for 1..k steps.
    """

    def __init__(self, space: gym.Space, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self._discrete = isinstance(space, spaces.Discrete)
        if not self._discrete:
            self._scale = math.sqrt(BROWNIAN_DT) * (space.high - space.low) / 2.0
        self._action: Any = None
        self._left = 0

    def start_episode(self) -> None:
        self._left = 0
        if not self._discrete:
            self._action = self.rng.uniform(self.space.low, self.space.high).astype(self.space.dtype)

    def __call__(self):
        space = self.space
        if self._discrete:
            if self._left == 0:
                self._action = int(space.start) + int(self.rng.integers(int(space.n)))
                self._left = int(self.rng.integers(1, STICKY_MAX_REPEAT + 1))
            self._left -= 1
            return self._action
        step = self._scale * self.rng.standard_normal(space.shape)
        self._action = np.clip(self._action + step, space.low, space.high).astype(space.dtype)
        return self._action


def make_policy(name: str, space: gym.Space, rng: np.random.Generator):
    """A data policy: ``policy.start_episode()`` at each reset, then ``policy()`` -> action."""
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {name!r}")
    _check_action_space(space)
    return (_RandomPolicy if name == "random" else _BrownianPolicy)(space, rng)
