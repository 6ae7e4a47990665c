"""One shard = one task: roll out a ``_ShardTask``'s episodes and write them as a shard folder that
appears whole or not at all, in a worker process (or in-process when ``workers == 1``). Workers that may
not see the main process's files (a Ray cluster) write the shard on their own machine and send its files
back (``_collect_shard_for_driver``), and the main process puts them in place (``_place_shard``).

A shard's reset seeds and policy random numbers come from ``SeedSequence([seed, index])`` (``shard_rngs``),
so its bytes depend neither on the worker that writes it nor on the shards written before it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np

from wm_agent.env_ids import episode_limit
from wm_agent.data.episodes import EpisodeBuffer, make_env, run_episodes
from wm_agent.data.frames import DiscardFrames, FrameWriter
from wm_agent.data.policies import make_policy
from wm_agent.data.shards import _TMP_PREFIX, _TRASH_PREFIX, _shard_entry, shard_name
from wm_agent.workers import set_counters

# wm_agent.io is imported by the main process only: workers never write a manifest, and every import
# delays each worker's start.

__all__ = ["CollectionError", "shard_rngs"]


class CollectionError(RuntimeError):
    """A shard could not be collected (its worker raised or died); finished shards are kept."""


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
    policy_options: dict | None = None  # the controller policy's (controller_policy.prepare_driver)


def _shard_failed(task: "_ShardTask", exc: BaseException, where: str = "") -> "CollectionError":
    return CollectionError(
        f"collecting {shard_name(task.index)} of {task.env_id} failed{where}: {type(exc).__name__}: {exc}")


def shard_rngs(seed: int, index: int, episodes_per_shard: int) -> tuple[np.ndarray, np.random.Generator]:
    """Shard ``index``'s reset seeds (one per episode slot) and its policy Generator."""
    env_seq, policy_seq = np.random.SeedSequence([seed, index]).spawn(2)
    reset_seeds = env_seq.generate_state(episodes_per_shard, dtype=np.uint32).astype(np.int64)
    return reset_seeds, np.random.default_rng(policy_seq)


def _collect_shard(task: _ShardTask, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Roll out one shard's episodes and move the finished shard folder into place atomically."""
    cpu_start = time.process_time()
    env, buffer = _cached_env(task.env_id, task.env_kwargs, lambda env: _capacity(env.spec, task))
    reset_seeds, rng = shard_rngs(task.seed, task.index, task.episodes_per_shard)
    policy = make_policy(task.policy, env.action_space, rng, task.policy_options)
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


def _collect_shard_for_driver(task: _ShardTask) -> dict:
    """``_collect_shard`` for a worker that may not see the main process's files (a Ray cluster's): the
    shard is written into a temporary folder of the worker's machine, and its entry comes back with the
    files' bytes under ``"files"`` (``_place_shard`` writes them into ``task.out_dir``). The bytes are those
    ``_collect_shard`` writes, compressed frames included: a GridWorld shard of 98 episodes is ~1 MB."""
    from wm_agent.io import temporary_folder  # only here: local workers never import it

    with temporary_folder("wm-agent-shard-") as root:  # a killed worker's folder is swept by the next one
        entry = _collect_shard(dataclasses.replace(task, out_dir=root))
        folder = Path(root) / entry["name"]
        entry["files"] = {path.name: path.read_bytes() for path in sorted(folder.iterdir())}
    return entry


def _place_shard(out_dir: Path, entry: dict) -> dict:
    """In the main process: write the files of a shard sent back by ``_collect_shard_for_driver`` into
    ``out_dir``, appearing whole or not at all (a temporary folder renamed into place, as a local worker
    does); returns the entry without the files."""
    entry = dict(entry)
    files, name = entry.pop("files"), entry["name"]
    if any(Path(file).name != file or file.startswith(".") for file in files):
        raise ValueError(f"a worker sent back {name} with unexpected file names: {sorted(files)}")
    tmp = Path(out_dir) / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for file, data in files.items():
            (tmp / file).write_bytes(data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, Path(out_dir) / name)
    return entry


def _capacity(spec, task: _ShardTask) -> int:
    """Frames a shard can need, from the env's spec. With a known episode cap the buffer never grows
    (and untouched np.empty pages cost no memory); otherwise it starts small and doubles."""
    limit = episode_limit(spec, task.max_steps)
    return task.episodes_per_shard * (limit + 1) if limit is not None else 4096


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


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older (shorter) shard there is swapped out first."""
    if final.exists():
        trash = final.parent / f"{_TRASH_PREFIX}{final.name}-{os.getpid()}"
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)


def _remove_temporary(out_dir: Path) -> None:
    """Delete the half-written shard folders of stopped workers (a SIGKILLed collector leaves them
    to the next run, whose scan deletes them)."""
    for path in out_dir.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Worker side: one env per process, progress through the pool's counters
# ----------------------------------------------------------------------------------------------
_ENV_CACHE: dict[str, tuple[gym.Env, EpisodeBuffer]] = {}


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


def _mp_context():
    # forkserver: workers fork from a clean, single-threaded server that has already imported this
    # module, so they start in milliseconds and never inherit a parent's torch threads or locks.
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        ctx = mp.get_context("forkserver")
        # Add to a preload list the user may have set, not replace it; but never "__main__" (the default):
        # a script without a main guard would run its collection again inside the server.
        kept = [m for m in getattr(forkserver._forkserver, "_preload_modules", []) if m != "__main__"]
        ctx.set_forkserver_preload(list(dict.fromkeys([*kept, "wm_agent.data.shard_writer"])))
        return ctx
    return mp.get_context("spawn")


def _report_to_shared(index: int) -> Callable[[int, int], None]:
    """Shard ``index``'s running totals into its pool's counters: slots 2i and 2i+1 hold its frames and
    episodes (shared memory in a local pool: no per-step messages)."""

    def report(frames: int, episodes: int) -> None:
        set_counters(2 * index, (frames, episodes))

    return report
