"""The ``controller`` data policy: a trained world model's controller C drives the real env, so that V and M
can be trained again on the states a decent driver reaches (the paper's iterative training).

C sees what it sees in ``wm-agent evaluate`` (``LatentObservation`` and ``rollouts.run_episode``): V's
code of the current frame next to M's hidden state, M advanced with each action as the env acts on it,
and a discrete action sampled from the episode's own stream of uniform numbers (``EpisodeUniforms``
seeded by the reset seed), or its argmax with ``greedy``. Exploration noise goes on top, drawn from the
shard's policy Generator: a Box action gets Gaussian noise of std ``noise * (high - low) / 2`` and is
clipped into the bounds; a discrete action is replaced by a uniformly random one with probability
``noise``. With noise 0 the actions are the ones ``evaluate`` would take on the same reset seed.

Each worker process loads the checkpoint once, after checking that its bytes are those the collection
started with (sha256): a checkpoint trained further in place during a collection would otherwise put two
drivers into one folder. Workers run torch on one thread, and this process does too around each step, so
the shards are the same bytes whatever ``--workers``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from wm_agent.config import is_int
from wm_agent.data.episodes import pixel_env
from wm_agent.latent_env import advance_hidden, check_env_fits, latent_obs
from wm_agent.models.controller import env_action
from wm_agent.sampling import EpisodeUniforms
from wm_agent.torch_utils import one_torch_thread
from wm_agent.world_model import CONTROLLER_STAGES, WorldModel

__all__ = ["DEFAULT_NOISE", "ControllerPolicy", "check_driver_fits", "file_sha256", "forget_drivers",
           "prepare_driver"]

DEFAULT_NOISE = 0.1
WHERE = "world_model (--world-model)"

# This process's loaded checkpoints, by (absolute path, sha256): each worker loads its driver once.
_DRIVERS: dict[tuple[str, str], WorldModel] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_driver(world_model: str | os.PathLike | None, env_id: str | None, env_kwargs: dict, pixels: bool,
                   noise: float | None, greedy: bool) -> tuple[str, dict, dict]:
    """Check the checkpoint that is to drive a collection, and the env it is to drive, in the main process.

    Args:
        world_model: the checkpoint; it needs a trained V, M and controller.
        env_id: the env to collect from; None: the checkpoint's, with its ``env_kwargs``.
        env_kwargs: ``gym.make`` keyword arguments (JSON-normalised); with ``env_id`` None they must be
            empty or the checkpoint's.
        pixels: ``--pixels``: ``env_id``'s render (needs ``env_id``).
        noise: the exploration noise in [0, 1] (None: ``DEFAULT_NOISE``).
        greedy: argmax discrete actions instead of sampling them.

    Returns:
        The env id and keyword arguments to collect from, and the policy's options (``world_model``: the
        checkpoint's absolute path, ``sha256``, ``noise``, ``greedy``), which the shard tasks carry.

    Raises:
        ValueError: one line naming the flag, for a missing or untrained checkpoint, a bad noise, or an env
            other than the checkpoint's.
    """
    if world_model is None:
        raise ValueError(f"policy controller (--policy controller) needs {WHERE}: the checkpoint whose controller "
                         "drives")
    if noise is None:
        noise = DEFAULT_NOISE
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(noise) <= 1.0:
        raise ValueError(f"policy_noise (--policy-noise) must be a number in [0, 1], got {noise!r}")
    path = Path(world_model).absolute()
    if not path.is_file():
        raise ValueError(f"{WHERE} {world_model} is not a file: pass a world-model checkpoint (.pt)")
    digest = file_sha256(path)
    wm = WorldModel.load(path)
    where = f"{WHERE} {world_model}"
    wm.require_trained("vae", where)
    wm.require_trained("rnn", where)
    if not any(wm.is_trained(stage) for stage in CONTROLLER_STAGES):
        raise ValueError(f"{where} has no trained controller: run `wm-agent train-controller` on it first")
    own_kwargs = json.loads(json.dumps(wm.env_kwargs))
    if env_id is None:
        if not wm.env_id:
            raise ValueError(f"{where} does not name the env it was trained on: pass env (--env)")
        if pixels:
            raise ValueError(f"pixels (--pixels) needs env (--env); without it {where}'s own env {wm.env_id} is "
                             "collected as it was trained")
        if env_kwargs and env_kwargs != own_kwargs:
            raise ValueError(f"env_kwargs (--env-kwargs) {_said(env_kwargs)} differ from the {_said(own_kwargs)} "
                             f"{where} was trained with; leave them out to take the checkpoint's")
        env_id, env_kwargs = wm.env_id, own_kwargs
    else:
        if pixels:
            env_id, env_kwargs = pixel_env(env_id, env_kwargs)
        if wm.env_id and (not wm._is_own(env_id) or env_kwargs != own_kwargs):
            raise ValueError(f"{where} was trained on {wm.env_id} with --env-kwargs {_said(own_kwargs)}, not {env_id} "
                             f"with {_said(env_kwargs)}; leave out env (--env) and env_kwargs (--env-kwargs) to "
                             "collect from the checkpoint's own env")
    options = {"world_model": str(path), "sha256": digest, "noise": float(noise), "greedy": bool(greedy)}
    _DRIVERS[(str(path), digest)] = wm  # this process drives with it when it collects in-process
    return env_id, env_kwargs, options


def check_driver_fits(env: gym.Env, options: dict) -> None:
    """Refuse an env whose frames or actions are not those the driving checkpoint was trained on.

    Args:
        env: the env to collect from.
        options: the policy's options (``prepare_driver``).

    Raises:
        ValueError: one line naming the flag.
    """
    try:
        check_env_fits(env, _driver(options))
    except ValueError as exc:
        raise ValueError(f"{WHERE} {options['world_model']}: {exc}") from None


def forget_drivers() -> None:
    """Drop the checkpoints this process loaded (the collection is over)."""
    _DRIVERS.clear()


def _said(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True)


def _driver(options: dict) -> WorldModel:
    """The checkpoint of ``options``, loaded once per process and checked against its sha256."""
    key = (options["world_model"], options["sha256"])
    if key not in _DRIVERS:
        path = options["world_model"]
        try:
            digest = file_sha256(path)
        except OSError as exc:
            raise ValueError(f"cannot read the driving checkpoint {path}: {exc}") from None
        if digest != options["sha256"]:
            raise ValueError(f"{path} changed since this collection started (its sha256 differs): collect with the "
                             "checkpoint the folder was started with, or into another folder")
        if multiprocessing.parent_process() is not None:  # a worker: one thread, as in this process's steps
            torch.set_num_threads(1)
        _DRIVERS[key] = WorldModel.load(path)
    return _DRIVERS[key]


class ControllerPolicy:
    """A world model's controller as a data policy (see the module docstring): ``start_episode(seed)``,
    then ``policy(frame)`` -> the action, with M's hidden state carried from one call to the next.

    Args:
        wm: the world model whose V, M and C drive.
        space: the env's action space (the one ``wm`` was trained on).
        rng: the exploration noise's Generator.
        noise: the exploration noise in [0, 1].
        greedy: argmax discrete actions instead of sampling them.
    """

    observes = True

    def __init__(self, wm: WorldModel, space: gym.Space, rng: np.random.Generator, noise: float = 0.0,
                 greedy: bool = False):
        self.wm, self.space, self.rng = wm, space, rng
        self.noise, self.greedy = float(noise), bool(greedy)
        self._discrete = isinstance(space, spaces.Discrete)
        if not self._discrete:
            self._scale = self.noise * (space.high - space.low) / 2.0
        self._hidden = self._uniforms = None
        self._t = 0

    @classmethod
    def from_options(cls, options: dict, space: gym.Space, rng: np.random.Generator) -> "ControllerPolicy":
        """The policy of a shard task's options (``prepare_driver``), its checkpoint loaded once per process."""
        return cls(_driver(options), space, rng, options["noise"], options["greedy"])

    def start_episode(self, seed: int | None = None) -> None:
        if not is_int(seed):
            raise ValueError("the controller policy samples each episode's actions from a stream seeded by its "
                             f"reset seed; start_episode needs that seed, got {seed!r}")
        self._hidden = self.wm.rnn.initial_state(1, self.wm.device)
        self._uniforms = EpisodeUniforms([int(seed)])
        self._t = 0

    @torch.no_grad()
    def __call__(self, frame: np.ndarray):
        wm = self.wm
        with one_torch_thread():
            z = wm.encode(np.asarray(frame)[None])
            out = wm.controller.from_obs(torch.as_tensor(latent_obs(z, self._hidden))[None])
            action = env_action(out, wm.config.discrete_actions, self.greedy,
                                uniforms=self._uniforms.at(self._t, [0]))
            action = self._explore(action)
            self._hidden = advance_hidden(wm, self.space, z, action, self._hidden)
        self._t += 1
        return action

    def _explore(self, action):
        space = self.space
        if self._discrete:
            if self.noise > 0 and self.rng.random() < self.noise:
                return int(space.start) + int(self.rng.integers(int(space.n)))
            return int(action)
        if self.noise > 0:
            action = action + self._scale * self.rng.standard_normal(space.shape)
        return np.clip(action, space.low, space.high).astype(space.dtype)
