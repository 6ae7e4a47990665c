"""Read the collector's shards as one dataset of episodes, memory-mapped so RAM stays bounded.

Global indices run over the episodes in order: frame ``g`` is frame ``g - frame_offsets[i]`` of the
episode ``i`` whose frames contain it, and likewise for steps with ``step_offsets``. Episode ``i``
has ``lengths[i]`` steps (actions, rewards, flags) and ``lengths[i] + 1`` frames, so the frame before
step ``t`` of episode ``i`` is ``frame_offsets[i] + t`` and the frame after it is the next one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from wm_agent.config import is_int
from wm_agent.data.frames import RECOLLECT
from wm_agent.data.shards import IDENTITY_KEYS, MANIFEST, _read_manifest, open_shard, space_from_description

__all__ = ["EpisodeDataset", "same_episodes"]


# What decides a folder's episodes: the collector's identity but for how frames are stored.
IDENTITY = tuple(key for key in IDENTITY_KEYS if key != "frame_codec")


def same_episodes(saved: dict, identity: dict) -> bool:
    """Whether an identity recorded earlier names the same episodes as ``identity`` does now.

    Args:
        saved: the identity recorded earlier (in a checkpoint); keys an older record lacks (it predates
            them) are not compared.
        identity: the identity now (``EpisodeDataset.identity``).

    Returns:
        True when every key of ``saved`` has the same value in ``identity``. Several folders read as one
        (``EpisodeUnion``) have ``{"folders": [identity, ...]}``: the same folders' episodes, in the same order.
    """
    if "folders" in saved or "folders" in identity:
        mine, theirs = saved.get("folders"), identity.get("folders")
        return (isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs)
                and all(same_episodes(a, b) for a, b in zip(mine, theirs)))
    return all(identity.get(key) == value for key, value in saved.items())


class EpisodeCounts:
    """Episode, step and frame counts from ``self.lengths`` (steps per episode; each episode has one frame
    more than steps: its first observation)."""

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    @property
    def num_frames(self) -> int:
        return self.num_steps + self.num_episodes


class EpisodeDataset(EpisodeCounts):
    """Episodes of a collection folder (see ``wm_agent.data.collect``), validated on opening.

    Args:
        root: the collection folder (the one holding the manifest, not one of its shards).

    Raises:
        FileNotFoundError: for a missing or empty folder ("no shards found in DIR").
        ValueError: naming the file, for a corrupt manifest or a truncated, corrupt or inconsistent array.
    """

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        manifest_path = root / MANIFEST
        if not root.is_dir() or not manifest_path.is_file():
            has_shards = root.is_dir() and any(p.name.startswith("shard_") for p in root.iterdir())
            if has_shards:
                raise ValueError(f"{root} holds shard folders but no {MANIFEST}")
            if root.is_file():
                raise NotADirectoryError(f"{root} is a file; the data is a folder written by `wm-agent collect`")
            if root.is_dir() and (root.parent / MANIFEST).is_file() and root.name.startswith("shard_"):
                raise ValueError(f"{root} is one shard of a dataset; pass its folder, {root.parent}")
            raise FileNotFoundError(f"no shards found in {root} (collect some with `wm-agent collect --out {root}`)")
        manifest = _read_manifest(manifest_path)
        if not manifest["shards"]:
            raise FileNotFoundError(f"no shards found in {root} ({manifest_path} lists none)")

        _allow_open_files(len(manifest["shards"]) + 64)
        obs_shape = tuple(manifest["observation_shape"])
        action_space = space_from_description(manifest["action_space"])
        shards = []
        for entry in manifest["shards"]:
            try:
                shards.append(open_shard(root / entry["name"], obs_shape, action_space, entry["episodes"],
                                         entry.get("steps")))
            except (FileNotFoundError, ValueError) as exc:  # the same kind of error, with how to mend it
                kind = FileNotFoundError if isinstance(exc, FileNotFoundError) else ValueError
                raise kind(f"{exc}; {RECOLLECT.format(shard=root / entry['name'])}") from None

        # The episode table: which shard holds each episode, and where its rows start in that shard.
        ep_shard = np.concatenate([np.full(len(s["lengths"]), k, np.int64) for k, s in enumerate(shards)])
        lengths = np.concatenate([np.asarray(s["lengths"], np.int64) for s in shards])
        local_step = np.concatenate([_starts(np.asarray(s["lengths"], np.int64)) for s in shards])
        local_frame = np.concatenate([_starts(np.asarray(s["lengths"], np.int64) + 1) for s in shards])
        self._init(root, manifest, action_space, shards, ep_shard, lengths, local_frame, local_step)

    def _init(self, root, manifest, action_space, shards, ep_shard, lengths, local_frame, local_step) -> None:
        self.root = root
        self.manifest = manifest
        self.action_space = action_space
        self._shards = shards
        self._ep_shard = ep_shard
        self._local_frame = local_frame
        self._local_step = local_step
        self.lengths = lengths
        self.frame_offsets = _starts(lengths + 1)
        self.step_offsets = _starts(lengths)

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def env_id(self) -> str:
        return self.manifest["env_id"]

    @property
    def env_kwargs(self) -> dict:
        """The ``gym.make`` keyword arguments the episodes were collected with (``collect --env-kwargs``)."""
        return dict(self.manifest.get("env_kwargs") or {})

    @property
    def identity(self) -> dict:
        """What determines the episodes (collection is deterministic given these): two folders with the
        same identity hold the same episodes, one a prefix of the other."""
        return {key: self.manifest.get(key) for key in IDENTITY}

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["observation_shape"])

    def __repr__(self) -> str:
        return (f"EpisodeDataset({str(self.root)!r}, env_id={self.env_id!r}, episodes={self.num_episodes}, "
                f"frames={self.num_frames})")

    # -- access -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Episodes (a dataset of episodes indexes and iterates by episode, as ``episode(i)`` reads them)."""
        return self.num_episodes

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.episode(i)

    def __iter__(self):
        return (self.episode(i) for i in range(self.num_episodes))

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``, read-only.

        Args:
            i: the episode's index (negative ones count from the end).

        Returns:
            ``obs`` (T+1 frames, decompressed) and ``actions``, ``rewards``, ``terminated``, ``truncated``
            (T steps each, views of in-memory arrays); all read-only.
        """
        i = _check_index(i, self.num_episodes, "episode")
        shard = self._shards[self._ep_shard[i]]
        f, s, t = int(self._local_frame[i]), int(self._local_step[i]), int(self.lengths[i])
        out = {"obs": shard["obs"][f : f + t + 1]}
        out["obs"].flags.writeable = False  # like the views below: the dataset is not edited through it
        for key in ("actions", "rewards", "terminated", "truncated"):
            out[key] = shard[key][s : s + t]
        return out

    def frames(self, indices) -> np.ndarray:
        """Frames at global indices.

        Args:
            indices: 1-D integer array of global frame indices (any order, repeats allowed).

        Returns:
            The frames as a uint8 (B, H, W, 3) array.
        """
        indices = frame_indices(indices, self.num_frames)
        out = np.empty((len(indices), *self.observation_shape), np.uint8)
        if len(indices) == 0:
            return out
        episodes = np.searchsorted(self.frame_offsets, indices, side="right") - 1
        shard_of = self._ep_shard[episodes]
        local = self._local_frame[episodes] + (indices - self.frame_offsets[episodes])
        # Reading each shard's frames in ascending order turns random access into forward sweeps
        # through the memory map; the results are then scattered back to the requested positions.
        order = np.lexsort((local, shard_of))
        bounds = np.flatnonzero(np.diff(shard_of[order])) + 1
        for group in np.split(order, bounds):
            out[group] = self._shards[shard_of[group[0]]]["obs"][local[group]]
        return out

    def iter_frame_batches(
        self, batch_size: int, rng: np.random.Generator, drop_last: bool = False
    ) -> Iterator[np.ndarray]:
        """One epoch of uint8 frame batches in a random order: each frame exactly once.

        Args:
            batch_size: frames per batch (a positive int).
            rng: the numpy Generator that shuffles the frames.
            drop_last: drop the last, smaller batch.

        Returns:
            An iterator of uint8 (B, H, W, 3) arrays.
        """
        return frame_batches(self, batch_size, rng, drop_last)

    def release_pages(self) -> None:
        """Drop the frame pages an epoch has touched from this process's resident set.

        They are clean file pages (the kernel could reclaim them anyway), but without this the
        resident size of a process that read a 12 GB dataset once reads as 12 GB.
        """
        for shard in self._shards:
            shard["obs"].release_pages()

    def actions_all(self) -> np.ndarray:
        """All episodes' actions rows, copied out of the shards.

        Returns:
            The actions of every episode in episode order, as one in-memory array.
        """
        return self._concat_steps("actions")

    def rewards_all(self) -> np.ndarray:
        """All episodes' rewards rows, copied out of the shards.

        Returns:
            The rewards of every episode in episode order, as one in-memory array.
        """
        return self._concat_steps("rewards")

    def terminated_all(self) -> np.ndarray:
        """All episodes' terminated rows, copied out of the shards.

        Returns:
            The terminated flags of every episode in episode order, as one in-memory array.
        """
        return self._concat_steps("terminated")

    def truncated_all(self) -> np.ndarray:
        """All episodes' truncated rows, copied out of the shards.

        Returns:
            The truncated flags of every episode in episode order, as one in-memory array.
        """
        return self._concat_steps("truncated")

    def _concat_steps(self, key: str) -> np.ndarray:
        """All episodes' ``key`` rows in episode order, as one in-memory array."""
        pieces = []
        for k, first, last in self._runs():
            start = int(self._local_step[first])
            stop = int(self._local_step[last] + self.lengths[last])
            pieces.append(self._shards[k][key][start:stop])
        return np.concatenate(pieces)

    def _runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs ``(shard, first, last)`` of consecutive episodes stored back to back in one
        shard: whole shards for a full dataset, so concatenation copies a few big slices."""
        runs = []
        first = 0
        for i in range(1, self.num_episodes + 1):
            if (
                i == self.num_episodes
                or self._ep_shard[i] != self._ep_shard[i - 1]
                or self._local_step[i] != self._local_step[i - 1] + self.lengths[i - 1]
            ):
                runs.append((int(self._ep_shard[first]), first, i - 1))
                first = i
        return runs

    # -- views ------------------------------------------------------------------------------------
    def subset(self, episode_indices) -> "EpisodeDataset":
        """A view over the given episodes with the same API, sharing the memory maps.

        Args:
            episode_indices: 1-D integer array of at least one episode index (in the view's order);
                e.g. the last 10% of episodes, held out for validation.

        Returns:
            The view, an ``EpisodeDataset``.
        """
        idx = np.asarray(episode_indices)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise ValueError(f"episode_indices must be a 1-D integer array, got {idx.dtype} shape {idx.shape}")
        if idx.size == 0:
            raise ValueError("a subset needs at least one episode")
        idx = idx.astype(np.int64, copy=False)
        if idx.min() < -self.num_episodes or idx.max() >= self.num_episodes:
            raise IndexError(f"episode indices must lie in [-{self.num_episodes}, {self.num_episodes})")
        idx = idx % self.num_episodes
        view = object.__new__(type(self))
        view._init(self.root, self.manifest, self.action_space, self._shards, self._ep_shard[idx],
                   self.lengths[idx], self._local_frame[idx], self._local_step[idx])
        return view


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def frame_indices(indices, num_frames: int) -> np.ndarray:
    """``indices`` checked (a 1-D integer array in ``[-num_frames, num_frames)``) as int64, negative ones
    counted from the end as ``episode(-1)`` is."""
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
        raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} shape {indices.shape}")
    if len(indices) == 0:
        return indices.astype(np.int64)
    low, high = int(indices.min()), int(indices.max())  # Python ints: a uint64 index cannot wrap around
    if low < -num_frames or high >= num_frames:
        raise IndexError(f"frame indices must lie in [-{num_frames}, {num_frames}), got {low}..{high}")
    indices = indices.astype(np.int64, copy=False)
    return indices % num_frames if low < 0 else indices


def frame_batches(data, batch_size: int, rng: np.random.Generator, drop_last: bool = False) -> Iterator[np.ndarray]:
    """One epoch of ``data.frames`` batches in a random order, each frame exactly once, releasing the pages
    read every 256 batches and at the end (``data``: an ``EpisodeDataset`` or a union of them)."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {rng!r}")
    return _frame_batches(data, batch_size, rng, drop_last)


def _frame_batches(data, batch_size: int, rng: np.random.Generator, drop_last: bool) -> Iterator[np.ndarray]:
    order = rng.permutation(data.num_frames)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for i, start in enumerate(range(0, stop, batch_size)):
        yield data.frames(order[start : start + batch_size])
        if i % 256 == 255:
            data.release_pages()
    data.release_pages()


def _starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: where each block starts when blocks of ``counts`` are laid end to end."""
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _allow_open_files(needed: int) -> None:
    """Raise the soft open-file limit (often 1024) towards the hard one: each shard's memory map
    keeps a descriptor open, and the paper's 10,000 CarRacing rollouts make 1,000 shards."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + 256:
        target = needed + 1024 if hard == resource.RLIM_INFINITY else min(hard, needed + 1024)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _check_index(i, n: int, what: str) -> int:
    if not is_int(i):  # True would read index 1
        raise TypeError(f"{what} index must be an int, got {type(i).__name__}")
    if not -n <= i < n:
        raise IndexError(f"{what} index {i} out of range for {n} {what}s")
    return int(i) % n
