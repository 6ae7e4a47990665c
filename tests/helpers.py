"""Tiny world models and data shared by the model/env tests (fast enough for a 2-core CPU)."""

from __future__ import annotations

import os
import pickletools
import shlex
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import wm_agent  # noqa: F401  (registers the WM-* envs)
from wm_agent.config import WorldModelConfig
from wm_agent.world_model import WorldModel

# These models are tiny: one thread is much faster than torch's default pool, whose threads spin and
# fight for the cores when the machine is busy (measured here: ~50x per training step on 2 busy cores).
torch.set_num_threads(1)

TINY = dict(channels=(4, 4, 4), hidden_size=16, head_hidden=8, context_channels=4)


def tiny_config(**overrides) -> WorldModelConfig:
    """GridWorld sizes shrunk to a few thousand weights: 8x8x4 latent, 16 LSTM units."""
    return WorldModelConfig.gridworld(**{**TINY, **overrides})


def gridworld_frames(n: int = 8, first_seed: int = 0) -> np.ndarray:
    """First frames of WM-GridWorld-v0 for reset seeds first_seed .. first_seed + n - 1, (n, 64, 64, 3) uint8."""
    env = gym.make("WM-GridWorld-v0")
    frames = np.stack([env.reset(seed=s)[0] for s in range(first_seed, first_seed + n)])
    env.close()
    return frames


def gridworld_frames_random_walk(n: int, seed: int = 0) -> np.ndarray:
    """``n`` frames of random-action GridWorld episodes (more varied than first frames alone)."""
    env = gym.make("WM-GridWorld-v0")
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    episode = 0
    while len(frames) < n:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(obs)
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + 1000 * episode)
            frames.append(obs)
    env.close()
    return np.stack(frames[:n])


def tiny_world_model(seed: int = 0, trained: bool = True, n_start: int = 8, **overrides) -> WorldModel:
    """An untrained tiny world model with GridWorld start frames, built reproducibly from ``seed``.

    ``trained=True`` marks V and M as trained (``train_state``), which the controller search requires.
    The global torch RNG is left as it was.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wm = WorldModel(tiny_config(**overrides), env_id="WM-GridWorld-v0")
    wm.set_start_frames(gridworld_frames(n_start))
    if trained:
        wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}}
    return wm


def dream_env_kwargs() -> dict:
    """gym.make kwargs for WM-Dream-v0 under the generic env tests (pixel observations, like the real envs)."""
    return {"world_model": tiny_world_model(), "observation": "pixels"}


def gridworld_sequences(n: int = 4, steps: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` random-action GridWorld sequences of ``steps`` transitions in ``WorldModel.train_rnn``'s format.

    An episode that ends early repeats its last frame and is masked out from there on.
    """
    env = gym.make("WM-GridWorld-v0")
    rng = np.random.default_rng(seed)
    obs = np.zeros((n, steps + 1, 64, 64, 3), np.uint8)
    actions = np.zeros((n, steps), np.int64)
    rewards = np.zeros((n, steps), np.float32)
    dones = np.zeros((n, steps), np.float32)
    mask = np.zeros((n, steps), bool)
    for i in range(n):
        frame, _ = env.reset(seed=seed * 1000 + i)
        obs[i, 0] = frame
        ended = False
        for t in range(steps):
            if not ended:
                actions[i, t] = rng.integers(4)
                frame, reward, terminated, truncated, _ = env.step(int(actions[i, t]))
                rewards[i, t], dones[i, t], mask[i, t] = reward, terminated, True
                ended = terminated or truncated
            obs[i, t + 1] = frame
    env.close()
    return {"obs": obs, "actions": actions, "rewards": rewards, "dones": dones, "mask": mask}


# -- hostile files ---------------------------------------------------------------------------------
class CodeRunningPayload:
    """The content of the hostile files the loaders must refuse: a pickle of it calls
    ``os.system("touch MARKER")`` when unpickled. The tests only write it (``pickle.dumps``, ``torch.save``)
    and read its opcodes (``unpickling_calls_os_system``); nothing unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def unpickling_calls_os_system(data: bytes) -> bool:
    """Whether unpickling ``data`` would call os.system, read from its opcodes without running them (a
    torch.save zip is read through its pickle member): a global naming ``system`` of ``os``/``posix``,
    then a REDUCE that calls it. This shows the payload is armed, so "the marker was not made" means
    something, without any test loading a pickle."""
    if data[:2] == b"PK":  # torch.save's zip: the objects are pickled in <name>/data.pkl
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    names = [arg for _, arg in ops if isinstance(arg, str)]
    module_system = {f"{m} system" for m in ("os", "posix", "nt")}
    names_system = any(n in module_system for n in names) or (
        "system" in names and {"os", "posix", "nt"} & set(names))
    return names_system and any(name == "REDUCE" for name, _ in ops)
