"""Evaluate a world model's controller in the REAL env, and measure how faithful its dreams are."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from wm_agent.config import doc
from wm_agent.controller import env_action
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
        action = env_action(wm.controller.from_obs(torch.as_tensor(obs)[None]), wm.config.discrete_actions, greedy, gen)
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


# -- world-model quality -----------------------------------------------------------------------------
@dataclass
class EvalDreamConfig:
    """wm-agent eval-dream: reconstruction, codebook and dream fidelity on held-out episodes, as JSON."""

    world_model: str = doc("world-model checkpoint")
    data: str = doc("folder of HELD-OUT episode shards (collect them with a seed never used for training)")
    episodes: int = doc("episodes to dream through (0 = all)", 100)
    max_frames: int = doc("frames used for the reconstruction metrics", 20000)
    temperature: float = doc("dream temperature (0 = most likely component's mean)", 0.0)
    threshold: float = doc("per-frame MSE under which a dreamed frame counts as faithful", 0.01)
    strict_threshold: float = doc("stricter per-frame MSE (on GridWorld: no cell drawn wrong)", 0.002)
    seed: int = doc("seed for frame sampling and dream sampling", 0)
    progress: bool = doc("show a progress bar", True)


@torch.no_grad()
def vae_quality(wm: WorldModel, frames: np.ndarray) -> dict:
    """Per-pixel reconstruction MSE on [0, 1] images, codebook perplexity and usage over ``frames``."""
    from wm_agent.vqvae import frames_to_tensor

    wm.vae.eval()
    se, counts = 0.0, torch.zeros(wm.config.num_embeddings)
    for i in range(0, len(frames), 512):
        x = frames_to_tensor(frames[i : i + 512], wm.device)
        idx = wm.vae.encode(x)
        se += float(((wm.vae.decode(idx) - x) ** 2).sum())
        counts += torch.bincount(idx.flatten().cpu(), minlength=wm.config.num_embeddings).float()
    probs = counts / counts.sum()
    entropy = float(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    return {"vae_mse": se / (len(frames) * np.prod(frames.shape[1:])), "codebook_perplexity": float(np.exp(entropy)),
            "codebook_usage": float((counts > 0).float().mean()), "codes_in_use": int((counts > 0).sum()),
            "num_embeddings": wm.config.num_embeddings}


def faithful_steps(errors: np.ndarray, threshold: float) -> int:
    """Steps (after the first frame) before the first dreamed frame whose error reaches ``threshold``."""
    bad = np.nonzero(errors[1:] >= threshold)[0]
    return int(bad[0]) if len(bad) else len(errors) - 1


@torch.no_grad()
def dream_fidelity(wm: WorldModel, dataset, episodes: int, temperature: float, thresholds: dict[str, float],
                   seed: int = 0, progress: bool = True) -> dict:
    """Dream each episode from its real first frame under its real actions; compare frame by frame.

    Also scores a 'frozen' baseline that predicts the first frame forever: a metric the baseline
    passes says little about the dynamics.
    """
    n = dataset.num_episodes if episodes <= 0 else min(episodes, dataset.num_episodes)
    scores = {name: [] for name in thresholds}
    frozen = {name: [] for name in thresholds}
    lengths = []
    for i in tqdm(range(n), desc="eval-dream", unit="ep", disable=not progress):
        ep = dataset.episode(i)
        real = np.asarray(ep["obs"], dtype=np.float32) / 255.0
        dream = wm.dream(ep["obs"][0], np.asarray(ep["actions"]), temperature, seed=seed + i)["frames"]
        err = ((dream.astype(np.float32) / 255.0 - real) ** 2).reshape(len(real), -1).mean(1)
        base = ((real[:1] - real) ** 2).reshape(len(real), -1).mean(1)
        for name, thr in thresholds.items():
            scores[name].append(faithful_steps(err, thr))
            frozen[name].append(faithful_steps(base, thr))
        lengths.append(len(real) - 1)
    lengths = np.array(lengths)
    out = {"episodes": n, "mean_episode_length": float(lengths.mean()), "temperature": temperature}
    for name, thr in thresholds.items():
        s = np.array(scores[name])
        out[f"{name}_threshold"] = thr
        out[f"{name}_steps"] = float(s.mean())
        out[f"{name}_steps_median"] = float(np.median(s))
        out[f"{name}_full_episode_rate"] = float((s == lengths).mean())
        out[f"{name}_frozen_baseline_steps"] = float(np.mean(frozen[name]))
    return out


def eval_dream(cfg: EvalDreamConfig, wm: WorldModel | None = None) -> dict:
    from wm_agent.dataset import EpisodeDataset

    wm = wm or WorldModel.load(cfg.world_model)
    ds = EpisodeDataset(cfg.data)
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.choice(ds.num_frames, size=min(cfg.max_frames, ds.num_frames), replace=False))
    result = {"world_model": cfg.world_model, "data": cfg.data, **vae_quality(wm, ds.frames(idx))}
    fidelity = dream_fidelity(wm, ds, cfg.episodes, cfg.temperature,
                              {"fidelity": cfg.threshold, "exact": cfg.strict_threshold}, cfg.seed, cfg.progress)
    result.update(fidelity)
    result["dream_fidelity_steps"] = fidelity["fidelity_steps"]
    return result
