"""Training the controller C by policy gradient: PPO (clipped objective) with GAE(lambda) and a learned value
baseline, in the batched dream or in real envs.

The policy is the controller itself, the same ``Controller`` (linear or keypoint, on concat(z, h)) that
CMA-ES searches, so ``evaluate``, ``render`` and ``play`` run what this trains unchanged:

- discrete actions: the controller's softmax over its logits (what ``evaluate`` samples from);
- continuous actions (a Box): a Gaussian around the controller's output (the squashed action ``evaluate``
  takes), with one learned log-std per action dimension that does not depend on the state; a sample is
  clipped into the box before the dream or the env gets it (its log-probability is the unclipped
  sample's). The std lives in the training state only: the saved controller acts with the mean.

Its parameters are trained in the units of ``Controller.param_scales`` (the relative step sizes CMA-ES
searches with): Adam moves each parameter by about the learning rate times its scale, so the keypoint
scores, which the controller multiplies by ATTENTION_SCALE, move that much less. The critic is a small
MLP on the controller's normalised inputs.

An update: ``envs`` episodes start afresh (banked start frames in the dream, new reset seeds in the real
env) and run ``horizon`` steps, each ended episode replaced by a new one; then ``epochs`` passes over the
batch in ``minibatches``. In the dream an episode ends by the model's done probability as in
``dream_fitness``: each step's reward counts with the probability that the episode is still running
(``survival``), and ``1 - done probability`` is the step's continuation in the returns and GAE, the
objective CMA-ES's dream fitness scores; the losses weigh each step by its survival (Dreamer's weighting),
and an episode leaves the batch (a new one starts) once its survival is below 1e-3, or at the step
limit. In the real env the done probability is 0 or 1 (terminated or truncated). Episodes still running
at the horizon are bootstrapped from the critic.

Every update draws from its own streams, seeded by (seed, update); the policy, log-std, critic and Adam
state are saved in ``train_state["pg"]`` after every update, so ``--resume`` continues exactly as the
uninterrupted run would have. Selection as CMA-ES's: in the dream, every ``select_every`` updates (and
after the last) the policy is scored on the same fixed ``select_dreams`` dreams (``cmaes.selection_score``)
and the best-scoring one is the saved controller.

The settings ``cfg`` the functions here take are a ``ControllerTrainConfig``
(``wm_agent.commands.train_controller``, which loads the model, checks a resume and calls ``search``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from wm_agent.models.controller import choose_actions
from wm_agent.dream_env import DreamBatch
from wm_agent.latent_env import check_env_fits
from wm_agent.progress import progress_bar
from wm_agent.sampling import randn
from wm_agent.training.cmaes import sample_observations, selection_score
from wm_agent.world_model import WorldModel

# Settings a resumed run must share with the saved one: (train_state key, config field, flag).
RESUME_SETTINGS = (("seed", "seed", "--seed"), ("where", "where", "--in"), ("greedy", "greedy", "--greedy"),
                   ("max_steps", "max_steps", "--max-steps"), ("temperature", "temperature", "--temperature"),
                   ("select_every", "select_every", "--select-every"),
                   ("select_dreams", "select_dreams", "--select-dreams"),
                   ("envs", "envs", "--envs"), ("horizon", "horizon", "--horizon"), ("epochs", "epochs", "--epochs"),
                   ("minibatches", "minibatches", "--minibatches"), ("lr", "lr", "--lr"),
                   ("critic_lr", "critic_lr", "--critic-lr"), ("gamma", "gamma", "--gamma"),
                   ("gae_lambda", "gae_lambda", "--gae-lambda"), ("clip", "clip", "--clip"),
                   ("entropy", "entropy", "--entropy"), ("critic_hidden", "critic_hidden", "--critic-hidden"),
                   ("max_grad_norm", "max_grad_norm", "--max-grad-norm"), ("init_std", "init_std", "--init-std"))

ENDED = 1e-3  # an episode whose survival falls below this has ended (as in dream_fitness)


# -- the policy and its critic -------------------------------------------------------------------------
class Critic(nn.Module):
    """V(s): an MLP with two tanh hidden layers on the controller's normalised inputs."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class Policy(nn.Module):
    """The controller as a stochastic policy: its parameters ``theta = units * scales`` (``param_scales``),
    and for continuous actions a state-independent log-std per action dimension."""

    def __init__(self, wm: WorldModel, theta: np.ndarray, init_std: float):
        super().__init__()
        self.controller, self.discrete = wm.controller, wm.config.discrete_actions
        self.register_buffer("scales", torch.as_tensor(wm.controller.param_scales(), dtype=torch.float32,
                                                       device=wm.device))
        self.units = nn.Parameter(torch.as_tensor(theta, dtype=torch.float32, device=wm.device) / self.scales)
        span = (wm.controller.high - wm.controller.low).clamp_min(1e-6)
        self.log_std = nn.Parameter(torch.log(init_std * span).to(wm.device))

    def theta(self) -> torch.Tensor:
        """The controller's flat parameters."""
        return self.units * self.scales

    def outputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or squashed actions (continuous) for raw observations concat(z, h) (N, in_dim)."""
        theta = self.theta()
        return self.controller.batched(theta.expand(len(obs), -1), self.controller.normalize(obs))

    def sample(self, out: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sampled actions as the policy drew them, the actions the dream or env gets)."""
        if self.discrete:
            actions = choose_actions(out, True, False, generator)
            return actions, actions
        drawn = out + self.log_std.exp() * randn(out.shape, generator, like=out)
        c = self.controller
        return drawn, torch.minimum(torch.maximum(drawn, c.low), c.high)

    def log_prob_entropy(self, out: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            logp = torch.log_softmax(out, -1)
            return logp.gather(-1, actions[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
        var = (2 * self.log_std).exp()
        logp = (-((actions - out) ** 2) / (2 * var) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (self.log_std + 0.5 * math.log(2 * math.pi * math.e)).sum().expand(len(out))
        return logp, entropy


# -- where episodes run --------------------------------------------------------------------------------
class _Dreams:
    """``n`` dreams in one ``DreamBatch``; an ended dream starts again from a banked start frame."""

    def __init__(self, wm: WorldModel, n: int, temperature: float):
        self.batch, self.real_steps = DreamBatch(wm, n, temperature), 0

    def reset(self, index: np.ndarray, rng: np.random.Generator) -> None:
        self.batch.reset(index, rng)

    def observation(self) -> torch.Tensor:
        return self.batch.observation()

    def step(self, actions: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward (N,), done probability (N,))."""
        return self.batch.step(actions, generator)

    def close(self) -> None:
        pass


class _RealEnvs:
    """``n`` real envs stepped in lockstep and seen as the controller sees them (concat(z, h)): each step
    encodes all frames with V and advances M's LSTM once for the batch, as ``evaluate.rollout_batch``."""

    def __init__(self, wm: WorldModel, env_id: str, n: int):
        self.wm, self.envs = wm, [wm.make_env(env_id) for _ in range(n)]
        check_env_fits(self.envs[0], wm)
        self.z = torch.zeros(n, wm.config.z_size, device=wm.device)
        self.hidden = wm.rnn.eval().initial_state(n, wm.device)
        self.real_steps = 0

    @torch.no_grad()
    def reset(self, index: np.ndarray, rng: np.random.Generator) -> None:
        seeds = rng.integers(2**31, size=len(index))
        frames = np.stack([self.envs[i].reset(seed=int(s))[0] for i, s in zip(index, seeds)])
        idx = torch.as_tensor(index, device=self.wm.device)
        self.z[idx] = self.wm.encode(frames)
        self.hidden[0][:, idx] = 0
        self.hidden[1][:, idx] = 0

    def observation(self) -> torch.Tensor:
        return torch.cat([self.z, self.hidden[0][0]], -1)

    @torch.no_grad()
    def step(self, actions: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward (N,), 1.0 where the episode ended (terminated or truncated) else 0.0)."""
        self.hidden = self.wm.rnn.advance(self.z[:, None], actions[:, None], self.hidden)
        host = actions.cpu().numpy()
        frames, rewards, done = [], np.zeros(len(self.envs)), np.zeros(len(self.envs))
        for i, env in enumerate(self.envs):
            action = host[i].astype(np.float32) if host.ndim > 1 else int(host[i])
            frame, rewards[i], terminated, truncated, _ = env.step(action)
            frames.append(frame)
            done[i] = float(terminated or truncated)
        self.real_steps += len(self.envs)
        self.z = self.wm.encode(np.stack(frames))
        device = self.wm.device
        return (torch.as_tensor(rewards, dtype=torch.float32, device=device),
                torch.as_tensor(done, dtype=torch.float32, device=device))

    def close(self) -> None:
        for env in self.envs:
            env.close()


# -- one update's experience ---------------------------------------------------------------------------
@dataclass
class _Batch:
    """``horizon`` steps of ``envs`` episodes, (T, N, ...) each, and the returns of the episodes that ended."""

    obs: torch.Tensor
    drawn: torch.Tensor  # actions as the policy drew them
    logp: torch.Tensor
    value: torch.Tensor
    reward: torch.Tensor
    cont: torch.Tensor  # continuation: 1 - done probability, 0 where the episode ended
    weight: torch.Tensor  # survival before the step
    last_value: torch.Tensor  # V of the observations after the last step (N,)
    episode_returns: list[float]


@torch.no_grad()
def _collect(policy: Policy, critic: Critic, where: _Dreams | _RealEnvs, cfg, max_steps: int,
             rng: np.random.Generator, generator: torch.Generator) -> _Batch:
    """``cfg.envs`` fresh episodes run ``cfg.horizon`` steps under the policy; an episode that ends (survival
    below ENDED, or ``max_steps``) is replaced by a new one. ``mean_return`` in the log is the mean of
    ``episode_returns``: the episodes that ended within the update (those still running are not counted,
    so early on, when few episodes end, it reads high)."""
    n, device = cfg.envs, policy.scales.device
    where.reset(np.arange(n), rng)
    survival, returns = torch.ones(n, device=device), torch.zeros(n, device=device)
    steps = np.zeros(n, dtype=np.int64)
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in ("obs", "drawn", "logp", "value", "reward", "cont",
                                                              "weight")}
    episode_returns = []
    for _ in range(cfg.horizon):
        obs = where.observation()
        out = policy.outputs(obs)
        drawn, actions = policy.sample(out, generator)
        logp, _ = policy.log_prob_entropy(out, drawn)
        value = critic(policy.controller.normalize(obs))
        reward, done_p = where.step(actions, generator)
        weight = survival
        returns += reward * survival
        survival = survival * (1.0 - done_p)
        steps += 1
        ended = (survival < ENDED).cpu().numpy() | (steps >= max_steps)
        cont = (1.0 - done_p) * torch.as_tensor(~ended, dtype=torch.float32, device=device)
        for key, value_t in (("obs", obs), ("drawn", drawn), ("logp", logp), ("value", value), ("reward", reward),
                             ("cont", cont), ("weight", weight)):
            rows[key].append(value_t)
        if ended.any():
            index = np.nonzero(ended)[0]
            episode_returns += returns[torch.as_tensor(index, device=device)].tolist()
            where.reset(index, rng)
            idx = torch.as_tensor(index, device=device)
            survival[idx], returns[idx], steps[index] = 1.0, 0.0, 0
    last_value = critic(policy.controller.normalize(where.observation()))
    return _Batch(*(torch.stack(rows[key]) for key in ("obs", "drawn", "logp", "value", "reward", "cont", "weight")),
                  last_value, episode_returns)


def _advantages(batch: _Batch, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) advantages and the critic's targets (T, N), with each step's continuation as its discount."""
    adv = torch.zeros_like(batch.reward)
    running = torch.zeros_like(batch.last_value)
    next_value = batch.last_value
    for t in reversed(range(len(batch.reward))):
        delta = batch.reward[t] + gamma * batch.cont[t] * next_value - batch.value[t]
        running = delta + gamma * lam * batch.cont[t] * running
        adv[t], next_value = running, batch.value[t]
    return adv, adv + batch.value


# -- the PPO update ------------------------------------------------------------------------------------
def _weighted_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum().clamp_min(1e-8)


def _ppo_update(policy: Policy, critic: Critic, opt: torch.optim.Optimizer, batch: _Batch, cfg,
                generator: torch.Generator) -> dict:
    """``cfg.epochs`` passes of minibatch PPO over the batch; returns the last pass's mean losses."""
    adv, target = _advantages(batch, cfg.gamma, cfg.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  (T, N, ...) -> (T*N, ...)
    obs, drawn, old_logp, weight, adv, target = map(flat, (batch.obs, batch.drawn, batch.logp, batch.weight, adv,
                                                           target))
    mean = _weighted_mean(adv, weight)
    adv = (adv - mean) / _weighted_mean((adv - mean) ** 2, weight).sqrt().clamp_min(1e-8)
    normalized = policy.controller.normalize(obs)
    size = len(obs)
    stats = {}
    for _ in range(cfg.epochs):
        sums = dict.fromkeys(("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"), 0.0)
        for mb in torch.randperm(size, generator=generator).to(obs.device).chunk(cfg.minibatches):
            w = weight[mb]
            logp, entropy = policy.log_prob_entropy(policy.outputs(obs[mb]), drawn[mb])
            log_ratio = logp - old_logp[mb]
            ratio = log_ratio.exp()
            surrogate = torch.minimum(ratio * adv[mb], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv[mb])
            policy_loss = -_weighted_mean(surrogate, w)
            value_loss = 0.5 * _weighted_mean((critic(normalized[mb]) - target[mb]) ** 2, w)
            mean_entropy = _weighted_mean(entropy, w)
            opt.zero_grad(set_to_none=True)
            (policy_loss - cfg.entropy * mean_entropy + value_loss).backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                parts = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": mean_entropy,
                         "approx_kl": _weighted_mean(ratio - 1 - log_ratio, w),
                         "clip_fraction": _weighted_mean(((ratio - 1).abs() > cfg.clip).float(), w)}
            for key, value in parts.items():
                sums[key] += float(value.detach()) / cfg.minibatches
        stats = sums
    return stats


# -- the run's state -----------------------------------------------------------------------------------
@dataclass
class _Run:
    """A policy-gradient run as it stands between two updates."""

    policy: Policy
    critic: Critic
    opt: torch.optim.Optimizer
    update: int
    log: list[dict]
    dream_steps: int  # cumulative, resumes counted: training steps (the selection's not counted)
    real_env_steps: int
    selected: tuple[float, int, np.ndarray] | None = None  # (dream score, update, params) of the best policy


def _networks(wm: WorldModel, cfg, theta: np.ndarray) -> tuple[Policy, Critic, torch.optim.Optimizer]:
    policy = Policy(wm, theta, cfg.init_std)
    with torch.random.fork_rng(devices=[]):  # the critic's initial weights from the seed, the caller's stream kept
        torch.manual_seed(cfg.seed)
        critic = Critic(wm.controller.features, cfg.critic_hidden).to(wm.device)
    opt = torch.optim.Adam([{"params": list(policy.parameters()), "lr": cfg.lr},
                            {"params": list(critic.parameters()), "lr": cfg.critic_lr}])
    return policy, critic, opt


def _started(wm: WorldModel, cfg, max_steps: int) -> _Run:
    """A new run from the controller's initial parameters (as CMA-ES starts), its input normaliser fitted first."""
    seen = sample_observations(wm, cfg, max_steps)
    wm.controller.fit_normalizer(seen)
    return _Run(*_networks(wm, cfg, wm.controller.initial_params(seen)), 0, [], 0, 0)


def _resumed(wm: WorldModel, cfg, state: dict) -> _Run:
    """The saved run (``train_state["pg"]``) as it stood after its last update."""
    policy, critic, opt = _networks(wm, cfg, np.zeros(wm.controller.num_params))
    with torch.no_grad():
        policy.units.copy_(state["units"])
        policy.log_std.copy_(state["log_std"])
    critic.load_state_dict(state["critic"])
    opt.load_state_dict(state["optimizer"])
    selected = None
    if "selected_params" in state:
        selected = (float(state["selected_score"]), int(state["selected_update"]),
                    state["selected_params"].double().numpy())
    return _Run(policy, critic, opt, int(state["update"]), list(state["log"]), int(state["dream_steps"]),
                int(state["real_env_steps"]), selected)


# -- the run -------------------------------------------------------------------------------------------
def search(wm: WorldModel, cfg, env_id: str, max_steps: int, state: dict | None,
           save: Callable[[], None]) -> dict:
    """Train the controller by PPO (from ``state``, the saved run, if given) up to ``cfg.updates`` updates,
    calling ``save()`` after each update has been recorded in ``wm``.

    Args:
        wm: the world model; its controller is the selected (or the last) policy after each update.
        cfg: the ``ControllerTrainConfig`` (settings already checked).
        env_id: the real env (its episode limit; the env a real run steps).
        max_steps: episode step limit.
        state: ``wm.train_state["pg"]`` of a run to resume, or None to start one.
        save: writes the checkpoint.

    Returns:
        ``{"updates": int, "dream_return": the kept controller's selection score (None without selection),
        "log": [per-update rows]}``.
    """
    run = _resumed(wm, cfg, state) if state else _started(wm, cfg, max_steps)
    where = _Dreams(wm, cfg.envs, cfg.temperature) if cfg.where == "dream" else _RealEnvs(wm, env_id, cfg.envs)
    selecting = cfg.where == "dream" and cfg.select_every > 0
    bar = progress_bar(total=cfg.updates, initial=run.update,
                       desc=f"PPO in the {'dream' if cfg.where == 'dream' else 'real env'}", unit="update",
                       disable=not cfg.progress)
    try:
        while run.update < cfg.updates:
            _one_update(run, wm, cfg, where, max_steps, selecting)
            _record(run, wm, cfg, env_id, selecting)
            save()
            bar.update(1)
            row = run.log[-1]
            bar.set_postfix(ret=f"{row['mean_return']:.3f}", ent=f"{row['entropy']:.3f}",
                            **({"sel": f"{row['selection_score']:.3f}"} if "selection_score" in row else {}))
    finally:
        bar.close()
        where.close()
    return {"updates": run.update, "dream_return": run.selected[0] if selecting and run.selected else None,
            "log": run.log}


def _one_update(run: _Run, wm: WorldModel, cfg, where: _Dreams | _RealEnvs, max_steps: int, selecting: bool) -> None:
    """Collect a batch, run the PPO epochs on it, and append the update's row to the log (with the
    selection score when due)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, run.update])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    wm.rnn.eval()
    steps_before = where.real_steps
    batch = _collect(run.policy, run.critic, where, cfg, max_steps, rng, generator)
    stats = _ppo_update(run.policy, run.critic, run.opt, batch, cfg, generator)
    run.update += 1
    if cfg.where == "dream":
        run.dream_steps += cfg.envs * cfg.horizon
    run.real_env_steps += where.real_steps - steps_before
    returns = batch.episode_returns
    row = {"update": run.update, "mean_return": float(np.mean(returns)) if returns else float("nan"),
           "episodes": len(returns), **stats, "dream_steps": run.dream_steps, "real_env_steps": run.real_env_steps}
    if not wm.config.discrete_actions:
        row["std"] = run.policy.log_std.exp().tolist()
    if selecting and (run.update % cfg.select_every == 0 or run.update == cfg.updates):
        theta = run.policy.theta().detach().double().cpu().numpy()
        score = selection_score(wm, theta, cfg, max_steps)
        row["selection_score"] = score
        if run.selected is None or score > run.selected[0]:
            run.selected = (score, run.update, theta)
    row["seconds"] = time.perf_counter() - t0
    run.log.append(row)


def _record(run: _Run, wm: WorldModel, cfg, env_id: str, selecting: bool) -> None:
    """The run into ``wm``: the controller, ``train_state["pg"]`` and ``metrics["controller"]``."""
    theta = run.policy.theta().detach().double().cpu().numpy()
    wm.controller.set_flat(run.selected[2] if selecting and run.selected is not None else theta)
    state = {"update": run.update, "units": run.policy.units.detach().cpu().clone(),
             "log_std": run.policy.log_std.detach().cpu().clone(),
             "critic": {k: v.detach().cpu().clone() for k, v in run.critic.state_dict().items()},
             "optimizer": run.opt.state_dict(), "log": run.log, "dream_steps": run.dream_steps,
             "real_env_steps": run.real_env_steps, "env": env_id, "env_kwargs": dict(wm.env_kwargs)}
    state.update({key: getattr(cfg, field) for key, field, _ in RESUME_SETTINGS})
    if run.selected is not None:
        state.update(selected_score=run.selected[0], selected_update=run.selected[1],
                     selected_params=torch.as_tensor(run.selected[2]))
    wm.train_state["pg"] = state
    wm.metrics["controller"] = {"algo": "pg", "updates": run.update, "where": cfg.where, "greedy": cfg.greedy,
                                "envs": cfg.envs, "horizon": cfg.horizon, "dream_steps": run.dream_steps,
                                "real_env_steps": run.real_env_steps,
                                "selection_score": run.selected[0] if run.selected else None}
