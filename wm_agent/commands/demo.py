"""The whole GridWorld pipeline in one command: collect -> V -> M -> C (in the dream only) -> real env.

Each stage is the same function its own CLI command runs, so the demo is also the integration test of
the pipeline; a re-run resumes whatever stage was interrupted.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wm_agent.config import doc
from wm_agent.io import save_json

ENV_ID = "WM-GridWorld-v0"
# The stages' options that the demo spells otherwise: (stage, flag) -> the demo's flag.
DEMO_FLAGS = {("rnn", "--batch-size"): "--rnn-batch-size"}


@dataclass
class DemoConfig:
    """wm-agent demo: the full GridWorld pipeline on a laptop CPU, with figures, videos and summary.json."""

    out: str = doc("results folder", "world_model_results")
    train_episodes: int = doc("random-policy episodes to learn the world model from", 600)
    heldout_episodes: int = doc("episodes (other seeds) kept aside to measure the world model", 100)
    vae_epochs: int = doc("VQ-VAE epochs", 3)
    # M trained to convergence (with train-rnn's learning-rate decay): an M that still draws some next
    # frames wrong (the agent vanishes) dreams states no real episode has, whose rewards the heads make up
    # and CMA-ES farms (docs/benchmarks.md, "GridWorld over seeds and CPU kernels").
    rnn_epochs: int = doc("MDN-RNN epochs", 30)
    rnn_batch_size: int = doc("MDN-RNN sequences per batch", 16)
    popsize: int = doc("CMA-ES population", 32)
    rollouts: int = doc("dream episodes per CMA-ES candidate", 8)
    generations: int = doc("CMA-ES generations (in the dream); every 10th mean is scored on 512 fixed dreams and "
                           "the best-scoring one is the controller", 120)
    # GridWorld is deterministic, so the most likely next frame (tau 0) is the faithful dream; sampled
    # frames at tau 1 sometimes lose the agent, and CMA-ES learnt to steer into those states for reward.
    temperature: float = doc("dream temperature for controller training (0: the most likely next frame)", 0.0)
    eval_episodes: int = doc("fresh real-env layouts the controller is evaluated on", 200)
    workers: int = doc("collector worker processes", 2)
    seed: int = doc("seed of the whole run", 0)
    progress: bool = doc("show progress bars", True)


@contextlib.contextmanager
def _stage(name: str, cfg: DemoConfig, timings: dict, key: str):
    """Announce a stage and record its seconds in ``timings[key]``."""
    if cfg.progress:
        print(f"\n== {name} ==", flush=True)
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or resume) the whole pipeline into ``cfg.out``; returns the summary."""
    from wm_agent.config import ResumeMismatch

    try:
        return _run_demo(cfg)
    except ResumeMismatch as exc:
        # The stages' advice names their own options (--overwrite, --resume, --batch-size); the demo has
        # none of those: a re-run continues the run in --out, so the way out is its settings or a new folder.
        found = exc.found_as(DEMO_FLAGS.get((exc.stage, exc.flag), exc.flag))
        raise ValueError(f"{cfg.out} holds a demo run made with other settings ({exc.path}: {found}); re-run the "
                         f"demo with that run's settings to continue it, or pass another --out (or delete {cfg.out}) "
                         "to start a new one") from exc


def _run_demo(cfg: DemoConfig) -> dict:
    from wm_agent.world_model import WorldModel

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "world_model_gridworld.pt"
    timings = {}
    with _stage("1/6 collect random episodes", cfg, timings, "collect_s"):
        train, heldout = _collect(cfg, out / "data" / "train", out / "data" / "heldout")
    with _stage("2/6 train the VQ-VAE (V)", cfg, timings, "vae_s"):
        _train_vae(cfg, train.root, ckpt)
    with _stage("3/6 train the MDN-RNN (M)", cfg, timings, "rnn_s"):
        _train_rnn(cfg, train.root, ckpt)
        wm = WorldModel.load(ckpt)
        frames, world_model_figures = _measure_world_model(cfg, wm, heldout)
    with _stage("4/6 train the controller (C) with CMA-ES, in the dream only", cfg, timings, "controller_s"):
        _train_controller(cfg, wm, ckpt)
        wm = WorldModel.load(ckpt)
    with _stage("5/6 evaluate in the real env, beside the dream and a random policy", cfg, timings, "evaluate_s"):
        result, calibration = _evaluate(cfg, wm, ckpt)
    with _stage("6/6 figures and videos", cfg, timings, "figures_s"):
        _figures_and_videos(cfg, wm, out, ckpt, frames, heldout)
    summary = _summary(world_model_figures, result, calibration, wm, train, timings, time.perf_counter() - t_start)
    save_json(summary, out / "summary.json")
    if cfg.progress:
        print(json.dumps(summary, indent=2))
    return summary


def _collect(cfg: DemoConfig, train_dir: Path, heldout_dir: Path):
    from wm_agent.data.collect import DataCollector
    from wm_agent.data.dataset import EpisodeDataset

    for folder, seed, episodes in ((train_dir, cfg.seed, cfg.train_episodes),
                                   (heldout_dir, cfg.seed + 10_000, cfg.heldout_episodes)):
        # Shards of 10 episodes (the shard size decides which seeds the episodes get: the demo's
        # figures were measured on these), fewer where that would leave a worker idle.
        per_shard = max(1, min(10, -(-episodes // max(cfg.workers, 1))))
        DataCollector(ENV_ID, folder, "random", seed, cfg.workers, per_shard).collect(episodes, cfg.progress)
    return EpisodeDataset(train_dir), EpisodeDataset(heldout_dir)


def _train_vae(cfg: DemoConfig, data: Path, ckpt: Path) -> None:
    from wm_agent.commands.train import TrainVAEConfig, run_train_vae

    run_train_vae(TrainVAEConfig(data=str(data), out=str(ckpt), epochs=cfg.vae_epochs, seed=cfg.seed,
                                 resume=ckpt.exists(), progress=cfg.progress))


def _train_rnn(cfg: DemoConfig, data: Path, ckpt: Path) -> None:
    from wm_agent.commands.train import TrainRNNConfig, run_train_rnn
    from wm_agent.world_model import WorldModel

    resume_rnn = "rnn" in WorldModel.load(ckpt).train_state
    run_train_rnn(TrainRNNConfig(data=str(data), world_model=str(ckpt), epochs=cfg.rnn_epochs,
                                 batch_size=cfg.rnn_batch_size, seed=cfg.seed, resume=resume_rnn,
                                 progress=cfg.progress))


def _measure_world_model(cfg: DemoConfig, wm, heldout) -> tuple[np.ndarray, dict]:
    """V's reconstruction and M's dream fidelity on held-out episodes; also returns the frames V was scored on."""
    from wm_agent.evaluate import dream_fidelity, vae_quality

    rng = np.random.default_rng(cfg.seed)
    frames = heldout.frames(np.sort(rng.choice(heldout.num_frames, min(20_000, heldout.num_frames), replace=False)))
    quality = vae_quality(wm, frames)
    fidelity = dream_fidelity(wm, heldout, 0, 0.0, {"fidelity": 0.01, "exact": 0.002}, cfg.seed, cfg.progress)
    return frames, {
        "vae_mse": quality["vae_mse"], "codebook_perplexity": quality["codebook_perplexity"],
        "codebook_usage": quality["codebook_usage"], "codes_in_use": quality["codes_in_use"],
        "dream_fidelity_steps": fidelity["fidelity_steps"], "dream_exact_steps": fidelity["exact_steps"],
        "dream_fidelity_frozen_baseline_steps": fidelity["fidelity_frozen_baseline_steps"],
        "one_step_error_rate": fidelity["one_step_error_rate"], "reward_bias": fidelity["reward_bias"],
        "heldout_mean_episode_length": fidelity["mean_episode_length"],
    }


def _train_controller(cfg: DemoConfig, wm, ckpt: Path) -> None:
    from wm_agent.commands.train_controller import ControllerTrainConfig, train_controller

    train_controller(ControllerTrainConfig(world_model=str(ckpt), env=ENV_ID, where="dream", popsize=cfg.popsize,
                                           rollouts=cfg.rollouts, generations=cfg.generations,
                                           temperature=cfg.temperature, seed=cfg.seed,
                                           resume="cmaes" in wm.train_state, progress=cfg.progress))


def _evaluate(cfg: DemoConfig, wm, ckpt: Path) -> tuple[dict, dict]:
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate
    from wm_agent.evaluate import dream_vs_real

    result = evaluate(EvaluateConfig(checkpoint=str(ckpt), env=ENV_ID, episodes=cfg.eval_episodes,
                                     seed=cfg.seed + 20_000, greedy=False, dreams=0, progress=cfg.progress), wm)
    # The same controller's dream return, and a random policy's return in the dream and on the same real
    # layouts: a dream that pays more than the real env for the same behaviour is being exploited.
    calibration = dream_vs_real(wm, ENV_ID, cfg.eval_episodes, cfg.seed + 20_000, cfg.temperature, cfg.seed)
    return result, calibration


def _figures_and_videos(cfg: DemoConfig, wm, out: Path, ckpt: Path, frames: np.ndarray, heldout) -> None:
    from wm_agent.render.episodes import record_dream_episode, record_side_by_side
    from wm_agent.render.figures import Visualizer
    from wm_agent.render.video import write_video

    vis = Visualizer(out, tag="gridworld")
    sample = frames[:10]
    recon = wm.decode(wm.encode(sample))
    vis.reconstruction(sample, recon)
    ep = heldout.episode(0)
    actions = np.asarray(ep["actions"])[:19]
    dream = wm.dream(ep["obs"][0], actions, temperature=0.0)["frames"]
    vis.real_vs_dream(np.asarray(ep["obs"][: len(dream)]), dream)
    vis.dream_sequence(record_dream_episode(wm, seed=cfg.seed, temperature=cfg.temperature)["frames"])
    vis.training_curves(str(ckpt) + ".metrics.jsonl", wm.train_state["cmaes"]["log"])
    side = record_side_by_side(wm, ENV_ID, seed=cfg.seed + 20_000)
    write_video(side["frames"], out / "episode_real_vs_dream_gridworld.mp4", fps=4)
    dream_ep = record_dream_episode(wm, seed=cfg.seed + 1, temperature=cfg.temperature)
    write_video(np.repeat(np.repeat(dream_ep["frames"], 4, 1), 4, 2), out / "episode_dream_gridworld.mp4", fps=4)


def _summary(world_model_figures: dict, result: dict, calibration: dict, wm, train, timings: dict,
             wall_time_s: float) -> dict:
    return {
        **world_model_figures,
        "success_rate": result["success_rate"], "mean_return": result["mean_return"],
        "oracle_return": result["oracle_return"], "return_vs_oracle": result["return_vs_oracle"],
        "eval_episodes": result["episodes"],
        "dream_return": calibration["dream_return"],
        "random_success_rate": calibration["random_success_rate"], "random_mean_return": calibration["random_return"],
        "random_return_vs_oracle": calibration["random_return"] / result["oracle_return"],
        "random_dream_return": calibration["random_dream_return"],
        "real_env_steps_used": int(train.num_steps),  # the controller never touched the real env
        "controller_trained_in": "dream", "controller_generations": wm.train_state["cmaes"]["generation"],
        "controller_selected_generation": wm.train_state["cmaes"].get("selected_generation"),
        "wall_time_s": wall_time_s, "stage_seconds": timings,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
