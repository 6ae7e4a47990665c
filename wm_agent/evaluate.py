"""Measure a world model and its controller: library functions for the figures of ``wm-agent eval-dream``
and the demo's report (reconstruction and codebook use, dream fidelity against real episodes, dream vs
real returns). The command jobs are in ``wm_agent.commands.evaluate``, the episode loops in
``wm_agent.rollouts``.
"""

from __future__ import annotations

import numpy as np
import torch

from wm_agent.dream_env import dream_fitness
from wm_agent.progress import progress_bar
from wm_agent.rollouts import rollout_batch
from wm_agent.world_model import WorldModel


# -- world-model quality -----------------------------------------------------------------------------
@torch.no_grad()
def vae_quality(wm: WorldModel, frames: np.ndarray) -> dict:
    """Per-pixel reconstruction MSE on [0, 1] images, codebook perplexity and usage over ``frames``.

    Args:
        wm: the world model whose V is measured.
        frames: uint8 frames (N, H, W, 3).

    Returns:
        ``vae_mse``, ``codebook_perplexity``, ``codebook_usage``, ``codes_in_use`` and ``num_embeddings``.
    """
    from wm_agent.models.vqvae import frames_to_tensor

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
    """Steps (after the first frame) before the first dreamed frame whose error reaches ``threshold``.

    Args:
        errors: per-frame errors, the first frame's first.
        threshold: the error that ends faithfulness.

    Returns:
        The number of faithful steps.
    """
    bad = np.nonzero(errors[1:] >= threshold)[0]
    return int(bad[0]) if len(bad) else len(errors) - 1


@torch.no_grad()
def dream_fidelity(wm: WorldModel, dataset, episodes: int, temperature: float, thresholds: dict[str, float],
                   seed: int = 0, progress: bool = True) -> dict:
    """Dream each episode from its real first frame under its real actions; compare frame by frame.

    Also scores a 'frozen' baseline that predicts the first frame forever: a metric the baseline
    passes says little about the dynamics.

    Args:
        wm: the world model.
        dataset: the real episodes (an ``EpisodeDataset``).
        episodes: how many to dream (<= 0: all).
        temperature: the dream temperature.
        thresholds: a frame error threshold by name.
        seed: episode i dreams with seed ``seed + i``.
        progress: whether to show progress.

    Returns:
        The metrics: episode count and length, one-step error rate, reward bias and MAE, and per threshold
        its faithful steps (mean, median), full-episode rate and the frozen baseline's steps.
    """
    n = dataset.num_episodes if episodes <= 0 else min(episodes, dataset.num_episodes)
    scores = {name: [] for name in thresholds}
    frozen = {name: [] for name in thresholds}
    lengths, one_step = [], {"errors": [], "reward_errors": []}
    strict = min(thresholds.values())
    for i in progress_bar(range(n), desc="eval-dream", unit="ep", disable=not progress):
        ep = dataset.episode(i)
        real = np.asarray(ep["obs"], dtype=np.float32) / 255.0
        dream = wm.dream(ep["obs"][0], np.asarray(ep["actions"]), temperature, seed=seed + i)["frames"]
        err = ((dream.astype(np.float32) / 255.0 - real) ** 2).reshape(len(real), -1).mean(1)
        base = ((real[:1] - real) ** 2).reshape(len(real), -1).mean(1)
        for name, thr in thresholds.items():
            scores[name].append(faithful_steps(err, thr))
            frozen[name].append(faithful_steps(base, thr))
        lengths.append(len(real) - 1)
        next_frames, rewards = _one_step_predictions(wm, ep)
        one_step["errors"].append(((next_frames / 255.0 - real[1:]) ** 2).reshape(len(rewards), -1).mean(1))
        one_step["reward_errors"].append(rewards - np.asarray(ep["rewards"], np.float32))
    lengths = np.array(lengths)
    errors, reward_errors = np.concatenate(one_step["errors"]), np.concatenate(one_step["reward_errors"])
    out = {"episodes": n, "mean_episode_length": float(lengths.mean()), "temperature": temperature,
           # Next frames predicted from the REAL past (most likely component, snapped, decoded) that are
           # wrong by the strict threshold: what compounds into a dream that leaves the real world.
           "one_step_error_rate": float((errors >= strict).mean()),
           # The reward head's mean error on real transitions: a bias of one step cost doubles (or erases)
           # the cost of every dreamed step.
           "reward_bias": float(reward_errors.mean()), "reward_mae": float(np.abs(reward_errors).mean())}
    for name, thr in thresholds.items():
        s = np.array(scores[name])
        out[f"{name}_threshold"] = thr
        out[f"{name}_steps"] = float(s.mean())
        out[f"{name}_steps_median"] = float(np.median(s))
        out[f"{name}_full_episode_rate"] = float((s == lengths).mean())
        out[f"{name}_frozen_baseline_steps"] = float(np.mean(frozen[name]))
    return out


@torch.no_grad()
def _one_step_predictions(wm: WorldModel, episode: dict) -> tuple[np.ndarray, np.ndarray]:
    """M run over an episode's real frames and actions: its most likely next frame (decoded, float
    0..255) and its predicted reward for every transition."""
    codes = wm.encode_indices(np.asarray(episode["obs"]))
    z = wm.vae.indices_to_latent(codes).reshape(1, len(codes), -1)
    actions = torch.as_tensor(np.array(episode["actions"])).to(wm.device)[None]
    params, _ = wm.rnn.eval()(z[:, :-1], actions)
    predicted = wm.rnn.sample(params["pi"][0], params["mu"][0], params["sigma"][0], temperature=0.0)
    frames = wm.decode(wm.snap(predicted)[1]).astype(np.float32)
    return frames, params["reward"][0].cpu().numpy()


# -- dream vs real ------------------------------------------------------------------------------------
@torch.no_grad()
def dream_vs_real(wm: WorldModel, env_id: str, episodes: int, seed: int, temperature: float, dream_seed: int = 0
                  ) -> dict[str, float]:
    """Is the dream paying what the real env pays? The controller's mean dream return (``episodes``
    dreams at ``temperature``, scored as the CMA-ES search scores it), and a uniformly random policy's
    mean return in the dream and in the real env on the layouts reset with ``seed .. seed + episodes - 1``.

    The random policy is the controller with all parameters zero (every logit 0: uniform over the
    discrete actions), so both policies run through the same code paths in the dream and the real env.

    Args:
        wm: the world model.
        env_id: the real env.
        episodes: dreams and real episodes per policy.
        seed: the real episodes reset with ``seed .. seed + episodes - 1``.
        temperature: the dream temperature.
        dream_seed: seed of the dreams.

    Returns:
        ``dream_return``, ``random_dream_return``, ``random_return`` and ``random_success_rate``.

    Raises:
        ValueError: for a model of continuous actions.
    """
    if not wm.config.discrete_actions:
        raise ValueError("dream_vs_real's random policy is uniform over discrete actions; this model's are continuous")
    trained = wm.controller.get_flat()
    uniform = np.zeros_like(trained)
    dream = dream_fitness(wm, np.stack([trained, uniform]), episodes, temperature, wm.episode_limit(env_id),
                          False, np.random.default_rng(dream_seed))
    envs = [wm.make_env(env_id) for _ in range(episodes)]
    try:
        real = rollout_batch(wm, envs, uniform[None], [seed + i for i in range(episodes)], greedy=False)
    finally:
        for env in envs:
            env.close()
    return {"dream_return": float(dream[0]), "random_dream_return": float(dream[1]),
            "random_return": float(real["return"].mean()), "random_success_rate": float(real["success"].mean())}
