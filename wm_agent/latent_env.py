"""The controller's view of a REAL env: observation = concat(z_t, h_t), exactly as in the dream."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from wm_agent.dream_env import (
    action_space_of,
    as_world_model,
    checked_action,
    latent_space_of,
)
from wm_agent.torch_utils import one_torch_thread
from wm_agent.world_model import WorldModel


def check_env_fits(env: gym.Env, wm: WorldModel) -> None:
    """Refuse an env whose frames or actions are not the ones the world model was trained on.

    Args:
        env: the real env.
        wm: the world model.

    Raises:
        ValueError: when its frames are not uint8 ``image_size x image_size x 3``, or its action space differs.
    """
    s = wm.config.image_size
    space = env.observation_space
    if not (isinstance(space, gym.spaces.Box) and space.shape == (s, s, 3) and space.dtype == np.uint8):
        raise ValueError(f"the world model needs {s}x{s}x3 uint8 observations, got {space}; "
                         f"wrap the env in envs.ImageObservation(env, size={s}) first")
    expected = action_space_of(wm)
    if not _same_kind(env.action_space, expected):
        raise ValueError(f"the env's action space {env.action_space} differs from the world model's {expected}"
                         f"{f' (trained on {wm.env_id})' if wm.env_id else ''}")


def check_data_fits(ds, wm: WorldModel, where: str) -> None:
    """Refuse training or evaluating ``wm`` on an ``EpisodeDataset`` whose frames or actions are not the
    ones it was built for, e.g. CarRacing data with a GridWorld model.

    Args:
        ds: the ``EpisodeDataset``, or an ``EpisodeUnion`` of several (each folder is checked).
        wm: the world model.
        where: what the error message calls the model.

    Raises:
        ValueError: for data of other frames, actions, env or ``--env-kwargs``.
    """
    for part in getattr(ds, "parts", None) or [ds]:
        _check_folder_fits(part, wm, where)


def _check_folder_fits(ds, wm: WorldModel, where: str) -> None:
    s = wm.config.image_size
    expected = action_space_of(wm)
    if tuple(ds.observation_shape) != (s, s, 3) or not _same_kind(ds.action_space, expected):
        raise ValueError(
            f"{ds.root} holds {ds.env_id} data ({tuple(ds.observation_shape)} frames, actions {ds.action_space}), "
            f"but {where} was built for {wm.env_id or 'another env'} ({(s, s, 3)} frames, actions {expected}); "
            "use data collected from that env")
    # Same shapes do not make the same env: another env's (or another grid size's) dynamics would be
    # learnt or scored under this model's name, and evaluated later in the env it names.
    if wm.env_id and ds.env_id and not wm._is_own(ds.env_id):
        raise ValueError(f"{ds.root} holds {ds.env_id} data, but {where} was built for {wm.env_id}; "
                         "use data collected from that env")
    data_kwargs = ds.env_kwargs
    if wm.env_id and ds.env_id and data_kwargs != wm.env_kwargs:
        raise ValueError(f"{ds.root} was collected with --env-kwargs {json.dumps(data_kwargs, sort_keys=True)}, but "
                         f"{where} was built for {wm.env_id} with --env-kwargs "
                         f"{json.dumps(wm.env_kwargs, sort_keys=True)}; use data collected with the same ones")


def _same_kind(space: gym.Space, expected: gym.Space) -> bool:
    """The same actions mean the same thing: a Discrete of the same n from 0, or a Box of the same shape
    and bounds (another env's [-1, 1] would be sent the model's [-2, 2] actions)."""
    if type(space) is not type(expected) or space.shape != expected.shape:
        return False
    if isinstance(expected, gym.spaces.Discrete):
        return space.n == expected.n and int(space.start) == int(expected.start)
    return bool(np.allclose(space.low, expected.low) and np.allclose(space.high, expected.high))


def latent_obs(z: torch.Tensor, hidden) -> np.ndarray:
    """The controller's input as evaluation hands it over: concat(z, h) of one env, float32 on the host."""
    return torch.cat([z, hidden[0][0]], -1)[0].cpu().numpy().astype(np.float32)


@torch.no_grad()
def advance_hidden(wm: WorldModel, space: gym.Space, z: torch.Tensor, action, hidden):
    """M's state after ``action`` from the frame coded ``z``: M gets the action as the env acts on it
    (clipped into a Box)."""
    a = torch.as_tensor(np.asarray(checked_action(space, action))[None, None], device=wm.device)
    return wm.rnn.eval().advance(z[:, None], a, hidden)


class LatentObservation(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Encode each real frame with V and step M's hidden state with each action.

    The wrapped env must give ``image_size x image_size x 3`` uint8 frames (wrap others in
    ``envs.ImageObservation`` first) and have the action space the world model was trained on.
    """

    def __init__(self, env: gym.Env, world_model: WorldModel | str):
        gym.utils.RecordConstructorArgs.__init__(self, world_model=world_model)
        gym.Wrapper.__init__(self, env)
        wm = as_world_model(world_model, dreams=False)  # M gives h; without a trained one, a warning
        check_env_fits(env, wm)
        self.world_model = wm
        self.observation_space = latent_space_of(wm)
        self._z = self._hidden = None

    def _obs(self) -> np.ndarray:
        return latent_obs(self._z, self._hidden)

    def reset(self, *, seed=None, options=None):
        frame, info = self.env.reset(seed=seed, options=options)
        with one_torch_thread():
            self._z = self.world_model.encode(frame[None])
        self._hidden = self.world_model.rnn.initial_state(1, self.world_model.device)
        info["frame"] = frame
        return self._obs(), info

    @torch.no_grad()
    def step(self, action):
        if self._z is None:
            raise gym.error.ResetNeeded("Cannot call LatentObservation.step() before reset()")
        # M gets the action as the env acts on it (clipped into a Box); the env gets it unclipped, as an
        # array of the space's dtype (CarRacing calls .astype on it, so a list would fail there).
        with one_torch_thread():  # once per step, around both torch calls
            hidden = advance_hidden(self.world_model, self.action_space, self._z, action, self._hidden)
            if isinstance(self.action_space, spaces.Box):
                action = np.asarray(action, self.action_space.dtype)
            frame, reward, terminated, truncated, info = self.env.step(action)
            # Only now: an env that raises leaves M's state where the env's is.
            self._hidden, self._z = hidden, self.world_model.encode(frame[None])
        info["frame"] = frame
        return self._obs(), reward, terminated, truncated, info
