"""The on-disk format of collected episodes, which the collector writes and the dataset reads.

Layout of an output folder::

    manifest.json            what was collected (env, policy, seed, spaces) and the finished shards
    shard_00000/             one shard = ``episodes_per_shard`` whole episodes
        obs_lz4.npy          uint8: each episode's frames, its final one included (sum(T_i + 1) frames),
        obs_offsets.npy      int64: ... each frame LZ4-compressed on its own (see ``wm_agent.data.frames``)
        actions.npy          (sum(T_i), *action_shape): int64 (Discrete) or float32 (Box)
        rewards.npy          float32 (sum(T_i),)
        terminated.npy       bool (sum(T_i),)
        truncated.npy        bool (sum(T_i),)
        lengths.npy          int64 (episodes,): T_i

A shard is written in a temporary folder (``.tmp-shard_NNNNN-PID``) and renamed into place when whole;
an older shard it replaces is renamed to ``.trash-shard_NNNNN-PID`` first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from wm_agent.data.frames import BLOB, CODEC, OFFSETS, CompressedFrames

# wm_agent.io is imported where it is used (open_shard): the collector's workers import this module for
# the names below, never read a shard, and every import delays each worker's start.

__all__ = ["IDENTITY_KEYS", "MANIFEST", "MANIFEST_FORMAT", "SHARD_FILES", "describe_space", "open_shard",
           "shard_name", "space_from_description"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2  # 1: raw uint8 obs.npy frames (before LZ4)
SHARD_FILES = (BLOB, OFFSETS, "actions", "rewards", "terminated", "truncated", "lengths")
# Settings that change what the shards contain: a resumed run must agree on all of them.
# policy_options: the controller policy's checkpoint hash, noise and greedy flag (absent for the others).
IDENTITY_KEYS = ("frame_codec", "env_id", "env_kwargs", "policy", "policy_options", "seed", "episodes_per_shard",
                 "max_steps")

_SHARD_RE = re.compile(r"^shard_(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


def shard_name(index: int) -> str:
    """The folder name of shard ``index``: ``shard_00042``."""
    return f"shard_{index:05d}"


def _shard_entry(name: str, episodes: int, steps: int) -> dict:
    return {"name": name, "episodes": int(episodes), "frames": int(steps + episodes), "steps": int(steps)}


def _set_shards(manifest: dict, shards: list[dict]) -> None:
    manifest["shards"] = sorted(shards, key=lambda s: int(_SHARD_RE.match(s["name"]).group(1)))
    for key in ("episodes", "frames", "steps"):
        manifest[key] = sum(s[key] for s in manifest["shards"])


def describe_space(space: gym.Space) -> dict:
    """A JSON description of a Discrete or Box space (``EpisodeDataset`` rebuilds the space from it)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {"type": "box", "shape": list(space.shape), "low": space.low.tolist(),
                "high": space.high.tolist(), "dtype": str(space.dtype)}
    raise ValueError(f"cannot describe action space {space}: only Discrete and Box are supported")


def space_from_description(desc: dict) -> gym.Space:
    """Rebuild the action space stored by ``describe_space``."""
    kind = desc.get("type") if isinstance(desc, dict) else None
    if kind == "discrete":
        return spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
    if kind == "box":
        dtype = np.dtype(desc.get("dtype", "float32"))
        low = np.asarray(desc["low"], dtype).reshape(desc["shape"])
        high = np.asarray(desc["high"], dtype).reshape(desc["shape"])
        return spaces.Box(low, high, dtype=dtype)
    raise ValueError(f"unknown action space description {desc!r}")


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt manifest {path}: {exc}") from exc
    required = ("env_id", "observation_shape", "action_space", "shards")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise ValueError(f"corrupt manifest {path}: expected a JSON object with keys {required}")
    shape = manifest["observation_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and shape[-1] == 3 and all(isinstance(v, int) for v in shape)):
        raise ValueError(f"corrupt manifest {path}: observation_shape must be [H, W, 3], got {shape!r}")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("frame_codec") != CODEC:
        raise ValueError(
            f"{path}: written by another version of wm-agent (format {manifest.get('format', 1)!r}, frames "
            f"{manifest.get('frame_codec', 'raw uint8')!r}; this version reads format {MANIFEST_FORMAT}, frames "
            f"{CODEC!r}); collect the data again into a new folder")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("episodes"), int) for s in shards
    ):
        raise ValueError(f"corrupt manifest {path}: 'shards' must be a list of {{name, episodes, ...}} entries")
    try:
        space_from_description(manifest["action_space"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt manifest {path}: bad action_space: {exc}") from exc
    return manifest


def open_shard(
    folder: Path, obs_shape: tuple, action_space: gym.Space, episodes: int | None = None, steps: int | None = None
) -> dict[str, np.ndarray]:
    """Memory-map one shard's compressed frames, read its small per-step arrays, and check that they
    agree with each other and with the expected ``episodes`` and ``steps`` (from the manifest) when
    given. ``"obs"`` is a ``CompressedFrames``. Raises ``FileNotFoundError`` or ``ValueError`` naming
    the offending file."""
    from wm_agent.io import load_npy

    # Only the frame blob is memory-mapped: every map holds a file descriptor, and the rest is small
    # (CarRacing's 10,000 x 1000 steps are ~180 MB of per-step arrays and 80 MB of offsets).
    arrays = {key: load_npy(folder / f"{key}.npy", mmap=key == BLOB) for key in SHARD_FILES}

    def fail(key: str, problem: str):
        raise ValueError(f"{folder / f'{key}.npy'}: {problem}")

    lengths = arrays["lengths"]
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        fail("lengths", f"expected a 1-D integer array, got {lengths.dtype} shape {lengths.shape}")
    if episodes is not None and len(lengths) < episodes:
        fail("lengths", f"holds {len(lengths)} episodes, the manifest says {episodes}")
    # More episodes than listed: a resumed collect has just filled this shard and lists it within a
    # second (the shard is renamed into place first). The listed episodes are its first ones, the same
    # bytes as before: the whole shard is checked, and only those are read.
    listed = episodes if episodes is not None and len(lengths) > episodes else None
    if len(lengths) and lengths.min() < 1:
        fail("lengths", f"episode lengths must be >= 1, found {lengths.min()}")
    expected_steps = steps
    steps = int(lengths.sum())
    frames = steps + len(lengths)
    if expected_steps is not None and listed is None and expected_steps != steps:
        fail("lengths", f"sums to {steps} steps, the manifest says {expected_steps}")

    discrete = isinstance(action_space, spaces.Discrete)
    expected = {
        OFFSETS: ((frames + 1,), np.int64),
        "actions": ((steps, *(() if discrete else action_space.shape)), np.int64 if discrete else np.float32),
        "rewards": ((steps,), np.float32),
        "terminated": ((steps,), np.bool_),
        "truncated": ((steps,), np.bool_),
    }
    for key, (shape, dtype) in expected.items():
        array = arrays[key]
        if array.shape != shape or array.dtype != dtype:
            fail(key, f"expected {np.dtype(dtype)} shape {shape} (from lengths.npy), "
                      f"got {array.dtype} shape {array.shape}")
    blob, offsets = arrays.pop(BLOB), arrays.pop(OFFSETS)
    if blob.ndim != 1 or blob.dtype != np.uint8:
        fail(BLOB, f"expected a 1-D uint8 array, got {blob.dtype} shape {blob.shape}")
    if offsets[0] != 0 or offsets[-1] != len(blob) or np.any(np.diff(offsets) < 1):
        fail(OFFSETS, f"offsets must rise from 0 to the size of {BLOB}.npy ({len(blob)} bytes), "
                      f"got {offsets[0]}..{offsets[-1]}, or an empty frame")
    if listed is not None:
        lengths = arrays["lengths"] = arrays["lengths"][:listed]
        steps = int(lengths.sum())
        if expected_steps is not None and expected_steps != steps:
            fail("lengths", f"its first {listed} episodes sum to {steps} steps, the manifest says {expected_steps}")
        for key in ("actions", "rewards", "terminated", "truncated"):
            arrays[key] = arrays[key][:steps]
        offsets = offsets[: steps + listed + 1]
    for array in (blob, *arrays.values()):
        array.flags.writeable = False  # episode() hands out views: callers must not edit the dataset
    arrays["obs"] = CompressedFrames(blob, offsets, obs_shape, folder / f"{BLOB}.npy")
    return arrays
