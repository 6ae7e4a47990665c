"""Roll out a data policy in a real env and store the episodes as memory-mappable shards.

Layout of an output folder::

    manifest.json            what was collected (env, policy, seed, spaces) and the finished shards
    shard_00000/             one shard = ``episodes_per_shard`` whole episodes
        obs_lz4.npy          uint8: each episode's frames, its final one included (sum(T_i + 1) frames),
        obs_offsets.npy      int64: ... each frame LZ4-compressed on its own (see ``wm_agent.frames``)
        actions.npy          (sum(T_i), *action_shape): int64 (Discrete) or float32 (Box)
        rewards.npy          float32 (sum(T_i),)
        terminated.npy       bool (sum(T_i),)
        truncated.npy        bool (sum(T_i),)
        lengths.npy          int64 (episodes,): T_i

Speed: GridWorld steps at tens of thousands of frames per second, so nothing crosses a process
boundary per step. Each worker process builds its env once and turns one task (a whole shard) into
files on its own; the main process only sees a small summary per shard. Raw frames are ~12 KB, so
two GridWorld workers would produce ~800 MB/s, twice what this project's disks sustain; compressed
as they are produced (~200 bytes, ~3 us each) they are a few MB/s. ``vectorization="async"|"sync"``
drives one Gymnasium vector env instead (per-step messages: slower for fast envs, same shards).

Determinism: shard ``i`` draws its reset seeds and its policy's random numbers from
``SeedSequence([seed, i])``, so a command produces byte-identical shards whatever the worker count,
and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import re
import shutil
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import PIXELS_ID
from wm_agent.config import is_int
from wm_agent.frames import BLOB, CODEC, OFFSETS, DiscardFrames, FrameArray, FrameWriter, grown
from wm_agent.progress import progress_bar
from wm_agent.workers import death_reason, starting_workers, watch_parent

# wm_agent.io is imported where it is used, by the main process only: workers never write a manifest,
# and every import delays each worker's start.

__all__ = [
    "CollectConfig", "CollectionError", "DataCollector", "EpisodeBuffer", "POLICIES", "VECTORIZATIONS", "make_env",
    "make_policy", "make_vector_env", "pixel_env", "run_episodes", "shard_rngs",
]

# The choices, once: the configs' Literal types (and so the CLI's choices) and the checks both read these.
Policy = Literal["random", "brownian"]
Vectorization = Literal["processes", "async", "sync"]
POLICIES: tuple[str, ...] = get_args(Policy)
VECTORIZATIONS: tuple[str, ...] = get_args(Vectorization)
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 1: raw uint8 obs.npy frames (before LZ4)
SHARD_FILES = (BLOB, OFFSETS, "actions", "rewards", "terminated", "truncated", "lengths")
# Settings that change what the shards contain: a resumed run must agree on all of them.
IDENTITY_KEYS = ("frame_codec", "env_id", "env_kwargs", "policy", "seed", "episodes_per_shard", "max_steps")

# Shard size when none is given: at least MIN_EPISODES_PER_SHARD episodes, and enough to hold about
# SHARD_FRAMES frames if every episode ran to the env's limit. Each shard costs milliseconds of file
# creation (seven files and a folder) whatever it holds: shards of 10 GridWorld episodes (~440 frames)
# halved the collector's rate. CarRacing (1000-step episodes) keeps 10.
MIN_EPISODES_PER_SHARD = 10
SHARD_FRAMES = 5_000

_SHARD_RE = re.compile(r"^shard_(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

PROGRESS_EVERY = 256  # steps between progress reports inside an episode
# The sticky discrete policy repeats each action 1..STICKY_MAX_REPEAT steps.
STICKY_MAX_REPEAT = 8
# Brownian continuous actions: the per-step increment has std sqrt(dt) * (high - low) / 2, with the
# dt = 1/50 of the popular PyTorch world-models reimplementation (for CarRacing's steering: 0.14).
BROWNIAN_DT = 1.0 / 50.0


class CollectionError(RuntimeError):
    """A shard could not be collected (its worker raised or died); finished shards are kept."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


# ----------------------------------------------------------------------------------------------
# Data policies
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# Rollouts into growable arrays
# ----------------------------------------------------------------------------------------------
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
    two measure the same work. ``max_steps`` caps an episode (its last step is marked truncated).
    ``on_progress(frames, episodes)`` gets the buffer's running totals after each episode and every
    ``PROGRESS_EVERY`` steps within one (CarRacing's 1000-step episodes take seconds).
    """
    if buffer is None:
        buffer = EpisodeBuffer(env.observation_space.shape, env.action_space, 1024)
    obs_shape = tuple(buffer.frames.frame_shape)
    store = buffer.frames.append
    cap = max_steps if max_steps is not None else math.inf
    for seed in reset_seeds:
        obs, _ = env.reset(seed=int(seed))
        obs = np.asarray(obs)
        if obs.dtype != np.uint8 or obs.shape != obs_shape:
            raise ValueError(
                f"{env.spec.id if env.spec else env}: expected uint8 observations of shape {obs_shape}, "
                f"got {obs.dtype} {obs.shape}"
            )
        policy.start_episode()
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
            action = policy()
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


# ----------------------------------------------------------------------------------------------
# One shard = one task, run in a worker process (or in-process when workers == 1)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ShardTask:
    index: int
    episodes: int
    out_dir: str
    env_id: str
    env_kwargs: dict
    policy: str
    seed: int
    episodes_per_shard: int
    max_steps: int | None


_ENV_CACHE: dict[str, tuple[gym.Env, EpisodeBuffer]] = {}
_PROGRESS = None  # worker side: shared int64 array, slots 2*i and 2*i+1 = shard i's frames, episodes


# What gym.make raises for an unknown id (gym.error.Error), a "module:Id" whose module does not import
# (ModuleNotFoundError), or kwargs the env does not take.
MAKE_ERRORS = (gym.error.Error, ModuleNotFoundError, TypeError, ValueError)


def make_env(env_id: str, env_kwargs: dict) -> gym.Env:
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


def _cached_env(env_id: str, env_kwargs: dict, capacity: Callable[[gym.Env], int]
                ) -> tuple[gym.Env, EpisodeBuffer]:
    """One env and one episode buffer per process and configuration: building CarRacing is not
    free, and neither is touching fresh memory for every shard."""
    key = json.dumps([env_id, env_kwargs], sort_keys=True)
    if key not in _ENV_CACHE:
        env = make_env(env_id, env_kwargs)
        # Frames go to each shard's FrameWriter, so the buffer needs no frame array of its own.
        frames = DiscardFrames(env.observation_space.shape)
        _ENV_CACHE[key] = env, EpisodeBuffer(env.observation_space.shape, env.action_space, capacity(env), frames)
    return _ENV_CACHE[key]


def _close_cached_envs() -> None:
    while _ENV_CACHE:
        _ENV_CACHE.popitem()[1][0].close()


def shard_rngs(seed: int, index: int, episodes_per_shard: int) -> tuple[np.ndarray, np.random.Generator]:
    """Shard ``index``'s reset seeds (one per episode slot) and its policy Generator."""
    env_seq, policy_seq = np.random.SeedSequence([seed, index]).spawn(2)
    reset_seeds = env_seq.generate_state(episodes_per_shard, dtype=np.uint32).astype(np.int64)
    return reset_seeds, np.random.default_rng(policy_seq)


def default_episodes_per_shard(episode_limit: int | None) -> int:
    """Episodes per shard when none is given, from the longest an episode can run (None: unknown)."""
    if episode_limit is None:
        return MIN_EPISODES_PER_SHARD
    return max(MIN_EPISODES_PER_SHARD, round(SHARD_FRAMES / (int(episode_limit) + 1)))


def _episode_limit(spec, max_steps: int | None) -> int | None:
    """The most steps an episode can take: the env's own limit and ``max_steps``, whichever is smaller."""
    limit = spec.max_episode_steps if spec is not None else None
    if max_steps is not None:
        limit = max_steps if limit is None else min(limit, max_steps)
    return limit


def _shard_failed(task: "_ShardTask", exc: BaseException, where: str = "") -> "CollectionError":
    return CollectionError(
        f"collecting {shard_name(task.index)} of {task.env_id} failed{where}: {type(exc).__name__}: {exc}")


def _init_worker(progress) -> None:
    global _PROGRESS
    _PROGRESS = progress
    watch_parent()


def _report_to_shared(index: int) -> Callable[[int, int], None]:
    def report(frames: int, episodes: int) -> None:
        if _PROGRESS is not None:
            _PROGRESS[2 * index] = frames
            _PROGRESS[2 * index + 1] = episodes

    return report


def _open_shard(task: _ShardTask, frame_shape: tuple[int, ...]) -> tuple[Path, FrameWriter]:
    """A fresh temporary folder for shard ``task.index`` and the writer of its frames.

    Frames are compressed into tmp/obs_lz4.npy while the episodes run. Not wm_agent.io.atomic_path for
    the files: the folder rename in ``_close_shard`` already makes the shard appear whole or not at
    all, and an fsync per file here would leave the worker waiting on the disk. The main process
    fsyncs the shard before listing it.
    """
    out_dir = Path(task.out_dir)
    tmp = out_dir / f"{_TMP_PREFIX}{shard_name(task.index)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        return tmp, FrameWriter(tmp, frame_shape)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _close_shard(task: _ShardTask, tmp: Path, writer: FrameWriter, buffer: EpisodeBuffer) -> dict:
    """Write the rest of a finished shard and move its folder into place; returns its manifest entry.
    On any failure the temporary folder is removed."""
    try:
        try:
            writer.finish()
        finally:
            writer.close()
        for key, array in buffer.arrays().items():
            with open(tmp / f"{key}.npy", "wb") as f:
                np.save(f, array, allow_pickle=False)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    name = shard_name(task.index)
    _move_into_place(tmp, Path(task.out_dir) / name)
    return _shard_entry(name, len(buffer.lengths), buffer.num_steps)


def _abandon_shard(tmp: Path, writer: FrameWriter) -> None:
    """Drop a shard that will not be finished (its rollout failed or was stopped)."""
    writer.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _collect_shard(task: _ShardTask, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Roll out one shard's episodes and move the finished shard folder into place atomically."""
    cpu_start = time.process_time()
    env, buffer = _cached_env(task.env_id, task.env_kwargs, lambda env: _capacity(env.spec, task))
    reset_seeds, rng = shard_rngs(task.seed, task.index, task.episodes_per_shard)
    policy = make_policy(task.policy, env.action_space, rng)
    if on_progress is None:
        on_progress = _report_to_shared(task.index)
    tmp, writer = _open_shard(task, env.observation_space.shape)
    try:
        buffer.clear(frames=writer)
        run_episodes(env, policy, reset_seeds[: task.episodes], task.max_steps, buffer, on_progress)
    except BaseException:
        _abandon_shard(tmp, writer)
        raise
    entry = _close_shard(task, tmp, writer, buffer)
    # CPU time lets the benchmark tell the collector's own overhead from a busy machine.
    return {**entry, "cpu_seconds": time.process_time() - cpu_start}


def _capacity(spec, task: _ShardTask) -> int:
    """Frames a shard can need, from the env's spec. With a known episode cap the buffer never grows
    (and untouched np.empty pages cost no memory); otherwise it starts small and doubles."""
    limit = _episode_limit(spec, task.max_steps)
    return task.episodes_per_shard * (limit + 1) if limit is not None else 4096


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older (shorter) shard there is swapped out first."""
    if final.exists():
        trash = final.parent / f"{_TRASH_PREFIX}{final.name}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)


def _shard_entry(name: str, episodes: int, steps: int) -> dict:
    return {"name": name, "episodes": int(episodes), "frames": int(steps + episodes), "steps": int(steps)}


def _fsync_shard(folder: Path) -> None:
    """Flush a shard's files and its folder entry to disk (so the manifest never lists lost data)."""
    for path in [*(folder / f"{key}.npy" for key in SHARD_FILES), folder, folder.parent]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (IsADirectoryError, PermissionError):  # folders cannot be opened on Windows
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ShardSyncer:
    """Flushes finished shards to disk and then hands them to ``record(entries)``, on one background
    thread, in batches: at most one ``record`` (a manifest rewrite) per ``interval`` seconds.

    Rewriting the manifest after every shard cost more CPU than the rollouts of small shards (with
    10 GridWorld episodes per shard it halved the collector's rate): the manifest is a listing for
    readers, and a resumed run finds finished shards by scanning the folder, so nothing is lost.
    """

    def __init__(self, out_dir: Path, record: Callable[[list[dict]], None], interval: float = 1.0):
        self._out_dir, self._record, self._interval = out_dir, record, interval
        self._queue: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wm-agent-fsync", daemon=True)
        self._thread.start()

    def submit(self, entry: dict) -> None:
        self._queue.put(entry)

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            batch = [] if first is None else [first]
            closing = first is None
            deadline = time.monotonic() + self._interval
            while not closing:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    batch.append(item)
            if batch and self._error is None:
                try:
                    for entry in batch:
                        _fsync_shard(self._out_dir / entry["name"])
                    self._record(batch)
                except BaseException as exc:  # reported by close(); the shards stay on disk for a re-run  # noqa: BLE001
                    self._error = exc

    def close(self) -> BaseException | None:
        """Record every submitted shard; return the failure, if any."""
        self._queue.put(None)
        self._thread.join()
        return self._error


# ----------------------------------------------------------------------------------------------
# The collector
# ----------------------------------------------------------------------------------------------
def describe_space(space: gym.Space) -> dict:
    """A JSON description of a Discrete or Box space (``EpisodeDataset`` rebuilds the space from it)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": list(space.shape), "low": space.low.tolist(),
                "high": space.high.tolist(), "dtype": str(space.dtype)}
    raise ValueError(f"cannot describe action space {space}: only Discrete and Box are supported")


def _named(argument: str) -> str:
    """``episodes_per_shard (--episodes-per-shard)``: an argument as the API and the CLI spell it."""
    return f"{argument} (--{argument.replace('_', '-')})"


def _mp_context():
    # forkserver: workers fork from a clean, single-threaded server that has already imported this
    # module, so they start in milliseconds and never inherit a parent's torch threads or locks.
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        ctx = mp.get_context("forkserver")
        # Add to a preload list the user may have set, not replace it; but never "__main__" (the default):
        # a script without a main guard would run its collection again inside the server.
        kept = [m for m in getattr(forkserver._forkserver, "_preload_modules", []) if m != "__main__"]
        ctx.set_forkserver_preload(list(dict.fromkeys([*kept, "wm_agent.collect"])))
        return ctx
    return mp.get_context("spawn")


class DataCollector:
    """Collect episodes of a data policy into resumable shards (see the module docstring).

    Args:
        env_id: a registered Gymnasium id (``"WM-GridWorld-v0"``, ``"WM-CarRacing-v0"``, or
            ``"module:Id"``); the env must emit ``(H, W, 3)`` uint8 observations, unless ``pixels``.
        out_dir: output folder; re-running into it resumes, a different configuration is refused.
        policy: ``"random"`` (uniform actions) or ``"brownian"`` (clipped random walk for Box actions,
            actions held 1..8 steps for Discrete ones).
        seed: base seed; shard ``i`` is seeded from ``(seed, i)``.
        workers: parallel envs: worker processes, or sub-envs of the vector env (see ``vectorization``).
        episodes_per_shard: episodes per shard (memory per worker grows with it). None (the default):
            at least 10, more for short episodes (about 5,000 frames' worth at the env's episode limit:
            98 for GridWorld, 10 for CarRacing); a folder being resumed keeps the size it was made with.
        env_kwargs: keyword arguments of ``gym.make`` (JSON-serialisable; stored in the manifest).
        max_steps: optional cap on episode length, on top of the env's own time limit.
        vectorization: how the ``workers`` envs run in parallel. ``"processes"`` (the default and the
            fastest): worker processes that each roll out whole shards, so nothing crosses a process
            boundary per step (``workers=1`` collects in this process). ``"async"`` / ``"sync"``: one
            Gymnasium vector env (``gym.make_vec`` with that ``vectorization_mode``) of ``workers``
            sub-envs, stepped in lockstep by this process; per-step messages make it slower for fast
            envs like GridWorld, but any env ``gym.make_vec`` can build works. All three write the same
            shards for the same seed.
        pixels: collect ``env_id``'s ``rgb_array`` render as 64x64 frames, for an env whose observations
            are not images (``CartPole-v1``). The data is then recorded as ``WM-Pixels-v0`` with ``env_id``
            in its keyword arguments (``env_id`` and ``env_kwargs`` as ``pixel_env`` gives them).
    """

    def __init__(
        self,
        env_id: str,
        out_dir: str | os.PathLike,
        policy: str = "random",
        seed: int = 0,
        workers: int = 1,
        episodes_per_shard: int | None = None,
        env_kwargs: dict | None = None,
        max_steps: int | None = None,
        vectorization: str = "processes",
        pixels: bool = False,
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if vectorization not in VECTORIZATIONS:
            raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
        # Each message names the argument and its command-line option, read by users of either.
        if not is_int(workers) or workers < 1:
            raise ValueError(f"{_named('workers')} must be a positive int, got {workers!r}")
        if episodes_per_shard is not None and (not is_int(episodes_per_shard) or episodes_per_shard < 1):
            raise ValueError(f"{_named('episodes_per_shard')} must be a positive int (or None / 0 on the command "
                             f"line: sized by the env's episode limit), got {episodes_per_shard!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"{_named('seed')} must be a non-negative int, got {seed!r}")
        if max_steps is not None and (not is_int(max_steps) or max_steps < 1):
            raise ValueError(f"{_named('max_steps')} must be a positive int (or None / 0 on the command line: "
                             f"the env's own limit), got {max_steps!r}")
        workers, seed = int(workers), int(seed)  # JSON takes no np.int64
        max_steps = None if max_steps is None else int(max_steps)
        env_kwargs = dict(env_kwargs or {})
        try:
            env_kwargs = json.loads(json.dumps(env_kwargs))  # the manifest stores them as JSON
        except TypeError as exc:
            raise ValueError(f"env_kwargs must be JSON-serialisable: {exc}") from None
        if pixels:
            env_id, env_kwargs = pixel_env(env_id, env_kwargs)

        env = make_env(env_id, env_kwargs)
        try:
            obs_space, action_space, spec = env.observation_space, env.action_space, env.spec
        finally:
            env.close()
        if not _observes_frames(obs_space):
            raise ValueError(
                f"{env_id} must observe (H, W, 3) uint8 images, got {obs_space}; set {_named('pixels')} to "
                "collect its rgb_array render as 64x64 frames, or wrap it in envs.ImageObservation"
            )
        _check_action_space(action_space)

        self.env_id = env_id
        self.out_dir = Path(out_dir)
        self.policy = policy
        self.seed = seed
        self.workers = workers
        # Fixed by the caller, or by an existing folder when collect() reads its manifest; until then an
        # unset size is the default a new folder gets.
        self._shard_size_fixed = episodes_per_shard is not None
        self._episode_limit = _episode_limit(spec, max_steps)
        self.episodes_per_shard = (int(episodes_per_shard) if self._shard_size_fixed
                                   else default_episodes_per_shard(self._episode_limit))
        self.env_kwargs = env_kwargs
        self.max_steps = max_steps
        self.vectorization = vectorization
        self.observation_shape = tuple(obs_space.shape)
        self.action_space = action_space
        # Filled by collect(): shards written and the CPU seconds workers spent on them.
        self.stats: dict[str, float] = {"shards": 0, "worker_cpu_seconds": 0.0}

    @classmethod
    def from_config(cls, config: "CollectConfig") -> "DataCollector":
        return cls(config.env, config.out, policy=config.policy, seed=config.seed, workers=config.workers,
                   episodes_per_shard=config.episodes_per_shard or None,  # 0: sized by the env's limit
                   env_kwargs=config.env_kwargs,
                   max_steps=config.max_steps or None,  # as everywhere on the command line: 0 = the env's limit
                   vectorization=config.vectorization, pixels=config.pixels)

    # -- manifest ---------------------------------------------------------------------------------
    def _identity(self) -> dict:
        return {"frame_codec": CODEC, "env_id": self.env_id, "env_kwargs": self.env_kwargs, "policy": self.policy,
                "seed": self.seed, "episodes_per_shard": self.episodes_per_shard, "max_steps": self.max_steps}

    def _new_manifest(self, shards: list[dict]) -> dict:
        manifest = {"format": MANIFEST_FORMAT, **self._identity(),
                    "observation_shape": list(self.observation_shape), "observation_dtype": "uint8",
                    "action_space": describe_space(self.action_space), "shards": []}
        _set_shards(manifest, shards)
        return manifest

    def _check_existing_manifest(self) -> None:
        """Refuse to mix data: an existing manifest must agree on everything that shapes the shards."""
        path = self.out_dir / MANIFEST
        if not path.exists():
            if any(_SHARD_RE.match(p.name) for p in self.out_dir.iterdir()):
                raise ValueError(
                    f"{self.out_dir} holds shard folders but no {MANIFEST}, so their settings are unknown; "
                    "collect into an empty folder"
                )
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        if not isinstance(old, dict):
            raise ValueError(f"{path} is not a wm-agent manifest")  # noqa: TRY004 (every bad manifest is a ValueError)
        if not self._shard_size_fixed and is_int(old.get("episodes_per_shard")) and old["episodes_per_shard"] >= 1:
            self.episodes_per_shard = int(old["episodes_per_shard"])  # e.g. made before the default changed
            self._shard_size_fixed = True
        mine = self._identity()
        diffs = [f"{k}: {old.get(k)!r} there, {mine[k]!r} now" for k in IDENTITY_KEYS if old.get(k) != mine[k]]
        if diffs:
            raise ValueError(
                f"{self.out_dir} already holds data collected with different settings ({'; '.join(diffs)}); "
                "use another --out folder, or delete this one to start over"
            )

    def _scan(self) -> dict[int, dict]:
        """Finished shards on disk by index, after deleting a crashed run's temporary folders."""
        found = {}
        for path in self.out_dir.iterdir():
            if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and path.is_dir():
                shutil.rmtree(path)
                continue
            match = _SHARD_RE.match(path.name)
            if match and path.is_dir():
                entry = self._finished_shard(path)
                if entry is not None:
                    found[int(match.group(1))] = entry
        return found

    def _finished_shard(self, folder: Path) -> dict | None:
        """The manifest entry of a valid shard folder, or None if it must be collected again (its
        files were cut short, e.g. by a machine crash before the main process synced them)."""
        from wm_agent.dataset import open_shard

        try:
            arrays = open_shard(folder, self.observation_shape, self.action_space)
        except (FileNotFoundError, ValueError):
            return None
        lengths = arrays["lengths"]
        return _shard_entry(folder.name, len(lengths), int(lengths.sum()))

    # -- running --------------------------------------------------------------------------------
    def collect(self, episodes: int, progress: bool = True) -> dict:
        """Make sure the folder holds the first ``episodes`` episodes; returns the manifest.

        Shards already on disk with (at least) their planned episodes are skipped, so re-running an
        interrupted command resumes it. Shards beyond the plan are kept and listed.
        """
        if not is_int(episodes) or episodes < 1:
            raise ValueError(f"{_named('episodes')} must be a positive int, got {episodes!r}")
        episodes = int(episodes)
        from wm_agent.io import make_folder, save_json

        self.stats = {"shards": 0, "worker_cpu_seconds": 0.0}
        make_folder(self.out_dir)
        self._check_existing_manifest()
        finished = self._scan()
        manifest = self._new_manifest(list(finished.values()))
        save_json(manifest, self.out_dir / MANIFEST)

        plan = [(i, min(self.episodes_per_shard, episodes - i * self.episodes_per_shard))
                for i in range(math.ceil(episodes / self.episodes_per_shard))]
        tasks = [
            _ShardTask(i, n, str(self.out_dir), self.env_id, self.env_kwargs, self.policy, self.seed,
                       self.episodes_per_shard, self.max_steps)
            for i, n in plan
            if finished.get(i, {}).get("episodes", 0) < n
        ]
        if not tasks:
            return manifest
        if len(plan) < self.workers:
            # A shard is one worker's unit of work: fewer shards than workers leaves workers idle.
            why = "" if self._shard_size_fixed else (
                f" (the default for episodes of up to {self._episode_limit} steps: few shard files, but little "
                "parallelism for a small collection)")
            warnings.warn(
                f"{episodes} episodes make {len(plan)} shard{'s' * (len(plan) != 1)} of up to "
                f"{self.episodes_per_shard} episodes{why}, so only {len(plan)} of {self.workers} workers can run; "
                "fewer episodes per shard (episodes_per_shard, "
                "--episodes-per-shard) would use them all", stacklevel=2)

        def record(entries: list[dict]) -> None:
            for entry in entries:
                self.stats["shards"] += 1
                self.stats["worker_cpu_seconds"] += entry.pop("cpu_seconds", 0.0)  # worker processes report it
                finished[int(_SHARD_RE.match(entry["name"]).group(1))] = entry
            _set_shards(manifest, list(finished.values()))
            save_json(manifest, self.out_dir / MANIFEST)

        bar = progress_bar(desc=f"collect {self.env_id}", unit="frame", unit_scale=True, disable=not progress,
                           dynamic_ncols=True)
        syncer = _ShardSyncer(self.out_dir, record)
        try:
            if self.vectorization != "processes":
                self._run_vector(tasks, syncer.submit, bar)
            elif self.workers == 1 or len(tasks) == 1:
                self._run_here(tasks, syncer.submit, bar)
            else:
                self._run_pool(tasks, syncer.submit, bar)
        finally:
            bar.close()
            sync_error = syncer.close()  # finished shards still reach the manifest if a worker failed
        if sync_error is not None:
            raise sync_error
        return manifest

    def _run_here(self, tasks: list[_ShardTask], record, bar) -> None:
        total_episodes = sum(t.episodes for t in tasks)
        done_frames = done_episodes = 0

        def on_progress(frames: int, eps: int) -> None:  # totals within the current shard
            bar.update(done_frames + frames - bar.n)
            bar.set_postfix_str(f"episodes {done_episodes + eps}/{total_episodes}", refresh=False)

        try:
            for task in tasks:
                try:
                    entry = _collect_shard(task, on_progress)
                except Exception as exc:
                    raise _shard_failed(task, exc) from exc
                record(entry)
                done_frames += entry["frames"]
                done_episodes += entry["episodes"]
        finally:
            _close_cached_envs()

    def _run_pool(self, tasks: list[_ShardTask], record, bar) -> None:
        ctx = _mp_context()
        total_episodes = sum(t.episodes for t in tasks)
        progress = ctx.RawArray("q", 2 * (max(t.index for t in tasks) + 1))
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                                   initializer=_init_worker, initargs=(progress,))
        # Two tasks per worker in flight, the next submitted as one finishes: with every task submitted
        # at once, each wait() below walked all of them, and with hundreds of small shards that main-
        # process work took CPU from the workers.
        backlog = iter(tasks)
        futures: dict[Future, _ShardTask] = {}

        pending: set[Future] = set()

        def submit_next() -> None:
            task = next(backlog, None)
            if task is not None:
                future = pool.submit(_collect_shard, task)
                futures[future] = task
                pending.add(future)

        # The workers start here; Ctrl-C reaches them through _terminate.
        with starting_workers():
            for _ in range(2 * self.workers):
                submit_next()
        # Private, but the executor has no public way to stop running tasks, and a broken pool
        # forgets its processes: take them now (all are started by the submits above).
        processes = list((getattr(pool, "_processes", None) or {}).values())
        done_frames = done_episodes = 0
        try:
            while pending:
                done, still = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                pending.clear()
                pending.update(still)
                for future in done:
                    task = futures[future]
                    name = shard_name(task.index)
                    try:
                        entry = future.result()
                    except BrokenProcessPool as exc:
                        raise CollectionError(
                            f"a worker process died while collecting {name} ({death_reason(processes)}); "
                            f"finished shards are kept in {self.out_dir}: re-run the same command to resume"
                        ) from exc
                    except Exception as exc:
                        raise _shard_failed(task, exc, " in a worker") from exc
                    record(entry)
                    done_frames += entry["frames"]
                    done_episodes += entry["episodes"]
                    del futures[future]
                    submit_next()
                # In-flight shards report running totals through shared memory: no per-step messages.
                running = [futures[f].index for f in pending]
                frames = done_frames + sum(progress[2 * i] for i in running)
                eps = done_episodes + sum(progress[2 * i + 1] for i in running)
                bar.update(frames - bar.n)
                bar.set_postfix_str(f"episodes {eps}/{total_episodes}")
        except BaseException:
            _terminate(pool, processes)
            _remove_temporary(self.out_dir)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


    def _run_vector(self, tasks: list[_ShardTask], record, bar) -> None:
        """Step one Gymnasium vector env of ``workers`` sub-envs in lockstep; each sub-env fills one
        shard at a time and takes the next one from the plan when it is done. A sub-env left without
        a shard near the end keeps stepping (a vector env steps all of its envs) and its steps are
        dropped. The shards are the same bytes the ``processes`` vectorization writes."""
        n = min(self.workers, len(tasks))
        envs = make_vector_env(self.env_id, self.env_kwargs, n, self.vectorization)
        backlog = iter(tasks)
        slots: list[_SlotShard | None] = [None] * n
        buffers = [EpisodeBuffer(self.observation_shape, self.action_space, _capacity(envs.spec, tasks[0]),
                                 DiscardFrames(self.observation_shape)) for _ in range(n)]
        # Actions for sub-envs without a shard: never stored, so any seed does.
        idle_policy = make_policy("random", self.action_space, np.random.default_rng(0))
        total_episodes = sum(t.episodes for t in tasks)
        done_frames = done_episodes = steps = 0

        def next_shard(i: int) -> int | None:
            """Give sub-env i its next shard; its first reset seed (None when the plan is done)."""
            task = next(backlog, None)
            slots[i] = None if task is None else _SlotShard(task, self.observation_shape, self.action_space,
                                                              buffers[i])
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
                    f"{what} the {self.vectorization} vector env of {self.env_id} for {shards} failed", exc,
                    getattr(envs, "processes", []))) from exc

        try:
            obs, _ = call("resetting", envs.reset, seed=[next_shard(i) for i in range(n)])
            for i, slot in enumerate(slots):
                if slot is not None:
                    slot.begin_episode(obs[i])
            while any(slot is not None for slot in slots):
                actions = [(slot.policy if slot is not None else idle_policy)() for slot in slots]
                obs, rewards, terminated, truncated, _ = call("stepping", envs.step,
                                                              _batch_actions(self.action_space, actions))
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


def _terminate(pool: ProcessPoolExecutor, processes: list) -> None:
    """Stop the workers now instead of letting them finish shards nobody will wait for."""
    processes = [*processes, *(getattr(pool, "_processes", None) or {}).values()]
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():  # it ignored SIGTERM; the caller's pool.shutdown(wait=True) would wait for it
            process.kill()
            process.join(timeout=10)


def _remove_temporary(out_dir: Path) -> None:
    """Delete the half-written shard folders of stopped workers (a SIGKILLed collector leaves them
    to the next run, whose scan deletes them)."""
    for path in out_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _set_shards(manifest: dict, shards: list[dict]) -> None:
    manifest["shards"] = sorted(shards, key=lambda s: int(_SHARD_RE.match(s["name"]).group(1)))
    for key in ("episodes", "frames", "steps"):
        manifest[key] = sum(s[key] for s in manifest["shards"])


# ----------------------------------------------------------------------------------------------
# Typed configuration (the CLI's `wm-agent collect` is generated from it)
# ----------------------------------------------------------------------------------------------
@dataclass
class CollectConfig:
    out: str = field(metadata={"help": "output folder (re-running the same command resumes into it)"})
    env: str = field(default="WM-GridWorld-v0", metadata={"help": "Gymnasium env id with 64x64x3 uint8 frames "
                                                                  "(any env that renders rgb_array with --pixels)"})
    episodes: int = field(default=100, metadata={"help": "episodes the folder should hold"})
    workers: int = field(default=1, metadata={"help": "parallel envs: worker processes (1 = collect in this "
                                                        "process), or sub-envs with --vectorization async|sync"})
    vectorization: Vectorization = field(
        default="processes",
        metadata={"help": "processes: workers roll out whole shards on their own (fastest); async|sync: one "
                          "Gymnasium vector env (gym.make_vec) stepped in lockstep. Same shards either way"})
    policy: Policy = field(
        default="random", metadata={"help": "data policy: uniform random, or brownian (correlated) actions"})
    seed: int = field(default=0, metadata={"help": "base seed; shard i is seeded from (seed, i)"})
    episodes_per_shard: int | None = field(
        default=None, metadata={"help": "episodes per shard file set (0 or unset: at least 10, more for short "
                                        "episodes: about 5,000 frames' worth at the env's episode limit, 98 for "
                                        "GridWorld; a folder being resumed keeps its own)"})
    max_steps: int | None = field(
        default=None, metadata={"help": "optional cap on the collected episodes' length (0 or unset: the env's own "
                                              "limit); dreams and evaluation keep the env's own limit: to change "
                                              "that, pass max_episode_steps in --env-kwargs"})
    env_kwargs: dict = field(default_factory=dict, metadata={"help": "JSON object of gym.make keyword arguments"})
    pixels: bool = field(
        default=False, metadata={"help": "collect the env's rgb_array render as 64x64 frames, for envs whose "
                                         "observations are not images (CartPole-v1); the data then names env "
                                         "WM-Pixels-v0 with env_id ENV in its env_kwargs: the env later stages "
                                         "rebuild"})
