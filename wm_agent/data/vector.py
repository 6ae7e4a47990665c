"""The ``async`` / ``sync`` vectorizations: one Gymnasium vector env whose sub-envs each fill one shard
at a time, stepped in lockstep by this process. Per-step messages make it slower than worker processes
for fast envs like GridWorld, but any env ``gym.make_vec`` can build works, and the shards are the same
bytes the ``processes`` vectorization writes."""

from __future__ import annotations

import math
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from wm_agent.data.episodes import MAKE_ERRORS, PROGRESS_EVERY, EpisodeBuffer
from wm_agent.data.frames import DiscardFrames
from wm_agent.data.policies import make_policy
from wm_agent.data.shard_writer import (CollectionError, _abandon_shard, _capacity, _close_shard, _mp_context,
                                        _open_shard, _ShardTask, shard_rngs)
from wm_agent.data.shards import shard_name
from wm_agent.workers import death_reason, starting_workers

__all__ = ["make_vector_env", "run_vector"]


def run_vector(tasks: list[_ShardTask], record, bar, *, env_id: str, env_kwargs: dict, workers: int,
               vectorization: str, observation_shape: tuple[int, ...], action_space: gym.Space) -> None:
    """Step one Gymnasium vector env of ``workers`` sub-envs in lockstep; each sub-env fills one
    shard at a time and takes the next one from the plan when it is done. A sub-env left without
    a shard near the end keeps stepping (a vector env steps all of its envs) and its steps are
    dropped. The shards are the same bytes the ``processes`` vectorization writes.

    Args:
        tasks: the shards to collect, in order.
        record: called with each finished shard's manifest entry.
        bar: the progress bar (``update``, ``set_postfix_str``, ``n``).
        env_id: the env to build, with ``env_kwargs`` (keyword arguments of ``gym.make_vec``).
        env_kwargs: see ``env_id``.
        workers: sub-envs of the vector env (at most one per task).
        vectorization: ``"async"`` or ``"sync"``, the vector env's ``vectorization_mode``.
        observation_shape: the env's frame shape.
        action_space: the env's action space.

    Raises:
        CollectionError: the vector env failed (finished shards are kept, unfinished ones removed).
    """
    n = min(workers, len(tasks))
    envs = make_vector_env(env_id, env_kwargs, n, vectorization)
    backlog = iter(tasks)
    slots: list[_SlotShard | None] = [None] * n
    buffers = [EpisodeBuffer(observation_shape, action_space, _capacity(envs.spec, tasks[0]),
                             DiscardFrames(observation_shape)) for _ in range(n)]
    # Actions for sub-envs without a shard: never stored, so any seed does.
    idle_policy = make_policy("random", action_space, np.random.default_rng(0))
    total_episodes = sum(t.episodes for t in tasks)
    done_frames = done_episodes = steps = 0

    def next_shard(i: int) -> int | None:
        """Give sub-env i its next shard; its first reset seed (None when the plan is done)."""
        task = next(backlog, None)
        slots[i] = None if task is None else _SlotShard(task, observation_shape, action_space, buffers[i])
        return None if slots[i] is None else slots[i].next_seed()

    def report() -> None:
        live = [slot.buffer for slot in slots if slot is not None]
        bar.update(done_frames + sum(b.num_frames for b in live) - bar.n)
        bar.set_postfix_str(f"episodes {done_episodes + sum(len(b.lengths) for b in live)}/{total_episodes}")

    def call(what: str, method, *args, **kwargs):
        """``envs.method(...)``; a failure becomes a CollectionError naming the shards in progress."""
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            shards = ", ".join(shard_name(slot.task.index) for slot in slots if slot is not None)
            raise CollectionError(_vector_failure(
                f"{what} the {vectorization} vector env of {env_id} for {shards} failed", exc,
                getattr(envs, "processes", []))) from exc

    try:
        obs, _ = call("resetting", envs.reset, seed=[next_shard(i) for i in range(n)])
        for i, slot in enumerate(slots):
            if slot is not None:
                slot.begin_episode(obs[i])
        while any(slot is not None for slot in slots):
            actions = [(slot.policy if slot is not None else idle_policy)() for slot in slots]
            obs, rewards, terminated, truncated, _ = call("stepping", envs.step,
                                                          _batch_actions(action_space, actions))
            steps += 1
            reset = np.zeros(n, bool)
            seeds: list[int | None] = [None] * n
            for i, slot in enumerate(slots):
                if slot is None:
                    reset[i] = terminated[i] or truncated[i]
                elif slot.step(obs[i], actions[i], rewards[i], terminated[i], truncated[i]):
                    reset[i] = True
                    seeds[i] = slot.next_seed()
                    if seeds[i] is None:
                        entry = slot.close()
                        slots[i] = None
                        record(entry)
                        done_frames += entry["frames"]
                        done_episodes += entry["episodes"]
                        seeds[i] = next_shard(i)
            if reset.any() and any(slot is not None for slot in slots):
                obs, _ = call("resetting", envs.reset, seed=seeds, options={"reset_mask": reset})
                for i in np.flatnonzero(reset):
                    if slots[i] is not None:
                        slots[i].begin_episode(obs[i])
            if steps % PROGRESS_EVERY == 0:
                report()
        report()
    except BaseException:
        for slot in slots:
            if slot is not None:
                slot.abandon()
        _close_after_failure(envs)
        raise
    envs.close()


class _SlotShard:
    """The shard one sub-env of a vector env is filling (the ``async``/``sync`` vectorizations)."""

    def __init__(self, task: _ShardTask, frame_shape: tuple[int, ...], action_space: gym.Space,
                 buffer: EpisodeBuffer):
        self.task, self.buffer = task, buffer
        self.reset_seeds, rng = shard_rngs(task.seed, task.index, task.episodes_per_shard)
        self.policy = make_policy(task.policy, action_space, rng)
        self.cap = task.max_steps if task.max_steps is not None else math.inf
        self.tmp, self.writer = _open_shard(task, frame_shape)
        buffer.clear(frames=self.writer)
        self.t = 0  # steps into the current episode

    def next_seed(self) -> int | None:
        """The reset seed of the shard's next episode, or None when the shard is complete."""
        done = len(self.buffer.lengths)
        return int(self.reset_seeds[done]) if done < self.task.episodes else None

    def begin_episode(self, obs: np.ndarray) -> None:
        self.policy.start_episode()
        self.buffer.add_first(obs)
        self.t = 0

    def step(self, obs, action, reward, terminated, truncated) -> bool:
        """Store one step; True when the episode ended (its length is recorded)."""
        self.t += 1
        truncated = bool(truncated) or self.t >= self.cap
        self.buffer.add_step(obs, action, reward, terminated, truncated)
        if terminated or truncated:
            self.buffer.lengths.append(self.t)
            return True
        return False

    def close(self) -> dict:
        return _close_shard(self.task, self.tmp, self.writer, self.buffer)

    def abandon(self) -> None:
        _abandon_shard(self.tmp, self.writer)


def make_vector_env(env_id: str, env_kwargs: dict, num_envs: int, mode: str) -> gym.vector.VectorEnv:
    """``gym.make_vec`` as the collector drives it: no autoreset (each sub-env is reset with its own
    episode's seed when it finishes) and no copy of the batch (each frame is compressed at once)."""
    vector_kwargs: dict[str, Any] = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED, "copy": False}
    if mode == "async":
        vector_kwargs["context"] = _mp_context().get_start_method()
    try:
        with starting_workers():  # on Ctrl-C, _close_after_failure stops the sub-env processes
            return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs,
                                **env_kwargs)
    except MAKE_ERRORS as exc:
        raise ValueError(f"cannot make a {mode} vector env of {env_id!r} with {env_kwargs}: "
                         f"{type(exc).__name__}: {exc}") from exc


def _close_after_failure(envs: gym.vector.VectorEnv) -> None:
    """Close a vector env that raised. A sub-env process that died leaves the env waiting for its
    answer, and ``close`` raises that error again (and again from ``__del__``): stop the processes
    here instead, so none outlives the collector and the first error is the one reported."""
    try:
        with warnings.catch_warnings():  # "close while waiting for a pending call": that is the point here
            warnings.simplefilter("ignore")
            envs.close(terminate=True)
    except Exception:  # noqa: BLE001 (whatever close() raised, stop the processes here)
        for process in getattr(envs, "processes", []):
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)
        envs.closed = True


def _vector_failure(what: str, exc: Exception, processes: list) -> str:
    if isinstance(exc, (EOFError, ConnectionError)):  # the pipe of a process that is gone
        return f"{what}: a sub-env process died ({death_reason(processes)}); finished shards are kept"
    return f"{what}: {type(exc).__name__}: {exc}"


def _batch_actions(space: gym.Space, actions: list) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return np.asarray(actions, np.int64)
    return np.stack(actions).astype(space.dtype, copy=False)
