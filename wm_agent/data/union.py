"""Several collection folders read as one dataset of episodes (``train-vae --data A B``), so that data of
different policies (brownian exploration and a controller's own episodes, say) train V and M together.

The episodes run folder by folder in the order given; every folder must hold the same env (id and
``--env-kwargs``), frames and actions. One folder opens as the plain ``EpisodeDataset``, so a one-folder
run trains exactly as it always did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from wm_agent.data.dataset import EpisodeCounts, EpisodeDataset, frame_batches, frame_indices
from wm_agent.data.shards import describe_space
from wm_agent.env_ids import registered_id

__all__ = ["EpisodeUnion", "data_folders", "open_episodes"]


def data_folders(data) -> list[str]:
    """``--data`` as a list of folders: one path (a str or path, as the Python API always took) or several.

    Args:
        data: a folder, or a sequence of folders.

    Returns:
        The folders as strings, in the order given.

    Raises:
        ValueError: for no folder, or one given twice.
    """
    folders = [os.fspath(data)] if isinstance(data, (str, os.PathLike)) else [os.fspath(p) for p in data]
    if not folders:
        raise ValueError("data (--data) needs at least one folder of episodes")
    seen: dict[Path, str] = {}
    for folder in folders:
        key = Path(folder).resolve()
        if key in seen:
            raise ValueError(f"data (--data) names {seen[key]} twice (as {seen[key]} and {folder}); its episodes "
                             "would count double")
        seen[key] = folder
    return folders


def open_episodes(data) -> EpisodeDataset | EpisodeUnion:
    """The episodes of one folder (an ``EpisodeDataset``) or of several (an ``EpisodeUnion``).

    Args:
        data: a folder, or a sequence of folders (``data_folders``).

    Returns:
        The dataset.
    """
    folders = data_folders(data)
    if len(folders) == 1:
        return EpisodeDataset(folders[0])
    return EpisodeUnion([EpisodeDataset(folder) for folder in folders])


class EpisodeUnion(EpisodeCounts):
    """Episode datasets of the same env laid end to end, with the reading API of ``EpisodeDataset`` that
    training uses (global frame and step indices run over the parts in order).

    Args:
        parts: two or more ``EpisodeDataset``s of the same env id, ``env_kwargs``, frame shape and actions.

    Raises:
        ValueError: naming two folders that differ.
    """

    def __init__(self, parts: list[EpisodeDataset]):
        if len(parts) < 2:
            raise ValueError("an EpisodeUnion needs two or more datasets; one is read as it is")
        first = parts[0]
        for part in parts[1:]:
            for what, mine, theirs in (
                ("env", registered_id(first.env_id), registered_id(part.env_id)),
                ("--env-kwargs", first.env_kwargs, part.env_kwargs),
                ("frame shape", first.observation_shape, part.observation_shape),
                ("action space", describe_space(first.action_space), describe_space(part.action_space)),
            ):
                if mine != theirs:
                    raise ValueError(f"data (--data): {first.root} and {part.root} differ in {what} ({mine} and "
                                     f"{theirs}); the folders trained on together must come from the same env")
        self.parts = list(parts)
        self.root = " + ".join(str(part.root) for part in parts)
        self.action_space = first.action_space
        self.lengths = np.concatenate([part.lengths for part in parts])
        self.frame_offsets = _starts(self.lengths + 1)
        self.step_offsets = _starts(self.lengths)
        self._frame_starts = _starts(np.array([part.num_frames for part in parts], np.int64))

    @property
    def env_id(self) -> str:
        return self.parts[0].env_id

    @property
    def env_kwargs(self) -> dict:
        return self.parts[0].env_kwargs

    @property
    def identity(self) -> dict:
        """What determines the episodes: each folder's identity, in order (``same_episodes`` compares them)."""
        return {"folders": [part.identity for part in self.parts]}

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return self.parts[0].observation_shape

    def __len__(self) -> int:
        return self.num_episodes

    def __repr__(self) -> str:
        return f"EpisodeUnion({[str(p.root) for p in self.parts]!r}, episodes={self.num_episodes}, " \
               f"frames={self.num_frames})"

    def frames(self, indices) -> np.ndarray:
        """uint8 (B, H, W, 3) frames at global indices, as ``EpisodeDataset.frames`` (negative ones count from
        the end); each part reads its own, in order."""
        indices = frame_indices(indices, self.num_frames)
        out = np.empty((len(indices), *self.observation_shape), np.uint8)
        if len(indices) == 0:
            return out
        part_of = np.searchsorted(self._frame_starts, indices, side="right") - 1
        for k in np.unique(part_of):
            rows = np.flatnonzero(part_of == k)
            out[rows] = self.parts[k].frames(indices[rows] - self._frame_starts[k])
        return out

    def iter_frame_batches(self, batch_size: int, rng: np.random.Generator, drop_last: bool = False
                           ) -> Iterator[np.ndarray]:
        """One epoch of uint8 frame batches over all parts in a random order (each frame exactly once), as
        ``EpisodeDataset.iter_frame_batches``."""
        return frame_batches(self, batch_size, rng, drop_last)

    def release_pages(self) -> None:
        """Drop the frame pages read so far from this process's resident set (``EpisodeDataset.release_pages``)."""
        for part in self.parts:
            part.release_pages()

    def actions_all(self) -> np.ndarray:
        """All episodes' actions, part after part, as one in-memory array."""
        return np.concatenate([part.actions_all() for part in self.parts])

    def rewards_all(self) -> np.ndarray:
        """All episodes' rewards, part after part, as one in-memory array."""
        return np.concatenate([part.rewards_all() for part in self.parts])

    def terminated_all(self) -> np.ndarray:
        """All episodes' terminated flags, part after part, as one in-memory array."""
        return np.concatenate([part.terminated_all() for part in self.parts])

    def truncated_all(self) -> np.ndarray:
        """All episodes' truncated flags, part after part, as one in-memory array."""
        return np.concatenate([part.truncated_all() for part in self.parts])


def _starts(counts: np.ndarray) -> np.ndarray:
    """Exclusive cumulative sum: where each block starts when blocks of ``counts`` are laid end to end."""
    starts = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts
