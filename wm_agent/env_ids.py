"""Looking envs up in Gymnasium's registry without making them: specs, registered ids, episode limits."""

from __future__ import annotations

import importlib

import gymnasium as gym


def env_spec(env_id: str):
    """The ``EnvSpec`` ``gym.make(env_id)`` would use, without making the env; a ``"module:Id"`` imports
    its module first, as ``gym.make`` does. Raises ``ImportError`` or ``gymnasium.error.Error``."""
    module, _, name = env_id.rpartition(":")
    if module:
        importlib.import_module(module)
    return gym.spec(name)


def registered_id(env_id: str) -> str:
    """``env_id`` as Gymnasium registered it (``envs:WM-CarRacing-v0`` -> ``WM-CarRacing-v0``); itself when
    it cannot be looked up here."""
    try:
        return env_spec(env_id).id
    except (ImportError, gym.error.Error):
        return env_id


def episode_limit(spec, max_steps: int | None = None) -> int | None:
    """The most steps an episode can take: the spec's ``max_episode_steps`` and ``max_steps``, whichever is
    smaller.

    Args:
        spec: the env's ``EnvSpec`` (``env.spec``), or None for an env made without one.
        max_steps: a further cap (None: none).

    Returns:
        The limit, or None when neither the spec nor ``max_steps`` sets one.
    """
    limit = spec.max_episode_steps if spec is not None else None
    if max_steps is not None:
        limit = max_steps if limit is None else min(limit, max_steps)
    return limit


def time_limit_of(env) -> int | None:
    """The smallest ``TimeLimit`` among ``env``'s wrappers (None without one): the episode limit of an env
    as made, which its keyword arguments may have set below the registered one."""
    limits = []
    while env is not None:
        if isinstance(env, gym.wrappers.TimeLimit):
            limits.append(int(env._max_episode_steps))
        env = getattr(env, "env", None)
    return min(limits, default=None)


def registered_episode_limit(env_id: str | None, default: int) -> int:
    """The registered ``max_episode_steps`` of ``env_id``, or ``default`` for an env without one or that
    cannot be found here."""
    try:
        return int(episode_limit(env_spec(env_id)) or default) if env_id else default
    except (ImportError, gym.error.Error):
        return default
