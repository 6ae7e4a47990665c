"""``wm-agent evaluate`` and ``wm-agent eval-dream``: their settings and jobs (each returns the JSON object
the command prints)."""

from __future__ import annotations

import warnings
import dataclasses
from dataclasses import dataclass

import numpy as np

from wm_agent.backends import BACKEND_HELP, RAY_ADDRESS_HELP, Backend
from wm_agent.pretrained import checkpoint_path
from wm_agent.config import check_settings, doc
from wm_agent.dream_env import dream_fitness
from wm_agent.evaluate import dream_fidelity, vae_quality
from wm_agent.latent_env import check_data_fits, check_env_fits
from wm_agent.progress import progress_bar
from wm_agent.rollouts import RolloutWorkers, rollout_batch
from wm_agent.world_model import WorldModel


@dataclass
class EvaluateConfig:
    """wm-agent evaluate: run the checkpoint's controller in the real env and print one JSON object."""

    checkpoint: str | None = doc("world-model checkpoint with a trained controller", None)
    pretrained: str | None = doc("instead of --checkpoint: a checkpoint that ships with wm-agent, by name "
                                 "(carracing, gridworld)", None)
    env: str | None = doc("real env id (default: the env the checkpoint was trained on)", None)
    episodes: int = doc("episodes to run", 100)
    seed: int = doc("reset seed of the first episode; episode i resets with seed + i and samples its actions "
                    "from a stream of its own seeded by seed + i", 0)
    greedy: bool = doc("argmax actions instead of sampling from the controller's softmax", False)
    max_steps: int = doc("stop each episode after this many steps (0 = the env's own limit)", 0)
    workers: int = doc("processes the episodes are split over (the same episodes and random numbers either way; "
                       "on CarRacing, whose physics amplify float rounding, a return can differ slightly with "
                       "the split)", 1)
    dreams: int = doc("also run the controller in this many dreams of the world model (as a dream search scores "
                      "it) and print its mean dream return beside the real one: where the two disagree, the dream "
                      "pays for what the real env does not, or misses what it does (0: skip)", 100)
    temperature: float = doc("dream temperature of --dreams", 1.0)
    progress: bool = doc("show a progress bar", True)
    backend: Backend = doc(BACKEND_HELP + " (ray: every episode runs on the cluster, even with --workers 1)", "local")
    ray_address: str | None = doc(RAY_ADDRESS_HELP, None)


def evaluate(cfg: EvaluateConfig, wm: WorldModel | None = None) -> dict:
    """Run the controller for ``cfg.episodes`` episodes in the real env (in this process, or split over
    ``cfg.workers`` worker processes, local or Ray tasks (``cfg.backend``), with the same results).

    Args:
        cfg: the settings.
        wm: the world model to score, in memory (None: the one ``cfg.checkpoint`` holds).

    Returns:
        The summary ``wm-agent evaluate`` prints: env, episodes, mean/std/min/median/max return, mean steps,
        each episode's return (``returns``, episode i reset with seed + i), the mean dream return (with
        ``cfg.dreams``), and where the env reports them success rate and oracle return.
    """
    if wm is None:
        cfg = dataclasses.replace(cfg, checkpoint=checkpoint_path(cfg.checkpoint, cfg.pretrained))
    check_settings((cfg.episodes >= 1, f"--episodes must be >= 1, got {cfg.episodes}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.workers >= 1, f"--workers must be >= 1, got {cfg.workers}"),
                   (cfg.dreams >= 0, f"--dreams must be >= 0 (0: skip), got {cfg.dreams}"),
                   (cfg.temperature >= 0, f"--temperature must be >= 0, got {cfg.temperature}"))
    given = wm is not None
    wm = wm or WorldModel.load(cfg.checkpoint)
    env_id = wm.real_env_id(cfg.env)
    seeds = [cfg.seed + i for i in range(cfg.episodes)]
    in_process = cfg.backend == "local" and (cfg.workers == 1 or cfg.episodes == 1)
    envs = [wm.make_env(env_id) for _ in range(cfg.episodes if in_process else 1)]
    try:
        check_env_fits(envs[0], wm)  # an error that stops the run comes before advice about it
        wm.warn_if_untrained("this world model" if given else cfg.checkpoint)
        params = wm.controller.params.detach()[None]
        if in_process:
            res = rollout_batch(wm, envs, params, seeds, cfg.greedy, max_steps=cfg.max_steps, progress=cfg.progress)
        else:
            # A model given in memory is the one scored (the file at cfg.checkpoint may differ or not exist).
            workers = RolloutWorkers(wm if given else cfg.checkpoint, env_id, cfg.workers, backend=cfg.backend,
                                     address=cfg.ray_address)
            with progress_bar(total=len(seeds), desc="evaluate", unit="ep", disable=not cfg.progress) as bar:
                try:
                    res = workers.run(params.cpu().numpy(), seeds, cfg.greedy, cfg.max_steps, on_chunk=bar.update)
                finally:
                    workers.close()
    finally:
        for env in envs:
            env.close()
    returns = res["return"][0]
    summary = {"env": env_id, "episodes": cfg.episodes, "seed": cfg.seed, "greedy": cfg.greedy,
               "mean_return": float(returns.mean()), "std_return": float(returns.std()),
               "min_return": float(returns.min()), "median_return": float(np.median(returns)),
               "max_return": float(returns.max()), "mean_steps": float(res["steps"].mean()),
               # Episode by episode, in seed order: two controllers scored on the same seeds compare track by
               # track (a paired difference), which tells a real gain from noise with fewer episodes.
               "returns": [float(r) for r in returns]}
    if cfg.dreams and len(wm.start_codes):  # a model without start frames cannot dream
        steps = cfg.max_steps or wm.episode_limit(env_id)
        dream = dream_fitness(wm, params.cpu().numpy(), cfg.dreams, cfg.temperature, steps, cfg.greedy,
                              np.random.default_rng(cfg.seed))
        summary.update(dream_return=float(dream[0]), dreams=cfg.dreams, dream_temperature=cfg.temperature)
    if "oracle_return" in res:
        oracle = res["oracle_return"][0]
        summary.update(success_rate=float(res["success"].mean()), oracle_return=float(oracle.mean()),
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


def eval_dream(cfg: EvalDreamConfig, wm: WorldModel | None = None) -> dict:
    """Reconstruction and codebook figures on ``cfg.max_frames`` sampled frames of ``cfg.data``, and dream
    fidelity over its episodes (``vae_quality``, ``dream_fidelity``).

    Args:
        cfg: the settings.
        wm: the world model, in memory (None: the one ``cfg.world_model`` holds).

    Returns:
        The figures ``wm-agent eval-dream`` prints.
    """
    from wm_agent.data.dataset import EpisodeDataset, same_episodes

    check_settings((cfg.episodes >= 0, f"--episodes must be >= 0 (0: all), got {cfg.episodes}"),
                   (cfg.max_frames >= 1, f"--max-frames must be >= 1, got {cfg.max_frames}"),
                   (cfg.temperature >= 0, f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.threshold > 0, f"--threshold must be > 0, got {cfg.threshold}"),
                   (cfg.strict_threshold > 0, f"--strict-threshold must be > 0, got {cfg.strict_threshold}"),
                   (cfg.strict_threshold <= cfg.threshold,
                    f"--strict-threshold ({cfg.strict_threshold:g}) must not exceed --threshold ({cfg.threshold:g})"))
    wm = wm or WorldModel.load(cfg.world_model)
    wm.require_trained("rnn", cfg.world_model)
    ds = EpisodeDataset(cfg.data)
    check_data_fits(ds, wm, cfg.world_model)
    trained_on = wm.train_state["rnn"].get("data")
    # M trained on several folders (train-rnn --data A B) learnt from each of them.
    parts = [] if trained_on is None else trained_on.get("folders", [trained_on])
    if any(same_episodes(part, ds.identity) for part in parts):
        warnings.warn(f"{cfg.data} holds the episodes {cfg.world_model}'s MDN-RNN was trained on (same env, policy "
                      "and collection seed): these figures are not held-out ones; collect with another --seed",
                      stacklevel=2)
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.choice(ds.num_frames, size=min(cfg.max_frames, ds.num_frames), replace=False))
    result = {"world_model": cfg.world_model, "data": cfg.data, **vae_quality(wm, ds.frames(idx))}
    fidelity = dream_fidelity(wm, ds, cfg.episodes, cfg.temperature,
                              {"fidelity": cfg.threshold, "exact": cfg.strict_threshold}, cfg.seed, cfg.progress)
    result.update(fidelity)
    result["dream_fidelity_steps"] = fidelity["fidelity_steps"]
    return result
