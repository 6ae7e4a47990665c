"""Throughput checks measured in one run, so machine load affects the baseline and the result alike."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import NamedTuple

from wm_agent.data.collect import DataCollector, Vectorization
from wm_agent.data.episodes import EpisodeBuffer, make_env, run_episodes
from wm_agent.data.frames import DiscardFrames
from wm_agent.env_ids import episode_limit
from wm_agent.data.policies import BlindPolicy, make_policy
from wm_agent.data.shard_writer import shard_rngs
from wm_agent.io import temporary_folder

__all__ = ["BenchmarkActionRepeatConfig", "BenchmarkCollectConfig", "BenchmarkDreamConfig", "BenchmarkTrainConfig",
           "RolloutLoop", "benchmark_action_repeat", "benchmark_collect", "benchmark_dream", "benchmark_train"]


@dataclass
class BenchmarkCollectConfig:
    env: str = field(default="WM-GridWorld-v0", metadata={"help": "Gymnasium env id to collect from"})
    steps: int = field(
        default=400_000,
        metadata={"help": "env steps for the collector in each round, rounded up to whole episodes (the "
                          "baseline's mean episode length sets how many); its frames also count each episode's "
                          "reset frame. The single-env baseline runs steps/workers, half before and half after "
                          "it. Use ~2000 for WM-CarRacing-v0"})
    rounds: int = field(default=3, metadata={"help": "rounds of baseline, collector, baseline; the median "
                                                      "ratio is reported with every round's"})
    workers: int = field(default=2, metadata={"help": "collector worker processes"})
    policy: BlindPolicy = field(default="random", metadata={"help": "data policy"})
    vectorization: Vectorization = field(
        default="processes", metadata={"help": "the collector's vectorization (see wm-agent collect --help)"})
    seed: int = field(default=0, metadata={"help": "base seed"})
    env_kwargs: dict = field(default_factory=dict, metadata={"help": "JSON object of gym.make keyword arguments"})


class RolloutLoop:
    """One env and the data policy in this process, rolled out through the collector's own loop
    (``run_episodes`` into one reused ``EpisodeBuffer``, as each collector worker does) without
    processes or shard files: the single-env baseline here and in ``benchmarks/measure_collector_overhead.py``.
    Episode k is reset with the k-th seed of shard 0 of ``seed``."""

    def __init__(self, env_id: str, env_kwargs: dict | None = None, policy: str = "random", seed: int = 0,
                 buffer_episodes: int = 64):
        self.env = make_env(env_id, dict(env_kwargs or {}))
        limit = episode_limit(self.env.spec) or 1000
        self.frame_shape = tuple(self.env.observation_space.shape)
        self.reset_seeds, rng = shard_rngs(seed, 0, 1 << 20)
        self.policy = make_policy(policy, self.env.action_space, rng)
        # Room for buffer_episodes whole episodes, so that the buffer does not grow while timed.
        self.buffer = EpisodeBuffer(self.frame_shape, self.env.action_space, buffer_episodes * (limit + 1),
                                    DiscardFrames(self.frame_shape))
        self.episodes = 0  # rolled out so far

    def run(self, episodes: int, frames=None, append: bool = False) -> None:
        """Roll out the next ``episodes`` episodes into the buffer (emptied first unless ``append``);
        their frames go to ``frames`` (a ``FrameWriter``, say), or are dropped."""
        if not append:
            self.buffer.clear(frames=frames if frames is not None else DiscardFrames(self.frame_shape))
        run_episodes(self.env, self.policy, self.reset_seeds[self.episodes : self.episodes + episodes],
                     buffer=self.buffer)
        self.episodes += episodes


class _RawRate(NamedTuple):
    frames: int
    steps: int
    episodes: int
    seconds: float
    cpu_seconds: float


def _raw_rate(env_id: str, env_kwargs: dict, policy_name: str, steps: int, seed: int,
              episodes_per_buffer: int) -> _RawRate:
    """One env and the data policy through the collector's rollout loop (storing actions and rewards;
    the frames are dropped), ``steps`` steps."""
    loop = RolloutLoop(env_id, env_kwargs, policy_name, seed, buffer_episodes=episodes_per_buffer)
    frames = steps_done = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while steps_done < steps:
        # One buffer refilled per shard-sized batch of episodes, as each collector worker does.
        for k in range(episodes_per_buffer):
            loop.run(1, append=k > 0)
            if loop.buffer.num_steps + steps_done >= steps:
                break
        frames += loop.buffer.num_frames
        steps_done += loop.buffer.num_steps
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    loop.env.close()
    return _RawRate(frames, steps_done, loop.episodes, seconds, cpu_seconds)


def _collect_round(env_id: str, env_kwargs: dict, policy: str, steps: int, workers: int, seed: int,
                   vectorization: str) -> dict:
    """One round: half the baseline, the collector (a fresh folder), the other half of the baseline,
    so that a machine that speeds up or slows down during the round (a shared VM does) moves both
    figures alike."""
    half = max(1, steps // workers // 2)
    before = _raw_rate(env_id, env_kwargs, policy, half, seed, episodes_per_buffer=64)
    # Enough episodes for `steps`, in about 32 shards per worker so no worker idles long at the end.
    episodes = max(1, math.ceil(steps / (before.steps / before.episodes)))
    per_shard = max(1, math.ceil(episodes / (32 * workers)))
    with temporary_folder("wm-agent-bench-") as tmp:
        start, main_cpu_start = time.perf_counter(), time.process_time()
        collector = DataCollector(env_id, tmp, policy=policy, seed=seed, workers=workers,
                                  episodes_per_shard=per_shard, env_kwargs=env_kwargs,
                                  vectorization=vectorization)
        manifest = collector.collect(episodes, progress=False)
        col_s = time.perf_counter() - start
        main_cpu = time.process_time() - main_cpu_start  # this process and its fsync thread
        disk_bytes = sum(p.stat().st_size for p in Path(tmp).glob("shard_*/*"))
    after = _raw_rate(env_id, env_kwargs, policy, half, seed + 1, episodes_per_buffer=64)
    raw_frames, raw_steps, _, raw_s, raw_cpu = (x + y for x, y in zip(before, after))
    worker_cpu = collector.stats["worker_cpu_seconds"]
    col_fps, raw_fps = manifest["frames"] / col_s, raw_frames / raw_s
    return {
        "raw_steps": raw_steps, "raw_frames": raw_frames, "raw_seconds": raw_s, "raw_cpu_seconds": raw_cpu,
        "raw_fps": raw_fps, "raw_fps_before": before.frames / before.seconds,
        "raw_fps_after": after.frames / after.seconds,
        "collector_steps": manifest["steps"], "collector_frames": manifest["frames"],
        "collector_shards": len(manifest["shards"]), "collector_seconds": col_s, "collector_fps": col_fps,
        "collector_worker_cpu_seconds": worker_cpu, "collector_main_cpu_seconds": main_cpu,
        "collector_disk_bytes": disk_bytes,
        "raw_frame_bytes": manifest["frames"] * math.prod(collector.observation_shape),
        "ratio": col_fps / (workers * raw_fps),
        # Frames per CPU-second, collector workers vs the baseline: the collector's own overhead,
        # whatever else the machine is running (the wall-clock ratio is the one that counts).
        "cpu_ratio": (manifest["frames"] / worker_cpu) / (raw_frames / raw_cpu) if worker_cpu > 0 else float("nan"),
    }


def benchmark_collect(
    env_id: str = "WM-GridWorld-v0",
    steps: int = 400_000,
    workers: int = 2,
    seed: int = 0,
    policy: str = "random",
    env_kwargs: dict | None = None,
    rounds: int = 3,
    verbose: bool = True,
    vectorization: str = "processes",
) -> dict:
    """Measure (a) one env's raw frame rate in this process and (b) ``DataCollector``'s frame rate
    with ``workers`` processes, and their ratio ``collector / (workers x raw)``, in ``rounds`` rounds.

    The collector's time is wall-clock from construction to the last shard on disk: worker start-up,
    imports, env construction and writing the shards are all included. The result's ``ratio`` is the
    median over the rounds (each round's figures are in ``rounds``).
    """
    for label, value in (("steps", steps), ("workers", workers), ("rounds", rounds)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    env_kwargs = dict(env_kwargs or {})
    # The collector's main process writes its manifest with wm_agent.io: like any import of the command
    # itself, that import happens before either clock starts.
    import wm_agent.io  # noqa: F401

    load_before = _load()
    say = print if verbose else (lambda *a, **k: None)
    say(f"benchmark collect {env_id}: policy {policy}, {workers} workers ({vectorization}), {os.cpu_count()} CPUs, "
        f"{rounds} rounds, load average {load_before:.2f} before")
    results = []
    for k in range(rounds):
        r = _collect_round(env_id, env_kwargs, policy, steps, workers, seed, vectorization)
        results.append(r)
        say(f"  round {k + 1}: raw single env {r['raw_fps']:,.0f} frames/s ({r['raw_frames']:,} frames, "
            f"{r['raw_fps_before']:,.0f} before / {r['raw_fps_after']:,.0f} after the collector); "
            f"collector (K={workers}) {r['collector_fps']:,.0f} frames/s ({r['collector_frames']:,} frames, "
            f"{r['collector_shards']} shards, {r['collector_seconds']:.2f} s wall, start-up and disk writes included)")
        # Worker CPU time is known for worker processes only (a vector env's sub-envs do not report it).
        cpu = "" if math.isnan(r["cpu_ratio"]) else (
            f"   (frames per worker CPU-second vs raw: {r['cpu_ratio']:.2f}; workers busy "
            f"{r['collector_worker_cpu_seconds']:.1f} of {workers} x {r['collector_seconds']:.1f} s, main process "
            f"{r['collector_main_cpu_seconds']:.2f} s of CPU)")
        say(f"           ratio collector / ({workers} x raw) = {r['ratio']:.2f}{cpu}; shards "
            f"{r['collector_disk_bytes'] / 1e6:,.1f} MB on disk, the raw frames would be "
            f"{r['raw_frame_bytes'] / 1e9:.2f} GB")
    ratios = [r["ratio"] for r in results]
    median = float(statistics.median(ratios))
    say(f"  ratio collector / ({workers} x raw): median {median:.2f} over {rounds} rounds "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); load average now {_load():.2f}")
    return {
        "env_id": env_id, "policy": policy, "workers": workers, "vectorization": vectorization,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before, "steps_per_round": steps, "rounds": results,
        "ratio": median, "ratio_min": min(ratios), "ratio_max": max(ratios),
        "raw_fps": float(statistics.median(r["raw_fps"] for r in results)),
        "collector_fps": float(statistics.median(r["collector_fps"] for r in results)),
        "load_average_after": _load(),
    }


def _load() -> float:
    """One-minute load average: other processes on the machine skew both rates."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# -- training throughput: our data pipeline + loop against a bare PyTorch loop -----------------------
@dataclass
class BenchmarkTrainConfig:
    """wm-agent benchmark train: VQ-VAE images/s through wm-agent's memory-mapped pipeline vs a bare loop."""

    batch_size: int = field(default=128, metadata={"help": "frames per batch (same for both loops)"})
    images: int = field(default=20_000, metadata={"help": "images each loop trains on"})
    episodes: int = field(default=400, metadata={"help": "GridWorld episodes generated as the dataset"})
    seed: int = field(default=0, metadata={"help": "seed"})
    device: str = field(default="cpu", metadata={"help": "torch device both loops train on: cpu, cuda or auto"})


def benchmark_train(cfg: BenchmarkTrainConfig, verbose: bool = True) -> dict:
    import numpy as np
    import torch

    from wm_agent.config import WorldModelConfig, check_settings
    from wm_agent.data.dataset import EpisodeDataset
    from wm_agent.models.vqvae import frames_to_tensor
    from wm_agent.torch_utils import autocast, resolve_device
    from wm_agent.world_model import WorldModel

    check_settings((cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                   (cfg.images >= 1, f"--images must be >= 1, got {cfg.images}"),
                   (cfg.episodes >= 1, f"--episodes must be >= 1, got {cfg.episodes}"))
    device = resolve_device(cfg.device)
    with temporary_folder("wm-agent-bench-") as tmp:
        DataCollector("WM-GridWorld-v0", tmp, seed=cfg.seed).collect(cfg.episodes, progress=False)
        ds = EpisodeDataset(tmp)
        n_batches = max(cfg.images // cfg.batch_size, 1)

        data = frames_to_tensor(ds.frames(np.arange(min(ds.num_frames, (n_batches + 5) * cfg.batch_size)))).to(device)
        warmup = 5  # first batches pay for allocator and kernel set-up; time neither loop's warm-up

        def bare_loop() -> float:
            """The same model and batch size on a ready-made float tensor already on the device."""
            torch.manual_seed(cfg.seed)
            wm = WorldModel(WorldModelConfig.gridworld(), device=device)
            opt = torch.optim.Adam(wm.vae.parameters(), wm.config.learning_rate)
            wm.vae.train()
            start = None
            for i in range(n_batches + warmup):
                if i == warmup:
                    _wait_for(device)
                    start = time.perf_counter()
                j = (i * cfg.batch_size) % max(len(data) - cfg.batch_size, 1)
                with autocast(device):  # the precision fit_vae trains in (bf16 on a GPU)
                    _, recon, vq = wm.vae(data[j : j + cfg.batch_size])
                opt.zero_grad(set_to_none=True)
                (recon + vq).backward()
                opt.step()
            _wait_for(device)
            return n_batches * cfg.batch_size / (time.perf_counter() - start)

        def our_loop() -> float:
            """wm-agent's fit_vae on shuffled batches gathered from the memory-mapped shards."""
            torch.manual_seed(cfg.seed)
            wm = WorldModel(WorldModelConfig.gridworld(), device=device)
            timer = {}

            def batches(rng):
                # As many passes over the shards as the batches asked for take (one pass may hold fewer).
                k = 0
                while True:
                    for batch in ds.iter_frame_batches(cfg.batch_size, rng, drop_last=True):
                        if k == warmup:
                            timer["start"] = time.perf_counter()
                        if k == n_batches + warmup:
                            return
                        yield batch
                        k += 1

            wm.fit_vae(batches, epochs=1, seed=cfg.seed, progress=False)
            _wait_for(device)
            return n_batches * cfg.batch_size / (time.perf_counter() - timer["start"])

        if ds.num_frames < cfg.batch_size:
            raise ValueError(f"--episodes {cfg.episodes} gave {ds.num_frames} frames, fewer than one batch of "
                             f"{cfg.batch_size}: use more episodes")

        # Alternate the two and keep each one's best, so neither gains from running second (or first).
        bare = ours = 0.0
        for _ in range(2):
            bare = max(bare, bare_loop())
            ours = max(ours, our_loop())
    result = {"bare_images_per_s": bare, "wm_agent_images_per_s": ours, "ratio": ours / bare,
              "batch_size": cfg.batch_size, "images": n_batches * cfg.batch_size,
              "torch_threads": torch.get_num_threads(), "device": str(device)}
    if verbose:
        print(f"VQ-VAE training on {device}, batch {cfg.batch_size}, {result['images']} images, "
              f"{result['torch_threads']} threads:")
        print(f"  bare PyTorch loop (tensor on {device.type}):".ljust(39) + f"{bare:9.0f} images/s")
        print(f"  wm-agent (memory-mapped shards):     {ours:9.0f} images/s")
        print(f"  ratio: {result['ratio']:.3f}")
    return result


# -- dream vs real env ---------------------------------------------------------------------------------
@dataclass
class BenchmarkDreamConfig:
    """wm-agent benchmark dream: batched dream steps/s against the real GridWorld and CarRacing envs."""

    num_envs: int = field(default=1024, metadata={"help": "dreams stepped in one batch"})
    dream_steps: int = field(default=30, metadata={"help": "batched dream steps to time"})
    real_steps: int = field(default=1500, metadata={
        "help": "sets the real envs' timed steps: GridWorld runs 20x this many, CarRacing a fifth (at least 20)"})
    seed: int = field(default=0, metadata={"help": "seed"})
    device: str = field(default="cpu", metadata={"help": "torch device the dreams run on: cpu, cuda or auto"})


def _real_steps_per_s(env_id: str, steps: int, seed: int) -> float:
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def _wait_for(device) -> None:
    """CUDA runs asynchronously: a timer read before the GPU finished would count queued work as done."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dream_steps_per_s(config, num_envs: int, steps: int, seed: int, device) -> float:
    import gymnasium as gym
    import torch

    from wm_agent.world_model import WorldModel

    torch.manual_seed(seed)
    wm = WorldModel(config, env_id=None, device=device)
    wm.start_codes = torch.randint(0, config.num_embeddings, (8, config.latent_grid, config.latent_grid), device=device)
    wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}}
    env = gym.make_vec("WM-Dream-v0", num_envs=num_envs, world_model=wm, max_episode_steps=10**9)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    actions = [env.action_space.sample() for _ in range(steps + 1)]
    env.step(actions[-1])  # warm-up
    start = time.perf_counter()
    for a in actions[:steps]:
        env.step(a)
    _wait_for(device)
    return num_envs * steps / (time.perf_counter() - start)


def benchmark_dream(cfg: BenchmarkDreamConfig, verbose: bool = True) -> dict:
    import torch

    from wm_agent.config import WorldModelConfig, check_settings
    from wm_agent.torch_utils import resolve_device

    check_settings((cfg.num_envs >= 1, f"--num-envs must be >= 1, got {cfg.num_envs}"),
                   (cfg.dream_steps >= 1, f"--dream-steps must be >= 1, got {cfg.dream_steps}"),
                   (cfg.real_steps >= 1, f"--real-steps must be >= 1, got {cfg.real_steps}"))
    device = resolve_device(cfg.device)

    grid = _real_steps_per_s("WM-GridWorld-v0", cfg.real_steps * 20, cfg.seed)
    car = _real_steps_per_s("WM-CarRacing-v0", max(cfg.real_steps // 5, 20), cfg.seed)
    dream_grid = _dream_steps_per_s(WorldModelConfig.gridworld(), cfg.num_envs, cfg.dream_steps, cfg.seed, device)
    dream_car = _dream_steps_per_s(WorldModelConfig.car_racing(), cfg.num_envs, cfg.dream_steps, cfg.seed, device)
    result = {"real_gridworld_steps_per_s": grid, "real_carracing_steps_per_s": car,
              "dream_gridworld_steps_per_s": dream_grid, "dream_carracing_steps_per_s": dream_car,
              "dream_vs_real_gridworld": dream_grid / grid, "dream_vs_real_carracing": dream_car / car,
              "num_envs": cfg.num_envs, "torch_threads": torch.get_num_threads(),
              "device": str(device)}
    if verbose:
        print(f"real WM-GridWorld-v0 (1 env):              {grid:10.0f} steps/s")
        print(f"real WM-CarRacing-v0 (1 env):              {car:10.0f} steps/s")
        print(f"dream, GridWorld model ({cfg.num_envs} envs, latent, {device.type}): {dream_grid:10.0f} steps/s  "
              f"= {dream_grid / grid:.1f}x real GridWorld")
        print(f"dream, CarRacing model ({cfg.num_envs} envs, latent, {device.type}): {dream_car:10.0f} steps/s  "
              f"= {dream_car / car:.1f}x real CarRacing")
    return result


# -- CarRacing's action repeat -------------------------------------------------------------------------
@dataclass
class BenchmarkActionRepeatConfig:
    """wm-agent benchmark action-repeat: WM-CarRacing-v0's frames/s and decisions/s for each action repeat k,
    measured in one run (rounds alternate the k's, so machine load falls on all of them alike)."""

    repeats: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata={
        "help": "action repeats to time"})
    frames: int = field(default=2000, metadata={"help": "physics frames timed per k and round"})
    rounds: int = field(default=3, metadata={"help": "rounds over all k's; the median round is reported"})
    seed: int = field(default=0, metadata={"help": "track and action seed"})


def _repeat_round(k: int, frames: int, seed: int) -> float:
    """Seconds of ``env.step`` (resets not counted) to run ``frames`` frames at action repeat ``k``,
    uniformly random actions."""
    import gymnasium as gym

    env = gym.make("WM-CarRacing-v0", action_repeat=k)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    seconds, done = 0.0, 0
    while done < frames:
        action = env.action_space.sample()
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        seconds += time.perf_counter() - start
        done += k
        if terminated or truncated:
            env.reset()
    env.close()
    return seconds


def benchmark_action_repeat(cfg: BenchmarkActionRepeatConfig, verbose: bool = True) -> dict:
    from wm_agent.config import check_settings

    check_settings((len(cfg.repeats) >= 1 and all(isinstance(k, int) and 1 <= k <= 100 for k in cfg.repeats),
                    f"--repeats must list whole numbers from 1 to 100, got {cfg.repeats}"),
                   (cfg.frames >= 1, f"--frames must be >= 1, got {cfg.frames}"),
                   (cfg.rounds >= 1, f"--rounds must be >= 1, got {cfg.rounds}"))
    seconds: dict[int, list[float]] = {k: [] for k in cfg.repeats}
    for r in range(cfg.rounds):
        for k in cfg.repeats if r % 2 == 0 else cfg.repeats[::-1]:
            seconds[k].append(_repeat_round(k, cfg.frames, cfg.seed + r))
    rows = []
    for k in cfg.repeats:
        frames = math.ceil(cfg.frames / k) * k
        median = statistics.median(seconds[k])
        rows.append({"action_repeat": k, "frames_per_s": frames / median, "decisions_per_s": frames / k / median,
                     "rounds_frames_per_s": [frames / s for s in seconds[k]]})
    result = {"frames": cfg.frames, "rounds": cfg.rounds, "load": _load(), "repeats": rows}
    if verbose:
        base = rows[0]["frames_per_s"]
        print(f"WM-CarRacing-v0, one core, {cfg.frames} frames x {cfg.rounds} rounds per k (median round)")
        for row in rows:
            print(f"k = {row['action_repeat']:3d}: {row['frames_per_s']:7.0f} frames/s  {row['decisions_per_s']:7.0f} "
                  f"decisions/s  ({row['frames_per_s'] / base:.2f}x the frames/s of k = {cfg.repeats[0]})")
    return result
