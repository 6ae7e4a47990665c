"""Episode loops of a world model's controller in the REAL env, and the worker processes that run them.

``run_episode`` plays one episode in a ``LatentObservation`` env (recorded for a video if asked);
``rollout_batch`` plays many controllers x reset seeds at once in lockstep, with one batched network
call per step; ``RolloutWorkers`` splits a batch over worker processes (a pool of ``wm_agent.backends``: local
processes or a Ray cluster). CMA-ES in the real env, ``wm-agent evaluate`` and the recorded episodes of
``wm-agent render`` all run here.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from wm_agent.backends import make_pool
from wm_agent.models.controller import choose_actions, env_action
from wm_agent.latent_env import LatentObservation, check_env_fits
from wm_agent.progress import progress_bar
from wm_agent.sampling import EpisodeUniforms
from wm_agent.workers import WorkerDied, WorkerTimeout, worker_file
from wm_agent.world_model import WorldModel


def make_latent_env(env_id: str, wm: WorldModel, **kwargs) -> LatentObservation:
    """The real env ``env_id`` seen through ``wm``.

    Args:
        env_id: the real env.
        wm: the world model.
        **kwargs: passed on to ``wm.make_env(env_id, **kwargs)``, which makes the env.

    Returns:
        A ``LatentObservation`` whose observations are the controller's inputs.
    """
    return LatentObservation(wm.make_env(env_id, **kwargs), wm)


@torch.no_grad()
def run_episode(env: LatentObservation, wm: WorldModel, seed: int, greedy: bool, max_steps: int = 0,
                record: bool = False, observe: bool = False,
                on_step: Callable[[gym.Env, float], None] | None = None) -> dict:
    """One episode of the controller in a LatentObservation env.

    Args:
        env: the ``LatentObservation`` env.
        wm: the world model whose controller acts.
        seed: the reset seed (sampled actions come from that episode's own stream, as in ``rollout_batch``).
        greedy: whether the controller acts greedily instead of sampling.
        max_steps: steps at most (0: no cap but the env's).
        record: whether to record the episode.
        observe: whether to keep the controller's inputs.
        on_step: called after every step with the env and the step's reward, to read what the observation
            leaves out (a CarRacing benchmark reads the car's physics there).

    Returns:
        ``return``, ``steps``, ``success`` and ``oracle_return``; with ``record``: also ``frames`` uint8
        (T+1, H, W, 3), ``rewards`` (T,) and ``actions`` (T[, A]); with ``observe``: ``observations`` (T, z+h),
        what the controller acted on at each step.
    """
    obs, info = env.reset(seed=seed)
    uniforms = EpisodeUniforms([seed])
    frames, rewards, actions, seen = [info["frame"]], [], [], []
    oracle = info.get("oracle_return")
    while True:
        if observe:
            seen.append(obs)
        out = wm.controller.from_obs(torch.as_tensor(obs)[None])
        action = env_action(out, wm.config.discrete_actions, greedy, uniforms=uniforms.at(len(rewards), [0]))
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        if on_step is not None:
            on_step(env, float(reward))
        if record:
            frames.append(info["frame"])
            actions.append(action)
        if terminated or truncated or (max_steps and len(rewards) >= max_steps):
            break
    result = {"return": float(sum(rewards)), "steps": len(rewards), "success": bool(info.get("success", terminated)),
              "oracle_return": oracle}
    if record:
        result.update(frames=np.stack(frames), rewards=np.array(rewards, np.float32), actions=np.array(actions))
    if observe:
        result["observations"] = np.stack(seen)
    return result


def driven_observations(wm: WorldModel, env_id: str, seeds: list[int], max_steps: int = 0) -> torch.Tensor:
    """The controller's inputs along its own real episodes, one per reset seed, in this process.

    Args:
        wm: the world model whose controller drives.
        env_id: the real env.
        seeds: reset seeds, one episode each.
        max_steps: steps per episode at most (0: the env's limit).

    Returns:
        (sum of the episodes' steps, z+h) float32 observations.
    """
    env = make_latent_env(env_id, wm)
    try:
        seen = [run_episode(env, wm, seed, greedy=False, max_steps=max_steps, observe=True)["observations"]
                for seed in seeds]
    finally:
        env.close()
    return torch.as_tensor(np.concatenate(seen), dtype=torch.float32)


@torch.no_grad()
def rollout_batch(wm: WorldModel, envs: list[gym.Env], params: torch.Tensor, seeds: list[int], greedy: bool,
                  max_steps: int = 0, progress: bool = False, stop_after_negative: int | None = None
                  ) -> dict[str, np.ndarray]:
    """Every controller in ``params`` (P, n) for an episode from each reset seed, all at once in the REAL env.

    Sampled actions come from each episode's own stream (``EpisodeUniforms``, seeded by its reset seed),
    so an episode's random numbers do not depend on the batch around it, and all controllers meet the same
    numbers on the same seed (common random numbers). Its arithmetic can: a batched forward pass rounds
    differently from a smaller one, which a discrete policy hardly ever notices but CarRacing's physics
    amplify, so a continuous-control episode's return can move slightly with the batch it ran in.

    ``envs`` holds at least P x len(seeds) envs, stepped in lockstep: each step encodes all frames with
    V, runs C and M's LSTM once for the whole batch, so the networks cost one batched call per step
    instead of one call per env.

    Args:
        wm: the world model.
        envs: at least P x len(seeds) real envs, stepped in lockstep.
        params: (P, n) controller parameters, one controller a row.
        seeds: the reset seeds.
        greedy: whether the controllers act greedily instead of sampling.
        max_steps: steps per episode at most (0: no cap but the env's).
        stop_after_negative: end an episode after this many steps in a row with a negative reward (None:
            never). For training only: the paper's successors cut hopeless CarRacing episodes this way, while
            an evaluation runs whole episodes.
        progress: whether to show progress.

    Returns:
        Per-episode arrays of shape (P, len(seeds)): ``return``, ``steps``, ``success`` and, where the env
        reports it, ``oracle_return``.

    Raises:
        ValueError: for too few envs, or envs that do not fit the world model.
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
    negative_run = np.zeros(n, dtype=np.int64)  # steps in a row with a negative reward
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
            negative_run[i] = negative_run[i] + 1 if reward < 0 else 0
            frames.append(frame)
            if (terminated or truncated or (max_steps and steps[i] >= max_steps)
                    or (stop_after_negative and negative_run[i] >= stop_after_negative)):
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


_worker_state = None  # in a worker process: (model, env id), the model and the envs, kept between calls


def rollouts_in_worker(model, env_id: str, params: np.ndarray, seeds: list[int], greedy: bool,
                       max_steps: int, stop_after_negative: int | None = None) -> dict[str, np.ndarray]:
    """Runs in a worker process: ``rollout_batch`` of the controllers ``params`` (P, n) over ``seeds``.

    The model and envs stay loaded for the next call (CMA-ES sends one per generation).

    Args:
        model: the checkpoint as the pool shared it (``share_file``: its path, or a Ray object).
        env_id: the real env.
        params: (P, n) controller parameters.
        seeds: the reset seeds.
        greedy, max_steps, stop_after_negative: as ``rollout_batch``'s.

    Returns:
        What ``rollout_batch`` returns.
    """
    global _worker_state
    torch.set_num_threads(1)
    if _worker_state is None or _worker_state[0] != (model, env_id):
        with worker_file(model) as path:
            _worker_state = ((model, env_id), WorldModel.load(path), [])
    _, wm, envs = _worker_state
    envs.extend(wm.make_env(env_id) for _ in range(len(params) * len(seeds) - len(envs)))
    return rollout_batch(wm, envs, torch.as_tensor(params), seeds, greedy, max_steps,
                         stop_after_negative=stop_after_negative)


class RolloutWorkers:
    """``rollout_batch`` in spawned worker processes, each keeping its model and envs between calls.
    A worker that raises, dies or overruns ``timeout`` seconds stops the run with a RuntimeError that
    says which, and the workers are stopped.

    Workers load the model from a file: ``checkpoint`` is its path, or a ``WorldModel`` in memory, which
    is saved for them into a temporary folder that ``close()`` removes (so they score exactly that
    model, also one that was changed or never saved, and a checkpoint on disk is left as it is).

    ``backend`` picks the pool (``wm_agent.backends.make_pool``): ``"local"`` worker processes, or ``"ray"``:
    Ray tasks on the cluster at ``address``, the file put into Ray's object store once (``share_file``) for
    every worker on any machine to load once, and a task whose worker was lost run again (Ray's retries).
    The results are the same either way."""

    def __init__(self, checkpoint: str | WorldModel, env_id: str, workers: int, timeout: float | None = None,
                 backend: str = "local", address: str | None = None):
        from wm_agent.io import temporary_folder

        self._snapshot = None
        if isinstance(checkpoint, WorldModel):
            self._snapshot = temporary_folder("wm-agent-workers-")
            path = f"{self._snapshot.name}/world_model.pt"
            checkpoint.save(path)
            checkpoint = path
        self.checkpoint, self.env_id, self.workers, self.timeout = checkpoint, env_id, workers, timeout
        try:
            self.pool = make_pool(backend, workers, address=address, context=mp.get_context("spawn"))
        except BaseException:
            if self._snapshot is not None:
                self._snapshot.cleanup()
            raise
        try:
            self.model = self.pool.share_file(checkpoint)  # a path, or Ray's one copy of the file
        except BaseException:
            self.close(kill=True)
            raise

    def run(self, params: np.ndarray, seeds: list[int], greedy: bool, max_steps: int,
            on_chunk: Callable[[int], None] | None = None, stop_after_negative: int | None = None
            ) -> dict[str, np.ndarray]:
        """Every controller in ``params`` (P, n) for an episode from each seed, as ``rollout_batch`` returns
        them. The episodes are split over the workers by controller (when P > 1) or else by seed; each
        episode draws from its own action stream, so the split changes no random number (float rounding
        can still differ with the batch: see ``rollout_batch``).

        Args:
            params: (P, n) controller parameters.
            seeds: the reset seeds.
            greedy, max_steps, stop_after_negative: as ``rollout_batch``'s.
            on_chunk: ``on_chunk(episodes)`` follows each finished worker's share.

        Returns:
            Per-episode arrays of shape (P, len(seeds)), as ``rollout_batch`` returns them.

        Raises:
            RuntimeError: when a worker raises, dies or overruns ``timeout`` (the workers are then stopped).
        """
        by_params = len(params) > 1
        n = min(self.workers, len(params) if by_params else len(seeds))
        jobs = ([(chunk, list(seeds)) for chunk in np.array_split(params, n)] if by_params else
                [(params, [int(s) for s in chunk]) for chunk in np.array_split(np.asarray(seeds), n)])
        # The first call starts the workers; Ctrl-C reaches them through close().
        tasks = self.pool.submit_all(rollouts_in_worker,
                                     [(self.model, self.env_id, p, s, greedy, max_steps, stop_after_negative)
                                      for p, s in jobs])
        episodes = {task: len(p) * len(s) for task, (p, s) in zip(tasks, jobs)}
        on_result = None if on_chunk is None else (lambda task, _: on_chunk(episodes[task]))
        try:
            results = self.pool.results(tasks, timeout=self.timeout, on_result=on_result)  # in submission order
        except WorkerTimeout:
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker did not finish within {self.timeout:g} s") from None
        except WorkerDied as exc:  # its reason was read before close() kills the others
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker died ({exc.reason})") from None
        except Exception as exc:
            self.close(kill=True)
            raise RuntimeError(f"a rollout worker failed: {type(exc).__name__}: {exc}") from exc
        except BaseException:  # Ctrl-C or SIGTERM: the workers ignore SIGINT, so stop them here
            self.close(kill=True)
            raise
        return {key: np.concatenate([r[key] for r in results], axis=0 if by_params else 1) for key in results[0]}

    def close(self, kill: bool = False) -> None:
        """Stop the workers and remove the temporary copy of an in-memory model.

        Args:
            kill: stop them at once, else after their running tasks.
        """
        if kill:
            self.pool.kill()
        else:
            self.pool.close()
        if self._snapshot is not None:
            self._snapshot.cleanup()
