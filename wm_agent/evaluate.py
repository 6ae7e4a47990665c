"""Evaluate a world model's controller in the REAL env, and measure how faithful its dreams are."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wm_agent.config import doc
from wm_agent.controller import choose_actions
from wm_agent.latent_env import LatentObservation
from wm_agent.world_model import WorldModel


@dataclass
class EvaluateConfig:
    """wm-agent evaluate: run the checkpoint's controller in the real env and print one JSON object."""

    checkpoint: str = doc("world-model checkpoint with a trained controller")
    env: str = doc("real env id", "WM-GridWorld-v0")
    episodes: int = doc("episodes to run", 100)
    seed: int = doc("reset seed of the first episode (episode i uses seed + i)", 0)
    greedy: bool = doc("argmax actions instead of sampling from the controller's softmax", False)
    progress: bool = doc("show a progress bar", True)


def make_latent_env(env_id: str, wm: WorldModel, **kwargs) -> LatentObservation:
    return LatentObservation(gym.make(env_id, **kwargs), wm)


@torch.no_grad()
def run_episode(env: LatentObservation, wm: WorldModel, seed: int, greedy: bool, gen: torch.Generator,
                max_steps: int = 0, record: bool = False) -> dict:
    """One episode of the controller in a LatentObservation env."""
    obs, info = env.reset(seed=seed)
    total, steps, frames = 0.0, 0, [info["frame"]] if record else None
    oracle = info.get("oracle_return")
    while True:
        out = wm.controller.from_obs(torch.as_tensor(obs)[None])
        action = choose_actions(out, wm.config.discrete_actions, greedy, gen)[0]
        action = int(action) if wm.config.discrete_actions else action.cpu().numpy()
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        if record:
            frames.append(info["frame"])
        if terminated or truncated or (max_steps and steps >= max_steps):
            break
    result = {"return": total, "steps": steps, "success": bool(info.get("success", terminated)),
              "oracle_return": oracle}
    if record:
        result["frames"] = np.stack(frames)
    return result


def evaluate(cfg: EvaluateConfig, wm: WorldModel | None = None) -> dict:
    wm = wm or WorldModel.load(cfg.checkpoint)
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {cfg.episodes}")
    env = make_latent_env(cfg.env, wm)
    gen = torch.Generator().manual_seed(cfg.seed)
    results = [run_episode(env, wm, cfg.seed + i, cfg.greedy, gen)
               for i in tqdm(range(cfg.episodes), desc="evaluate", unit="ep", disable=not cfg.progress)]
    env.close()
    returns = np.array([r["return"] for r in results])
    summary = {"env": cfg.env, "episodes": cfg.episodes, "seed": cfg.seed, "greedy": cfg.greedy,
               "mean_return": float(returns.mean()), "std_return": float(returns.std()),
               "mean_steps": float(np.mean([r["steps"] for r in results]))}
    if results[0]["oracle_return"] is not None:
        oracle = np.array([r["oracle_return"] for r in results])
        summary.update(success_rate=float(np.mean([r["success"] for r in results])),
                       oracle_return=float(oracle.mean()),
                       return_vs_oracle=float(returns.mean() / oracle.mean()))
    return summary
