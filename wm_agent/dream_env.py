"""The dream: V + M as a Gymnasium env (and a vector env that steps N dreams in one forward pass).

Both share ``DreamBatch``, which holds N dream states; ``DreamEnv`` is a batch of one. Observations
match ``LatentObservation`` on the real env exactly (concat(z_t, h_t)), so a controller never knows
whether it is dreaming.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from wm_agent.config import is_int
from wm_agent.models.controller import choose_actions
from wm_agent.torch_utils import one_torch_thread
from wm_agent.world_model import WorldModel, checked_temperature


def as_world_model(world_model: WorldModel | str | os.PathLike, device=None, dreams: bool = True) -> WorldModel:
    """The model itself, or the checkpoint loaded, with a trained V, and a trained M if it ``dreams``
    (frames or dreams of an untrained one would be noise, given without a word).

    Args:
        world_model: a ``WorldModel``, or the path of its checkpoint.
        device: where a checkpoint path is loaded (default CPU); it applies to a path only.
        dreams: whether a trained M is required (else only a warning when M is untrained: the h part of
            the observations is then noise).

    Returns:
        The world model.

    Raises:
        ValueError: for a ``device`` other than a given ``WorldModel``'s, or an untrained V (or M if it ``dreams``).
        TypeError: for a ``world_model`` that is neither a ``WorldModel`` nor a path.
    """
    if isinstance(world_model, WorldModel):
        wm = world_model
        asked = torch.device(device) if device is not None else None
        if asked is not None and (asked.type != wm.device.type or asked.index not in (None, wm.device.index or 0)):
            raise ValueError(f"device={device!r} applies to a checkpoint path; this WorldModel is on {wm.device} "
                             "(load it with WorldModel.load(path, device=...), or pass the path)")
    elif isinstance(world_model, (str, os.PathLike)):
        wm = WorldModel.load(world_model, device or "cpu")
    else:
        raise TypeError(f"world_model must be a WorldModel or a checkpoint path, got {type(world_model).__name__}")
    where = str(world_model) if isinstance(world_model, (str, os.PathLike)) else "this world model"
    wm.require_trained("vae", where)
    if dreams:
        wm.require_trained("rnn", where)
    elif not wm.is_trained("rnn"):
        warnings.warn(f"{where} has no trained MDN-RNN: the h part of its observations is noise "
                      "(run `wm-agent train-rnn` first)", stacklevel=3)
    return wm


def _checked_threshold(done_threshold: float) -> float:
    """A done probability threshold: below 0 every dream would end after its first step."""
    if not isinstance(done_threshold, (int, float)) or not done_threshold >= 0:
        raise ValueError(f"done_threshold must be a number >= 0 (above 1: dreams never end by the done head), "
                         f"got {done_threshold!r}")
    return float(done_threshold)


def _episode_cap(wm: WorldModel, max_episode_steps: int | None) -> int:
    if max_episode_steps is not None and (not is_int(max_episode_steps) or max_episode_steps < 1):
        raise ValueError(f"max_episode_steps must be a positive int, or None for the env's own limit, got "
                         f"{max_episode_steps!r}")
    return int(max_episode_steps or wm.episode_limit())


def checked_action(space: spaces.Space, action):
    """``action`` as M takes it; a ValueError naming it when it does not fit ``space``.

    A Box action of the right shape is clipped into the box, as Gymnasium's continuous envs do with
    theirs (Pendulum, LunarLander; CarRacing's physics caps gas and steering): a policy that runs on
    the real env runs on the dream and through ``LatentObservation`` too, and M, which learnt only
    actions inside the box, sees the action the env acts on. NaN and a wrong shape are refused.

    Args:
        space: the action space.
        action: the action to check.

    Returns:
        The action, a Box one as a clipped array of the space's dtype.

    Raises:
        ValueError: naming the action when it does not fit ``space`` (NaN and a wrong shape included).
    """
    if isinstance(space, spaces.Box):
        try:
            array = np.asarray(action, dtype=space.dtype)
        except (TypeError, ValueError):
            array = None
        if array is None or array.shape != space.shape or not np.isfinite(array).all():
            raise ValueError(f"action {action!r} is not in the action space {space}")
        return np.clip(array, space.low, space.high)
    if not space.contains(action):
        raise ValueError(f"action {action!r} is not in the action space {space}")
    return action


def action_space_of(wm: WorldModel) -> spaces.Space:
    cfg = wm.config
    if cfg.discrete_actions:
        return spaces.Discrete(cfg.action_dim)
    low = np.array(cfg.action_low or [-1.0] * cfg.action_dim, np.float32)
    high = np.array(cfg.action_high or [1.0] * cfg.action_dim, np.float32)
    return spaces.Box(low, high, dtype=np.float32)


def latent_space_of(wm: WorldModel) -> spaces.Box:
    """The latent observation space of a world model: concat(z, h).

    Args:
        wm: the world model.

    Returns:
        An unbounded Box of concat(z, h): codebook values in z, LSTM outputs in (-1, 1) in h.
    """
    return spaces.Box(-np.inf, np.inf, (wm.config.z_size + wm.config.hidden_size,), np.float32)


class DreamBatch:
    """N dream states stepped together: z (N, Z) and its code indices (N, G, G), LSTM state, step
    counters. z and codes change together (``set_codes``, ``step``, ``keep``): M reads the indices."""

    def __init__(self, wm: WorldModel, n: int, temperature: float):
        self.wm, self.n, self.temperature = wm, n, checked_temperature(temperature)
        self.rnn = wm.rnn.eval()
        self.codes, self.z = wm.snap(torch.zeros(n, wm.config.z_size, device=wm.device))
        self.hidden = wm.rnn.initial_state(n, wm.device)
        self.steps = np.zeros(n, dtype=np.int64)

    @torch.no_grad()
    def reset(self, index: np.ndarray, rng: np.random.Generator, frames: np.ndarray | None = None) -> None:
        """Start the dreams at ``index`` from random banked start frames (or the given frames).

        Args:
            index: the rows of the dreams to start.
            rng: picks the banked start frames.
            frames: uint8 frames to start from, one per row of ``index``; None for banked ones.

        Raises:
            ValueError: without ``frames`` when the world model has no start frames.
        """
        if frames is not None:
            codes = self.wm.encode_indices(np.asarray(frames))
        elif len(self.wm.start_codes) == 0:
            raise ValueError("the world model has no start frames: train its VQ-VAE with `wm-agent train-vae`, "
                             "or pass a start frame in reset(options={'frame': ...})")
        else:
            codes = self.wm.start_codes[rng.integers(len(self.wm.start_codes), size=len(index))]
        idx = torch.as_tensor(index, device=self.wm.device)
        self.set_codes(codes, idx)
        self.hidden[0][:, idx] = 0
        self.hidden[1][:, idx] = 0
        self.steps[index] = 0

    def set_codes(self, codes: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> None:
        """Put the dreams at ``rows`` on the code grids ``codes``.

        Args:
            codes: code grids (len(rows), G, G).
            rows: the dreams to set (default: all).
        """
        codes = codes.to(self.wm.device)
        self.codes[rows] = codes
        self.z[rows] = self.wm.vae.indices_to_latent(codes)

    def observation(self) -> torch.Tensor:
        return torch.cat([self.z, self.hidden[0][0]], -1)

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with only the dreams at ``rows``, e.g. the unfinished ones.

        Args:
            rows: indices into the current batch.
        """
        self.z, self.codes = self.z[rows], self.codes[rows]
        self.hidden = (self.hidden[0][:, rows], self.hidden[1][:, rows])
        self.steps = self.steps[rows.cpu().numpy()]
        self.n = len(self.z)

    @torch.no_grad()
    def step(self, actions: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance every dream one step.

        Args:
            actions: one action per dream.
            generator: the random stream of the dream's draws.

        Returns:
            (reward (N,), done probability (N,)).
        """
        # Snapping back onto the codebook keeps the dream on latents V can decode.
        self.z, self.codes, reward, done_p, self.hidden = self.rnn.dream_step(
            self.z, self.codes, actions, self.hidden, self.temperature, generator, self.wm.snap)
        self.steps += 1
        return reward, done_p

    @torch.no_grad()
    def frames(self) -> np.ndarray:
        return self.wm.decode(self.z)


@torch.no_grad()
def dream_fitness(wm: WorldModel, params: np.ndarray, rollouts: int, temperature: float, max_steps: int,
                  greedy: bool, rng: np.random.Generator) -> np.ndarray:
    """Mean dream return of each row of ``params`` (P, n) over ``rollouts`` episodes, all batched.

    Every candidate meets the same ``rollouts`` start frames and, in its r-th rollout, draws its actions
    from the same uniform numbers as every other candidate's r-th rollout (common random numbers): two
    candidates that act alike then score alike, so differences in fitness come from the controllers,
    not from luckier starts or luckier action samples, and CMA-ES ranks them with far less noise. That
    holds exactly at temperature 0; above it the dream's own next-frame draws come from one stream for
    the whole batch, so two like candidates meet different dreams and score close, not equal.

    Args:
        wm: the world model that dreams.
        params: (P, n) controller parameters, one candidate a row.
        rollouts: episodes per candidate.
        temperature: the dream temperature.
        max_steps: steps per episode, at most.
        greedy: whether the controllers act greedily instead of sampling.
        rng: picks the start frames and the uniform numbers of the action draws.

    Returns:
        The mean dream return of each candidate, (P,).
    """
    p = len(params)
    n = p * rollouts
    batch = DreamBatch(wm, n, temperature)
    starts = rng.integers(len(wm.start_codes), size=rollouts)
    codes = wm.start_codes[np.tile(starts, p)]
    batch.set_codes(codes)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    theta = torch.as_tensor(params, dtype=torch.float32, device=wm.device).repeat_interleave(rollouts, 0)
    controller = wm.controller
    returns = torch.zeros(n, device=wm.device)
    # Expected return under the model's own termination probabilities: each reward counts with the
    # probability that the episode is still running. A hard "done if p > 0.5" lets a controller farm
    # a state the model gives a goal-sized reward but only p = 0.4 of ending, step after step.
    survival = torch.ones(n, device=wm.device)
    rows = torch.arange(n, device=wm.device)  # which episodes the batch still holds
    uniforms = torch.rand(max_steps, rollouts, generator=gen).to(wm.device)  # per (step, rollout)
    for t in range(max_steps):
        out = controller.batched(theta, controller.normalize(batch.observation()))
        actions = choose_actions(out, wm.config.discrete_actions, greedy, gen, uniforms[t, rows % rollouts])
        reward, done_p = batch.step(actions, gen)
        returns[rows] += reward * survival
        survival = survival * (1.0 - done_p)
        # Episodes that have ended (all but surely) leave the batch: a good controller's episodes are short,
        # so later generations step far fewer dreams.
        running = survival >= 1e-3
        if not running.all():
            if not running.any():
                break
            keep = running.nonzero().squeeze(1)
            batch.keep(keep)
            rows, survival, theta = rows[keep], survival[keep], theta[keep]
    return returns.view(p, rollouts).mean(1).cpu().numpy()


class DreamEnv(gym.Env):
    """
    ## Description
    A world model's dream as an environment: ``reset`` starts from a real first frame (a banked one, or
    ``options={"frame": uint8 (64, 64, 3)}``); ``step`` feeds (z_t, a_t) to the MDN-RNN, samples z_{t+1}
    from its mixture at ``temperature`` (0 = most likely component's mean), snaps it to the codebook,
    and takes reward and termination from the model's heads. The real env is never touched.

    ## Action Space
    The real env's: ``Discrete(n)`` or a ``Box`` (from the world model's config); a Box action outside
    the box is clipped into it, as Gymnasium's continuous envs do.

    ## Observation Space
    ``observation="latent"`` (default): ``Box(-inf, inf, (Z + H,), float32)`` = concat(z_t, h_t), the
    same as ``LatentObservation`` on the real env. ``observation="pixels"``: the decoded 64x64x3 frame.

    ## Rewards
    The model's reward head for the transition.

    ## Episode End
    Terminated when the done head's probability exceeds ``done_threshold``; truncated after
    ``max_episode_steps`` (default: the real env's limit). ``gym.make("WM-Dream-v0", ...,
    max_episode_steps=N)`` keeps that argument for a ``TimeLimit`` wrapper (Gymnasium passes it on to
    neither the env nor its spec), which can end episodes sooner but not later than the dream's own
    cap: ``DreamEnv(wm, max_episode_steps=N)`` and ``gym.make_vec("WM-Dream-v0", ...,
    max_episode_steps=N)`` (the batched dream) set that cap.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 8}

    def __init__(self, world_model: WorldModel | str, temperature: float = 1.0, observation: str = "latent",
                 max_episode_steps: int | None = None, done_threshold: float = 0.5, render_mode: str | None = None,
                 device: str | None = None):
        wm = as_world_model(world_model, device)
        if observation not in ("latent", "pixels"):
            raise ValueError(f"observation must be 'latent' or 'pixels', got {observation!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.world_model, self.render_mode, self.obs_mode = wm, render_mode, observation
        self.max_episode_steps = _episode_cap(wm, max_episode_steps)
        self.done_threshold = _checked_threshold(done_threshold)
        self.action_space = action_space_of(wm)
        s = wm.config.image_size
        self.observation_space = (latent_space_of(wm) if observation == "latent"
                                  else spaces.Box(0, 255, (s, s, 3), np.uint8))
        self._batch = DreamBatch(wm, 1, temperature)
        self._gen = torch.Generator()
        self._window = self._clock = None
        self._started = False  # a step before the first reset would dream from an all-zero latent

    @property
    def temperature(self) -> float:
        return self._batch.temperature

    def _obs(self):
        if self.obs_mode == "pixels":
            return self._batch.frames()[0]
        return self._batch.observation()[0].cpu().numpy().astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Torch sampling draws from a generator seeded by the env's own np_random: seeded and reproducible.
        self._gen.manual_seed(int(self.np_random.integers(2**62)))
        unknown = set(options or {}) - {"frame"}
        if unknown:
            raise ValueError(f"DreamEnv.reset takes options {{'frame': ...}} only, got {sorted(unknown)}")
        frame = (options or {}).get("frame")
        if frame is not None:
            frame = np.asarray(frame)
            s = self.world_model.config.image_size
            if frame.shape != (s, s, 3) or frame.dtype != np.uint8:
                raise ValueError(f"options['frame'] must be uint8 of shape ({s}, {s}, 3), "
                                 f"got {frame.dtype} {frame.shape}")
            frame = frame[None]
        with one_torch_thread():
            self._batch.reset(np.array([0]), self.np_random, frame)
        self._started = True
        if self.render_mode == "human":
            self.render()
        return self._obs(), {}

    def step(self, action):
        if not self._started:
            raise gym.error.ResetNeeded("Cannot call DreamEnv.step() before reset()")
        action = checked_action(self.action_space, action)
        a = torch.as_tensor(np.asarray(action)[None], device=self.world_model.device)
        with one_torch_thread():
            reward, done_p = self._batch.step(a, self._gen)
        terminated = bool(done_p[0] > self.done_threshold)
        truncated = bool(self._batch.steps[0] >= self.max_episode_steps)
        if self.render_mode == "human":
            self.render()
        return self._obs(), float(reward[0]), terminated, truncated, {"done_probability": float(done_p[0])}

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode")
            return None
        frame = self._batch.frames()[0]
        if self.render_mode == "rgb_array":
            return frame
        from envs.rendering import show_frame

        self._window, self._clock = show_frame(frame, self._window, self._clock, self.metadata["render_fps"],
                                               caption="WM dream")
        return None

    def close(self):
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None


class DreamVectorEnv(VectorEnv):
    """``num_envs`` dreams stepped as ONE batched forward pass of the MDN-RNN (CPU or GPU); what
    ``gym.make_vec("WM-Dream-v0", num_envs=N, world_model=wm)`` returns.

    Autoreset follows Gymnasium's default NEXT_STEP mode: the step after an episode ends returns the
    first observation of a new one (reward 0, not done). Where it differs from N ``DreamEnv``s in a
    ``SyncVectorEnv`` (``vectorization_mode="sync"``, which has all of those): the dreams share one
    random stream, so ``reset(seed=s)`` takes one int and is reproducible as a whole, but dream i is
    not ``DreamEnv``'s ``reset(seed=s + i)``; no autoreset mode but NEXT_STEP; latent observations only.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 8, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, world_model: WorldModel | str, temperature: float = 1.0,
                 max_episode_steps: int | None = None, done_threshold: float = 0.5, render_mode: str | None = None,
                 device: str | None = None, observation: str = "latent"):
        if observation != "latent":
            raise ValueError("DreamVectorEnv serves latent observations only; use DreamEnv for pixels")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} (a batch of dreams is "
                             f"not shown in a window; DreamEnv is), got {render_mode!r}")
        wm = as_world_model(world_model, device)
        self.world_model, self.num_envs, self.render_mode = wm, num_envs, render_mode
        self.max_episode_steps = _episode_cap(wm, max_episode_steps)
        self.done_threshold = _checked_threshold(done_threshold)
        self.single_action_space = action_space_of(wm)
        self.single_observation_space = latent_space_of(wm)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self._batch = DreamBatch(wm, num_envs, temperature)
        self._gen = torch.Generator()
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start every dream again, or with ``options={"reset_mask": bool array (num_envs,)}`` only those
        marked (as Gymnasium's vector envs do; the others go on, and their observations are returned as
        they are).

        Args:
            seed: one int; all dreams share one generator, so it seeds them all, also together with a
                mask (the dreams that go on then draw from the new stream too); a partial reset without a
                seed leaves the stream as it was.
            options: ``{"reset_mask": bool array (num_envs,)}`` or None.

        Returns:
            The observations and the info dict, as Gymnasium's ``VectorEnv.reset``.

        Raises:
            ValueError: for a seed that is not one int, or other options.
        """
        if seed is not None and not is_int(seed):  # the package's one whole-number check (no bools)
            raise ValueError(f"DreamVectorEnv.reset takes one int seed for all its dreams, got {seed!r}")
        unknown = set(options or {}) - {"reset_mask"}
        if unknown:
            raise ValueError(f"DreamVectorEnv.reset takes options {{'reset_mask': ...}} only, got {sorted(unknown)}")
        mask = (options or {}).get("reset_mask")
        if mask is None:
            index = np.arange(self.num_envs)
        else:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} "
                                 f"{mask.shape}")
            if not mask.any():
                raise ValueError("reset_mask must mark at least one dream (as Gymnasium's vector envs require)")
            if not self._started and not mask.all():
                raise ValueError("the first reset starts every dream: leave reset_mask out (or all True)")
            index = np.nonzero(mask)[0]
        super().reset(seed=None if seed is None else int(seed))
        self._started = True
        if mask is None or seed is not None:
            # Not on a partial reset without a seed: the dreams that go on keep the random future they had.
            self._gen.manual_seed(int(self.np_random.integers(2**62)))
        self._batch.reset(index, self.np_random)
        self._needs_reset[index] = False
        return self._batch.observation().cpu().numpy(), {}

    def step(self, actions):
        if not self._started:
            raise gym.error.ResetNeeded("Cannot call DreamVectorEnv.step() before reset()")
        actions = checked_action(self.action_space, np.asarray(actions))
        a = torch.as_tensor(actions, device=self.world_model.device)
        reward, done_p = self._batch.step(a, self._gen)
        rewards = reward.cpu().numpy().astype(np.float64)
        terminated = (done_p > self.done_threshold).cpu().numpy()
        truncated = self._batch.steps >= self.max_episode_steps
        restarted = np.nonzero(self._needs_reset)[0]
        if len(restarted):
            self._batch.reset(restarted, self.np_random)
            rewards[restarted] = 0.0
            terminated[restarted] = truncated[restarted] = False
        self._needs_reset = terminated | truncated
        done_p = done_p.cpu().numpy().astype(np.float64)
        done_p[restarted] = 0.0
        # Gymnasium's vector info layout: a value per env, and a mask of the envs that have one.
        info = {"done_probability": done_p, "_done_probability": np.ones(self.num_envs, dtype=bool)}
        return self._batch.observation().cpu().numpy(), rewards, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One rgb frame per dream, as a tuple (``VectorEnv.render``'s contract)."""
        return tuple(self._batch.frames()) if self.render_mode == "rgb_array" else None
