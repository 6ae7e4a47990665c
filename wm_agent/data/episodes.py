"""Episodes of a real env into growable arrays, and the envs collection rolls them out in.

``run_episodes`` is the loop the collector's workers and the benchmark's single-env baseline share;
``make_env`` and ``pixel_env`` build the env a collection names, and check what it observes.
"""

from __future__ import annotations

import math
from typing import Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import PIXELS_ID
from wm_agent.data.frames import FrameArray, grown

__all__ = ["MAKE_ERRORS", "PROGRESS_EVERY", "EpisodeBuffer", "make_env", "pixel_env", "run_episodes"]

PROGRESS_EVERY = 256  # steps between progress reports inside an episode


class EpisodeBuffer:
    """Episodes appended into growable arrays; their frames go to ``frames``.

    ``frames`` is anything with ``frame_shape`` and ``append(frame)``: a ``FrameArray`` in memory
    (the default) or the collector's ``FrameWriter``, which compresses them into a shard file.
    Reuse one buffer for many shards (``clear()``): first writes to fresh memory pages cost more
    than a GridWorld step on some machines.
    """

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, capacity: int, frames=None):
        capacity = max(int(capacity), 2)
        discrete = isinstance(action_space, spaces.Discrete)
        self.frames = FrameArray(obs_shape, capacity) if frames is None else frames
        self.actions = np.empty((capacity, *(() if discrete else action_space.shape)),
                                np.int64 if discrete else np.float32)
        self.rewards = np.empty(capacity, np.float32)
        self.terminated = np.empty(capacity, bool)
        self.truncated = np.empty(capacity, bool)
        self.lengths: list[int] = []
        self.num_frames = 0
        self.num_steps = 0

    def _ensure(self, steps: int) -> None:
        if steps > len(self.rewards):
            for name in ("actions", "rewards", "terminated", "truncated"):
                setattr(self, name, grown(getattr(self, name), steps))

    def clear(self, frames=None) -> None:
        """Forget the episodes; their frames go to ``frames`` from now on (or to the old, cleared sink)."""
        self.lengths = []
        self.num_frames = self.num_steps = 0
        if frames is not None:
            self.frames = frames
        elif hasattr(self.frames, "clear"):
            self.frames.clear()

    def add_first(self, obs) -> None:
        """Store an episode's reset frame (for a caller that steps envs itself, like ``add_step``)."""
        self.frames.append(obs)
        self.num_frames += 1

    def add_step(self, obs, action, reward, terminated: bool, truncated: bool) -> None:
        """Store one step (a caller that steps envs itself; ``run_episodes`` inlines this)."""
        s = self.num_steps
        self._ensure(s + 1)
        self.frames.append(obs)
        self.actions[s], self.rewards[s] = action, reward
        self.terminated[s], self.truncated[s] = terminated, truncated
        self.num_frames += 1
        self.num_steps = s + 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored episodes' per-step arrays and lengths (the frames are in ``frames``)."""
        s = self.num_steps
        return {
            "actions": self.actions[:s], "rewards": self.rewards[:s],
            "terminated": self.terminated[:s], "truncated": self.truncated[:s],
            "lengths": np.asarray(self.lengths, np.int64),
        }


def run_episodes(
    env: gym.Env,
    policy,
    reset_seeds,
    max_steps: int | None = None,
    buffer: EpisodeBuffer | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> EpisodeBuffer:
    """Roll out one episode per reset seed, storing every frame, action and reward.

    This loop is shared by the collector's workers and the benchmark's single-env baseline, so the
    two measure the same work. The policy gets each reset seed (``start_episode(seed)``) and, where it
    ``observes``, the frame it acts on (``policy(frame)``). ``max_steps`` caps an episode (its last step
    is marked truncated). ``on_progress(frames, episodes)`` gets the buffer's running totals after each
    episode and every ``PROGRESS_EVERY`` steps within one (CarRacing's 1000-step episodes take seconds).
    """
    if buffer is None:
        buffer = EpisodeBuffer(env.observation_space.shape, env.action_space, 1024)
    obs_shape = tuple(buffer.frames.frame_shape)
    store = buffer.frames.append
    cap = max_steps if max_steps is not None else math.inf
    observes = getattr(policy, "observes", False)  # the controller reads each frame; the blind policies are called bare
    for seed in reset_seeds:
        obs, _ = env.reset(seed=int(seed))
        obs = np.asarray(obs)
        if obs.dtype != np.uint8 or obs.shape != obs_shape:
            raise ValueError(
                f"{env.spec.id if env.spec else env}: expected uint8 observations of shape {obs_shape}, "
                f"got {obs.dtype} {obs.shape}"
            )
        policy.start_episode(int(seed))
        # Locals, not attributes, in the per-step loop: it runs tens of thousands of times a second.
        f, s = buffer.num_frames, buffer.num_steps
        act_buf, rew_buf = buffer.actions, buffer.rewards
        term_buf, trunc_buf = buffer.terminated, buffer.truncated
        store(obs)
        f += 1
        t = 0
        done = False
        while not done:
            if s >= len(rew_buf):
                buffer._ensure(s + 1)
                act_buf, rew_buf = buffer.actions, buffer.rewards
                term_buf, trunc_buf = buffer.terminated, buffer.truncated
            action = policy(obs) if observes else policy()
            obs, reward, terminated, truncated, _ = env.step(action)
            t += 1
            truncated = bool(truncated) or t >= cap
            store(obs)
            act_buf[s] = action
            rew_buf[s] = reward
            term_buf[s] = terminated
            trunc_buf[s] = truncated
            f += 1
            s += 1
            done = terminated or truncated
            if on_progress is not None and t % PROGRESS_EVERY == 0:
                buffer.num_frames, buffer.num_steps = f, s
                on_progress(f, len(buffer.lengths))
        buffer.num_frames, buffer.num_steps = f, s
        buffer.lengths.append(t)
        if on_progress is not None:
            on_progress(f, len(buffer.lengths))
    return buffer


# What gym.make raises for an unknown id (gym.error.Error), a "module:Id" whose module does not import
# (ModuleNotFoundError), or kwargs the env does not take.
MAKE_ERRORS = (gym.error.Error, ModuleNotFoundError, TypeError, ValueError)


def make_env(env_id: str, env_kwargs: dict) -> gym.Env:
    """Build the env a collection names.

    Args:
        env_id: a registered Gymnasium id, or ``"module:Id"``.
        env_kwargs: keyword arguments of ``gym.make``.

    Returns:
        The env, as ``gym.make`` makes it.

    Raises:
        ValueError: the env cannot be made (unknown id, a module that does not import, bad kwargs).
    """
    try:
        return gym.make(env_id, **env_kwargs)
    except MAKE_ERRORS as exc:
        raise ValueError(f"cannot make env {env_id!r} with {env_kwargs}: {type(exc).__name__}: {exc}") from exc


def _observes_frames(space: gym.Space) -> bool:
    """Whether observations are what a shard stores: (H, W, 3) uint8 images."""
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
            and space.shape[-1] == 3)


# make_pixel_env's own keyword arguments: the rest of --env-kwargs is the rendered env's
_PIXEL_ENV_ARGS = ("image_size", "image_crop", "render_mode")


def pixel_env(env_id: str, env_kwargs: dict) -> tuple[str, dict]:
    """The env id and ``gym.make`` keyword arguments that ``pixels=True`` (``--pixels``) collects from:
    ``env_id``'s rgb_array render as 64x64 frames, i.e. ``WM-Pixels-v0`` with ``env_id`` among its keyword
    arguments. The manifest records both, so later stages (``WorldModel.make_env``, hence
    ``LatentObservation``) rebuild the same env.

    ``env_id``'s own time limit goes into them too, as ``max_episode_steps`` (unless ``env_kwargs`` sets
    one): ``WM-Pixels-v0`` has none registered, and dreams and evaluation read an episode's length from
    there. An env that already observes images is refused: its observations are collected as they are,
    and its render (CarRacing's zoomed-out view, say) is another picture than the one it observes.
    """
    mode = env_kwargs.get("render_mode")
    if mode not in (None, "rgb_array"):
        raise ValueError(f"pixels (--pixels) collects the rgb_array render of {env_id}, not render_mode {mode!r}: "
                         "drop render_mode from env_kwargs (--env-kwargs)")
    env = make_env(env_id, {k: v for k, v in env_kwargs.items() if k not in _PIXEL_ENV_ARGS})
    try:
        space, spec = env.observation_space, env.spec
    finally:
        env.close()
    if _observes_frames(space):
        raise ValueError(f"{env_id} already observes {space.shape} uint8 images, which are collected as they are; "
                         "pixels (--pixels) is for envs whose observations are not images (it collects their "
                         "rgb_array render instead): drop it")
    kwargs = {"env_id": env_id, **env_kwargs}
    if "max_episode_steps" not in kwargs and spec is not None and spec.max_episode_steps:
        kwargs["max_episode_steps"] = int(spec.max_episode_steps)
    return PIXELS_ID, kwargs
