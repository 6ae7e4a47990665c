"""The data policies that collection rolls out: uniform random actions, temporally correlated
("brownian") ones, or a trained world model's controller (``wm_agent.data.controller_policy``, imported
only when asked for: it needs torch, which the other policies' workers never load).

A policy is called once per step: ``policy()`` for the blind ones, ``policy(frame)`` for one whose
``observes`` is True (the controller reads the frame it acts on). ``start_episode(seed)`` begins each
episode with its reset seed."""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["BLIND_POLICIES", "BROWNIAN_DT", "POLICIES", "STICKY_MAX_REPEAT", "BlindPolicy", "Policy",
           "check_policy_arguments", "make_policy"]

# The choices, once: the configs' Literal type (and so the CLI's choices) and the checks both read these.
Policy = Literal["random", "brownian", "controller"]
POLICIES: tuple[str, ...] = get_args(Policy)
# The policies that need nothing but the action space (the controller needs a checkpoint).
BlindPolicy = Literal["random", "brownian"]
BLIND_POLICIES: tuple[str, ...] = get_args(BlindPolicy)
# The sticky discrete policy repeats each action 1..STICKY_MAX_REPEAT steps.
STICKY_MAX_REPEAT = 8
# Brownian continuous actions: the per-step increment has std sqrt(dt) * (high - low) / 2, with the
# dt = 1/50 of the popular PyTorch world-models reimplementation (for CarRacing's steering: 0.14).
BROWNIAN_DT = 1.0 / 50.0


def check_policy_arguments(policy: str, world_model, policy_noise, greedy: bool, vectorization: str,
                           backend: str) -> None:
    """Refuse the controller policy's own arguments with another policy, and the controller policy where it
    does not run: it drives from local worker processes (or this one) only.

    Raises:
        ValueError: one line naming the argument and its flag.
    """
    if policy != "controller":
        given = [name for name, value in (("world_model", world_model), ("policy_noise", policy_noise),
                                          ("greedy", greedy)) if value not in (None, False)]
        if given:
            raise ValueError(f"{_named(given[0])} goes with policy controller (--policy controller) only, "
                             f"not with policy {policy!r}")
        return
    if world_model is None:
        raise ValueError(f"policy controller (--policy controller) needs {_named('world_model')}: the checkpoint "
                         "whose controller drives")
    # Each process loads the checkpoint once and keeps M's state per episode: a vector env stepped from this
    # process, or a Ray cluster that may not see the file, would need another path for no gain here.
    if vectorization != "processes":
        raise ValueError(f"policy controller (--policy controller) collects with worker processes only: drop "
                         f"{_named('vectorization')} {vectorization}")
    if backend != "local":
        raise ValueError(f"policy controller (--policy controller) runs on this machine only: drop "
                         f"{_named('backend')} {backend}")


def _named(argument: str) -> str:
    return f"{argument} (--{argument.replace('_', '-')})"


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
    observes = False

    def __init__(self, space: gym.Space, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self._buffer: list | np.ndarray = []
        self._next = 0

    def start_episode(self, seed: int | None = None) -> None:
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

    observes = False

    def __init__(self, space: gym.Space, rng: np.random.Generator):
        self.space, self.rng = space, rng
        self._discrete = isinstance(space, spaces.Discrete)
        if not self._discrete:
            self._scale = math.sqrt(BROWNIAN_DT) * (space.high - space.low) / 2.0
        self._action: Any = None
        self._left = 0

    def start_episode(self, seed: int | None = None) -> None:
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


def make_policy(name: str, space: gym.Space, rng: np.random.Generator, options: dict | None = None):
    """A data policy: ``policy.start_episode(seed)`` at each reset, then ``policy()`` -> action, or
    ``policy(frame)`` where ``policy.observes``.

    Args:
        name: one of ``POLICIES``.
        space: the env's action space.
        rng: the policy's random numbers (the shard's policy Generator).
        options: the controller's (``controller_policy.ControllerPolicy.from_options``); None for the others.

    Returns:
        The policy.
    """
    if name not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {name!r}")
    _check_action_space(space)
    if name == "controller":
        from wm_agent.data.controller_policy import ControllerPolicy

        if options is None:
            raise ValueError("the controller policy needs its options (the checkpoint and the noise)")
        return ControllerPolicy.from_options(options, space, rng)
    return (_RandomPolicy if name == "random" else _BrownianPolicy)(space, rng)
