"""The controller at work, recorded: episodes in the real env, in the dream, and both side by side, as frames
(with the video frames that annotate them) and the pace (fps) to play them at.

- ``record_real_episode`` / ``record_dream_episode`` / ``record_side_by_side``: one episode each.
- ``annotate`` / ``side_by_side_frames``: an episode's frames composed into video frames one at a time.
- ``render_fps`` / ``env_fps``: the frames per second an env (or a world model's env) plays at.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from wm_agent.render.drawing import frame_mse
from wm_agent.render.video import compose_frame

__all__ = ["DEFAULT_FPS", "annotate", "env_fps", "record_dream_episode", "record_real_episode",
           "record_side_by_side", "render_fps", "side_by_side_frames"]


def _env_action(out: torch.Tensor, wm, greedy: bool, gen: torch.Generator):
    from wm_agent.models.controller import env_action

    return env_action(out, wm.config.discrete_actions, greedy, gen)


@torch.no_grad()
def record_real_episode(wm, env_id: str | None = None, seed: int = 0, greedy: bool = False,
                        max_steps: int = 0) -> dict[str, Any]:
    """The controller plays one episode of the REAL env (reset with ``seed``): the same episode that
    ``wm-agent evaluate`` scores for that seed.

    Returns ``frames`` uint8 (T+1, H, W, 3), ``rewards`` (T,), ``actions`` (T[, A]), ``return``, ``steps``,
    ``success``. ``max_steps`` = 0: until the env ends the episode.
    """
    from wm_agent.rollouts import make_latent_env, run_episode

    env = make_latent_env(wm.real_env_id(env_id), wm)
    try:
        return run_episode(env, wm, seed, greedy, max_steps, record=True)
    finally:
        env.close()


@torch.no_grad()
def record_dream_episode(wm, seed: int = 0, temperature: float = 1.0, greedy: bool = False,
                         max_steps: int | None = None, start_frame: np.ndarray | None = None) -> dict[str, Any]:
    """The controller plays one episode INSIDE the dream (``WM-Dream-v0``, decoded frames).

    Starts from a banked start frame (chosen by ``seed``) or ``start_frame``. Returns ``frames`` uint8
    (T+1, H, W, 3), ``rewards`` (T,), ``actions``, ``done_probabilities`` (T,), ``return``, ``steps``.
    """
    import gymnasium as gym

    env = gym.make("WM-Dream-v0", world_model=wm, temperature=temperature, render_mode="rgb_array",
                   max_episode_steps=max_steps or None)
    gen = torch.Generator().manual_seed(seed)
    try:
        options = {"frame": np.asarray(start_frame, np.uint8)} if start_frame is not None else None
        obs, _ = env.reset(seed=seed, options=options)
        frames, rewards, actions, dones = [env.render()], [], [], []
        while True:
            action = _env_action(wm.controller.from_obs(torch.as_tensor(obs)[None]), wm, greedy, gen)
            obs, reward, terminated, truncated, info = env.step(action)
            frames.append(env.render())
            rewards.append(float(reward))
            actions.append(action)
            dones.append(float(info.get("done_probability", float(terminated))))
            if terminated or truncated:
                break
    finally:
        env.close()
    rewards = np.array(rewards, np.float32)
    return {"frames": np.stack(frames), "rewards": rewards, "actions": np.array(actions),
            "done_probabilities": np.array(dones, np.float32), "return": float(rewards.sum()),
            "steps": len(rewards)}


def record_side_by_side(wm, env_id: str | None = None, seed: int = 0, greedy: bool = False,
                        temperature: float = 0.0, max_steps: int = 0, scale: int = 4,
                        compose: bool = True) -> dict[str, Any]:
    """The controller acts in the REAL env; the dream replays the SAME actions from the same first frame.

    Returns ``frames`` (composed side-by-side video frames, T+1; only with ``compose``), ``real`` and
    ``dream`` (T+1, H, W, 3), ``rewards`` (real, T), ``dream_rewards`` (T), ``mse`` (per frame, on [0, 1]
    pixels), ``actions``, ``return``, ``steps``, ``success``.
    """
    real = record_real_episode(wm, env_id, seed, greedy, max_steps)
    dream = wm.dream(real["frames"][0], real["actions"], temperature=temperature, seed=seed)
    ep = {"real": real["frames"], "dream": dream["frames"], "rewards": real["rewards"],
          "dream_rewards": dream["rewards"], "actions": real["actions"],
          "mse": frame_mse(real["frames"], dream["frames"]), "return": real["return"], "steps": real["steps"],
          "success": real["success"]}
    if compose:
        ep["frames"] = np.stack(list(side_by_side_frames(ep, scale)))
    return ep


def side_by_side_frames(ep: dict, scale: int) -> Iterator[np.ndarray]:
    """The video frames of a ``record_side_by_side`` episode, composed one at a time.

    Args:
        ep: the episode (its ``real``, ``dream``, ``rewards`` and ``dream_rewards``).
        scale: upscaling of the frames.

    Returns:
        An iterator of ``compose_frame`` frames: real beside dream, step, reward, return and the dream's reward.
    """
    total = 0.0
    for t in range(len(ep["real"])):
        r = float(ep["rewards"][t - 1]) if t else None
        total += r or 0.0
        yield compose_frame(ep["real"][t], ep["dream"][t], step=t, reward=r, scale=scale, total=total,
                            dream_reward=float(ep["dream_rewards"][t - 1]) if t else None)


def annotate(frames: np.ndarray, rewards: np.ndarray, scale: int) -> Iterator[np.ndarray]:
    """An episode's frames as video frames under a band of step, reward and return, composed one at a time.

    Args:
        frames: the episode's frames (T+1, H, W, 3), the first one the reset's.
        rewards: its rewards (T,): frame t follows reward t-1.
        scale: upscaling of the frames.

    Returns:
        An iterator of ``compose_frame`` frames.
    """
    total = 0.0
    for t, frame in enumerate(frames):
        r = float(rewards[t - 1]) if t else None
        total += r or 0.0
        yield compose_frame(frame, step=t, reward=r, total=total, scale=scale)


DEFAULT_FPS = 8


def render_fps(env) -> float:
    """An env's ``metadata["render_fps"]``, as Gymnasium's RecordVideo takes it; ``DEFAULT_FPS`` if it says none.
    It may be fractional: ``WM-CarRacing-v0`` with ``action_repeat=4`` plays its observed frames at 12.5."""
    fps = env.metadata.get("render_fps")
    return fps if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 else DEFAULT_FPS


def env_fps(wm, env_id: str | None = None) -> float:
    """``render_fps`` of ``env_id`` (default: the env ``wm`` was trained on, whose pace its dreams share);
    ``DEFAULT_FPS`` when the env cannot be made here."""
    try:
        env = wm.make_env(wm.real_env_id(env_id or None))
    except Exception:  # the video does not need the env: a missing one only loses its pace  # noqa: BLE001
        return DEFAULT_FPS
    try:
        return render_fps(env)
    finally:
        env.close()
