"""Evaluate a world model's controller in the REAL env, and measure how faithful its dreams are."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from wm_agent.config import check_settings, doc
from wm_agent.dream_env import dream_fitness
from wm_agent.latent_env import LatentObservation, check_data_fits, check_env_fits
from wm_agent.models.controller import choose_actions, env_action
from wm_agent.progress import progress_bar
from wm_agent.sampling import EpisodeUniforms
from wm_agent.world_model import WorldModel


@dataclass
class EvaluateConfig:
    """wm-agent evaluate: run the checkpoint's controller in the real env and print one JSON object."""

    checkpoint: str = doc("world-model checkpoint with a trained controller")
    env: str = doc("real env id (empty: the env the checkpoint was trained on)", "")
    episodes: int = doc("episodes to run", 100)
    seed: int = doc("reset seed of the first episode; episode i resets with seed + i and samples its actions "
                    "from a stream of its own seeded by seed + i", 0)
    greedy: bool = doc("argmax actions instead of sampling from the controller's softmax", False)
    max_steps: int = doc("stop each episode after this many steps (0 = the env's own limit)", 0)
    workers: int = doc("processes the episodes are split over (the results do not depend on it)", 1)
    progress: bool = doc("show a progress bar", True)


def make_latent_env(env_id: str, wm: WorldModel, **kwargs) -> LatentObservation:
    return LatentObservation(wm.make_env(env_id, **kwargs), wm)


@torch.no_grad()
def run_episode(env: LatentObservation, wm: WorldModel, seed: int, greedy: bool, max_steps: int = 0,
                record: bool = False) -> dict:
    """One episode of the controller in a LatentObservation env, reset with ``seed`` (sampled actions
    from that episode's own stream, as in ``rollout_batch``). With ``record``: also ``frames`` uint8
    (T+1, H, W, 3), ``rewards`` (T,) and ``actions`` (T[, A])."""
    obs, info = env.reset(seed=seed)
    uniforms = EpisodeUniforms([seed])
    frames, rewards, actions = [info["frame"]], [], []
    oracle = info.get("oracle_return")
    while True:
        out = wm.controller.from_obs(torch.as_tensor(obs)[None])
        action = env_action(out, wm.config.discrete_actions, greedy, uniforms=uniforms.at(len(rewards), [0]))
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        if record:
            frames.append(info["frame"])
            actions.append(action)
        if terminated or truncated or (max_steps and len(rewards) >= max_steps):
            break
    result = {"return": float(sum(rewards)), "steps": len(rewards), "success": bool(info.get("success", terminated)),
              "oracle_return": oracle}
    if record:
        result.update(frames=np.stack(frames), rewards=np.array(rewards, np.float32), actions=np.array(actions))
    return result


@torch.no_grad()
def rollout_batch(wm: WorldModel, envs: list[gym.Env], params: torch.Tensor, seeds: list[int], greedy: bool,
                  max_steps: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
    """Every controller in ``params`` (P, n) for an episode from each reset seed, all at once in the REAL env.

    Sampled actions come from each episode's own stream (``EpisodeUniforms``, seeded by its reset seed),
    so an episode's result does not depend on the batch around it, and all controllers meet the same
    numbers on the same seed (common random numbers).

    ``envs`` holds at least P x len(seeds) envs, stepped in lockstep: each step encodes all frames with
    V, runs C and M's LSTM once for the whole batch, so the networks cost one batched call per step
    instead of one call per env. Returns per-episode arrays of shape (P, len(seeds)): ``return``,
    ``steps``, ``success`` and, where the env reports it, ``oracle_return``.
    """
    rollouts = len(seeds)
    n = len(params) * rollouts
    if len(envs) < n:
        raise ValueError(f"need {n} envs for {len(params)} controllers x {rollouts} seeds, got {len(envs)}")
    check_env_fits(envs[0], wm)
    controller, rnn, device = wm.controller, wm.rnn.eval(), wm.device
    frames, oracle = [], np.full(n, np.nan)
    for i in range(n):
        frame, info = envs[i].reset(seed=int(seeds[i % rollouts]))
        frames.append(frame)
        oracle[i] = info.get("oracle_return", np.nan)
    z = wm.encode(np.stack(frames))
    h, c = rnn.initial_state(n, device)
    theta = torch.as_tensor(params, dtype=torch.float32, device=device).repeat_interleave(rollouts, 0)
    returns, steps, success = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    running = np.arange(n)
    uniforms = EpisodeUniforms(seeds)
    bar = progress_bar(total=n, desc="evaluate", unit="ep", disable=not progress)
    t = 0  # steps so far: every running episode is at step t
    while len(running):
        idx = torch.as_tensor(running, device=device)
        hidden = (h[:, idx], c[:, idx])
        out = controller.batched(theta[idx], controller.normalize(torch.cat([z[idx], hidden[0][0]], -1)))
        actions = choose_actions(out, wm.config.discrete_actions, greedy, uniforms=uniforms.at(t, running % rollouts))
        h[:, idx], c[:, idx] = rnn.advance(z[idx, None], actions[:, None], hidden)
        host = actions.cpu().numpy()
        host = host.astype(np.float32) if not wm.config.discrete_actions else host
        finished, frames = [], []
        for j, i in enumerate(running):
            frame, reward, terminated, truncated, info = envs[i].step(host[j] if host.ndim > 1 else int(host[j]))
            returns[i] += float(reward)
            steps[i] += 1
            frames.append(frame)
            if terminated or truncated or (max_steps and steps[i] >= max_steps):
                success[i] = bool(info.get("success", terminated))
                finished.append(j)
        z[idx] = wm.encode(np.stack(frames))
        bar.update(len(finished))
        running = np.delete(running, finished)
        t += 1
        if t % 50 == 0 and len(running):  # a CarRacing episode runs 1000 steps before the count moves
            bar.set_postfix_str(f"step {t}")
    bar.close()
    shape = (len(params), rollouts)
    result = {"return": returns.reshape(shape), "steps": steps.reshape(shape), "success": success.reshape(shape)}
    if not np.isnan(oracle).any():
        result["oracle_return"] = oracle.reshape(shape)
    return result


_worker_state = None  # in a worker process: (checkpoint, env id), the model and the envs, kept between calls


def rollouts_in_worker(checkpoint: str, env_id: str, params: np.ndarray, seeds: list[int], greedy: bool,
                       max_steps: int) -> dict[str, np.ndarray]:
    """Runs in a worker process: ``rollout_batch`` of the controllers ``params`` (P, n) over ``seeds``.
    The model and envs stay loaded for the next call (CMA-ES sends one per generation)."""
    global _worker_state
    torch.set_num_threads(1)
    if _worker_state is None or _worker_state[0] != (checkpoint, env_id):
        _worker_state = ((checkpoint, env_id), WorldModel.load(checkpoint), [])
    _, wm, envs = _worker_state
    envs.extend(wm.make_env(env_id) for _ in range(len(params) * len(seeds) - len(envs)))
    return rollout_batch(wm, envs, torch.as_tensor(params), seeds, greedy, max_steps)


class RolloutWorkers:
    """``rollout_batch`` in spawned worker processes, each keeping its model and envs between calls.
    A worker that raises, dies or overruns ``timeout`` seconds stops the run with a RuntimeError that
    says which, and the workers are stopped.

    Workers load the model from a file: ``checkpoint`` is its path, or a ``WorldModel`` in memory, which
    is saved for them into a temporary folder that ``close()`` removes (so they score exactly that
    model, also one that was changed or never saved, and a checkpoint on disk is left as it is)."""

    def __init__(self, checkpoint: str | WorldModel, env_id: str, workers: int, timeout: float | None = None):
        import concurrent.futures as cf
        import multiprocessing as mp

        from wm_agent.io import temporary_folder
        from wm_agent.workers import watch_parent

        self._snapshot = None
        if isinstance(checkpoint, WorldModel):
            self._snapshot = temporary_folder("wm-agent-workers-")
            path = f"{self._snapshot.name}/world_model.pt"
            checkpoint.save(path)
            checkpoint = path
        self.checkpoint, self.env_id, self.workers, self.timeout = checkpoint, env_id, workers, timeout

        self.pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                           initializer=watch_parent)

    def run(self, params: np.ndarray, seeds: list[int], greedy: bool, max_steps: int,
            on_chunk: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        """Every controller in ``params`` (P, n) for an episode from each seed, as ``rollout_batch`` returns
        them. The episodes are split over the workers by controller (when P > 1) or else by seed; each
        episode draws from its own action stream, so the split changes no result. ``on_chunk(episodes)``
        follows each finished worker's share."""
        import concurrent.futures as cf

        from wm_agent.workers import death_reason, starting_workers

        by_params = len(params) > 1
        n = min(self.workers, len(params) if by_params else len(seeds))
        jobs = ([(chunk, list(seeds)) for chunk in np.array_split(params, n)] if by_params else
                [(params, [int(s) for s in chunk]) for chunk in np.array_split(np.asarray(seeds), n)])
        # The first call starts the workers; Ctrl-C reaches them through close().
        with starting_workers():
            futures = {self.pool.submit(rollouts_in_worker, self.checkpoint, self.env_id, p, s, greedy, max_steps):
                       len(p) * len(s) for p, s in jobs}
        # Private, but a broken pool forgets its processes, and their exit statuses say why it broke.
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        try:
            for future in cf.as_completed(futures, timeout=self.timeout):
                future.result()
                if on_chunk is not None:
                    on_chunk(futures[future])
        except cf.TimeoutError:
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker did not finish within {self.timeout:g} s") from None
        except cf.process.BrokenProcessPool:
            reason = death_reason(processes)  # before close() kills the others
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker died ({reason})") from None
        except Exception as exc:
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:  # Ctrl-C or SIGTERM: the workers ignore SIGINT, so stop them here
            self.close(kill=True)
            raise
        results = [future.result() for future in futures]  # in submission order
        return {key: np.concatenate([r[key] for r in results], axis=0 if by_params else 1) for key in results[0]}

    def close(self, kill: bool = False) -> None:
        if kill:
            for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
                proc.kill()
        # Waited for also after a kill (the killed workers end at once): a pool's manager thread still
        # tearing down when the interpreter exits made its exit hook write to a closed pipe ("Exception
        # ignored ... Bad file descriptor" with a traceback after a clean error message, now and then).
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._snapshot is not None:
            self._snapshot.cleanup()


def evaluate(cfg: EvaluateConfig, wm: WorldModel | None = None) -> dict:
    check_settings((cfg.episodes >= 1, f"--episodes must be >= 1, got {cfg.episodes}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.workers >= 1, f"--workers must be >= 1, got {cfg.workers}"))
    given = wm is not None
    wm = wm or WorldModel.load(cfg.checkpoint)
    env_id = wm.real_env_id(cfg.env)
    seeds = [cfg.seed + i for i in range(cfg.episodes)]
    in_process = cfg.workers == 1 or cfg.episodes == 1
    envs = [wm.make_env(env_id) for _ in range(cfg.episodes if in_process else 1)]
    try:
        check_env_fits(envs[0], wm)  # an error that stops the run comes before advice about it
        wm.warn_if_untrained("this world model" if given else cfg.checkpoint)
        params = wm.controller.params.detach()[None]
        if in_process:
            res = rollout_batch(wm, envs, params, seeds, cfg.greedy, max_steps=cfg.max_steps, progress=cfg.progress)
        else:
            # A model given in memory is the one scored (the file at cfg.checkpoint may differ or not exist).
            workers = RolloutWorkers(wm if given else cfg.checkpoint, env_id, cfg.workers)
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
               "mean_steps": float(res["steps"].mean())}
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


@torch.no_grad()
def vae_quality(wm: WorldModel, frames: np.ndarray) -> dict:
    """Per-pixel reconstruction MSE on [0, 1] images, codebook perplexity and usage over ``frames``."""
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


def eval_dream(cfg: EvalDreamConfig, wm: WorldModel | None = None) -> dict:
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
    if trained_on is not None and same_episodes(trained_on, ds.identity):
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


# -- dream vs real ------------------------------------------------------------------------------------
@torch.no_grad()
def dream_vs_real(wm: WorldModel, env_id: str, episodes: int, seed: int, temperature: float, dream_seed: int = 0
                  ) -> dict[str, float]:
    """Is the dream paying what the real env pays? The controller's mean dream return (``episodes``
    dreams at ``temperature``, scored as the CMA-ES search scores it), and a uniformly random policy's
    mean return in the dream and in the real env on the layouts reset with ``seed .. seed + episodes - 1``.

    The random policy is the controller with all parameters zero (every logit 0: uniform over the
    discrete actions), so both policies run through the same code paths in the dream and the real env.
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
