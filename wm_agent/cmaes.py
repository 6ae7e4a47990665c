"""Training the controller C with CMA-ES (pycma), in the dream or in the real env, one interface.

A generation: ask CMA-ES for ``popsize`` parameter vectors, score each by its mean return over
``rollouts`` episodes, tell CMA-ES the scores. In the dream all popsize x rollouts episodes run as ONE
batch of dreams (one MDN-RNN forward per step for the whole generation). In the real env they run in
worker processes, each with a deadline, so a crashed or hung worker ends the run with a clear error
instead of hanging it. Every generation the CMA-ES state is saved into the world-model checkpoint, so
``--resume`` continues an interrupted run, and the controller saved is a search MEAN: the best
candidate of a generation won a noisy contest (its fitness is the luckiest of ``popsize`` estimates),
while the mean is what the whole population's ranking points to. The best candidate and its score are
kept as well (``train_state["cmaes"]["best_params"]`` / ``["best_fitness"]``).

Which mean: in the dream, every ``select_every`` generations (and after the last) the current mean is
scored on one fixed set of ``select_dreams`` dreams (the same start frames and action draws each time),
and the best-scoring mean so far is the controller. The mean of a search that has found the goal does
not keep improving: scored on a few fresh dreams a generation, it drifts up and down, and the last one
can be worse than one of twenty generations before (docs/benchmarks.md, "GridWorld over seeds and CPU
kernels"). In the real env every episode costs real steps, so there the last mean is the controller.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wm_agent.config import ResumeMismatch, check_settings, doc, refuse_other_settings
from wm_agent.dream_env import DreamBatch, dream_fitness
from wm_agent.rollouts import RolloutWorkers
from wm_agent.latent_env import check_env_fits
from wm_agent.progress import progress_bar
from wm_agent.sampling import rand
from wm_agent.world_model import WorldModel

with warnings.catch_warnings():  # pycma warns that matplotlib (which we do not need) is missing
    warnings.simplefilter("ignore")
    import cma


MAX_SEED = 2**32 - 2  # pycma takes seed + 1, and its seeds are 32-bit


@dataclass
class ControllerTrainConfig:
    """wm-agent train-controller: search the controller's parameters with CMA-ES."""

    world_model: str = doc("world-model checkpoint (trained V and M); the controller is saved into it")
    env: str = doc("real env id, used by --in real and for the episode limit (empty: the checkpoint's env)", "")
    where: str = doc("where candidates are scored: dream (batched, cheap) or real (worker processes)", "dream",
                     flag="--in")
    popsize: int = doc("CMA-ES population size", 64)
    rollouts: int = doc("episodes per candidate (their mean return is its fitness)", 16)
    generations: int = doc("CMA-ES generations to run (in total, counting resumed ones)", 100)
    temperature: float = doc("dream temperature tau (pi ~ softmax(log pi / tau), sigma * sqrt(tau))", 1.0)
    controller: str = doc("controller architecture to train: linear or keypoint (empty: the checkpoint's)", "")
    hidden: int = doc("hidden units of the controller's readout (-1: the checkpoint's)", -1)
    sigma0: float = doc("initial CMA-ES step size", 0.5)
    greedy: bool = doc("take the argmax action instead of sampling from the controller's softmax", False)
    seed: int = doc("seed of CMA-ES, start frames and action sampling", 0)
    workers: int = doc("worker processes for --in real", 2)
    timeout: float = doc("seconds a real-env worker may take for its episodes before the run stops", 300.0)
    max_steps: int = doc("episode step limit (0 = the env's own limit)", 0)
    select_every: int = doc("in the dream: every this many generations (and after the last), score the search's "
                            "mean on --select-dreams fixed dreams and keep the best-scoring mean as the controller "
                            "(0: the last mean)", 10)
    select_dreams: int = doc("dreams each mean is scored on for --select-every (the same dreams every time)", 512)
    resume: bool = doc("continue the CMA-ES run saved in the checkpoint", False)
    overwrite: bool = doc("start a new search even though the checkpoint holds one (its controller is replaced)", False)
    device: str = doc("torch device for the dream: auto, cpu or cuda", "auto")
    progress: bool = doc("show a progress bar and per-generation log", True)


# -- scoring in the real env (worker processes) --------------------------------------------------------
class RealEvaluator(RolloutWorkers):
    """Scores candidates in worker processes (``RolloutWorkers``): each candidate's mean return over the
    generation's seeds, all candidates meeting the same seeds (common random numbers)."""

    def __init__(self, checkpoint: str | WorldModel, env_id: str, workers: int, timeout: float):
        super().__init__(checkpoint, env_id, workers, timeout)
        self.steps = 0  # real env steps taken so far

    def __call__(self, params: np.ndarray, rollouts: int, greedy: bool, max_steps: int,
                 rng: np.random.Generator) -> np.ndarray:
        seeds = [int(s) for s in rng.integers(2**31, size=rollouts)]
        try:
            result = self.run(params, seeds, greedy, max_steps)
        except RuntimeError as exc:
            raise RuntimeError(f"real-env scoring: {exc}; stopped the run (the checkpoint holds the last "
                               "finished generation, or is unchanged if none finished)") from exc.__cause__
        self.steps += int(result["steps"].sum())
        return result["return"].mean(1)


# -- the search ----------------------------------------------------------------------------------------
def _new_es(x0: np.ndarray, sigma: float, cfg: ControllerTrainConfig, stds: np.ndarray | None, seed: int):
    opts = {"popsize": cfg.popsize, "seed": seed + 1, "verbose": -9, "maxiter": 10**9,
            # Separable CMA-ES for large controllers: full covariance is O(n^2) memory, O(n^3) updates.
            "CMA_diagonal": len(x0) > 200}
    if stds is not None:
        opts["CMA_stds"] = stds
    return cma.CMAEvolutionStrategy(x0, sigma, opts)


# Settings a resumed search must share with the saved one: (train_state key, config field, flag).
# --temperature matters only in the dream; older checkpoints lack some keys, which are not checked.
_RESUME_SETTINGS = (("popsize", "popsize", "--popsize"), ("seed", "seed", "--seed"), ("where", "where", "--in"),
                    ("sigma0", "sigma0", "--sigma0"),
                    ("rollouts", "rollouts", "--rollouts"), ("greedy", "greedy", "--greedy"),
                    ("max_steps", "max_steps", "--max-steps"), ("temperature", "temperature", "--temperature"),
                    ("select_every", "select_every", "--select-every"),
                    ("select_dreams", "select_dreams", "--select-dreams"))


def _check_resume_settings(state: dict, cfg: ControllerTrainConfig, wm: WorldModel, path: Path) -> None:
    """Refuse a --resume whose settings differ from the saved search's (one search scored half in the
    dream and half in the real env, say, or with another temperature because a flag was left out)."""
    saved, now = {}, {}
    for key, field, flag in _RESUME_SETTINGS:
        if key in state and not (key == "temperature" and cfg.where != "dream"):
            now[flag] = getattr(cfg, field)
            value = state[key]
            saved[flag] = type(now[flag])(value.item() if hasattr(value, "item") else value)
    refuse_other_settings(path, "cmaes", "the saved CMA-ES search used", saved, now)
    for field, flag, current in (("controller", "--controller", wm.config.controller),
                                 ("hidden", "--hidden", wm.config.controller_hidden)):
        asked = getattr(cfg, field)
        if asked not in ("", -1) and asked != current:
            raise ResumeMismatch(path, f"the saved search trains the checkpoint's controller ({flag} {current}), not "
                                       f"{flag} {asked}", f"resume without {flag}")


def _replayed_es(state: dict, cfg: ControllerTrainConfig, path: Path) -> tuple[cma.CMAEvolutionStrategy, dict]:
    """The saved search rebuilt exactly as it stood: a fresh ES from the saved start, then every saved
    generation's ask() and tell() again with the fitness values told then. pycma's state (covariance,
    evolution paths, step-size path, its random stream) is not a set of tensors a weights-only checkpoint
    can hold, but it is a function of the start, the seed and what was told, so replaying those gives the
    uninterrupted run's state bit for bit, without scoring anything again."""
    start = {key: state[key] for key in ("x0", "sigma0", "stds0", "seed", "popsize")}
    es = _new_es(state["x0"].double().numpy(), float(state["sigma0"]), cfg, state["stds0"].double().numpy(),
                 int(state["seed"]))
    for told in state["told"].double().numpy():
        es.tell(es.ask(), list(told))
    return es, start


def train_controller(cfg: ControllerTrainConfig, wm: WorldModel | None = None) -> dict:
    """Run (or resume) the CMA-ES search; returns the per-generation log."""
    # pycma seeds numpy's global RNG from its seed option and samples from it: the caller's stream is
    # put back afterwards, so a library user's next np.random draw does not depend on cfg.seed.
    numpy_state = np.random.get_state()
    try:
        return _search(cfg, wm)
    finally:
        np.random.set_state(numpy_state)


def _search(cfg: ControllerTrainConfig, wm: WorldModel | None) -> dict:
    from wm_agent.torch_utils import resolve_device

    path = Path(cfg.world_model)
    if cfg.where not in ("dream", "real"):
        raise ValueError(f"--in must be 'dream' or 'real', got {cfg.where!r}")
    check_settings((cfg.popsize >= 2, f"--popsize must be >= 2, got {cfg.popsize}"),
                   (cfg.rollouts >= 1, f"--rollouts must be >= 1, got {cfg.rollouts}"),
                   (cfg.generations >= 0, f"--generations must be >= 0, got {cfg.generations}"),
                   (math.isfinite(cfg.sigma0) and cfg.sigma0 > 0, f"--sigma0 must be > 0 and finite, got {cfg.sigma0}"),
                   (cfg.seed <= MAX_SEED, f"--seed must be <= {MAX_SEED} (pycma's seeds are 32-bit), got {cfg.seed}"),
                   (cfg.temperature >= 0, f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.hidden >= -1, f"--hidden must be >= 0 (or -1: the checkpoint's), got {cfg.hidden}"),
                   (cfg.where == "dream" or cfg.workers >= 1, f"--workers must be >= 1, got {cfg.workers}"),
                   (cfg.select_every >= 0, f"--select-every must be >= 0 (0: the last mean), got {cfg.select_every}"),
                   (cfg.select_dreams >= 1, f"--select-dreams must be >= 1, got {cfg.select_dreams}"),
                   (cfg.where == "dream" or (cfg.timeout > 0 and math.isfinite(cfg.timeout)),
                    f"--timeout must be > 0 and finite, got {cfg.timeout}"))
    # Messages name the model as the caller knows it: a model given in memory is not (yet) the file.
    model_name = str(path) if wm is None else f"the world model given (saved to {path})"
    wm = wm or WorldModel.load(path, resolve_device(cfg.device))
    wm.require_trained("rnn", model_name)
    env_id = wm.real_env_id(cfg.env)
    if cfg.env and not wm._is_own(env_id):  # in the dream too: there it sets the episode limit
        env = wm.make_env(env_id)
        try:
            check_env_fits(env, wm)
        finally:
            env.close()
    limit = wm.episode_limit(env_id)
    check_settings((cfg.max_steps <= limit, (f"--max-steps {cfg.max_steps} is past {env_id}'s episode limit {limit}: "
                                             "no real episode runs that long (0: the limit itself)")))
    max_steps = cfg.max_steps or limit
    if "cmaes" in wm.train_state and not (cfg.resume or cfg.overwrite):
        raise FileExistsError(f"{model_name} already holds a controller search "
                              f"({wm.train_state['cmaes'].get('generation', 0)} "
                              "generations done): pass --resume to continue it or --overwrite to start a new one")
    state = wm.train_state.get("cmaes") if cfg.resume else None
    if state:
        _check_resume_settings(state, cfg, wm, path)
        # In the dream too: the env sets the dreams' episode limit (and the env a real search runs in).
        if state.get("env", env_id) != env_id:
            raise ResumeMismatch(path, f"the saved CMA-ES search ran in {state['env']}, not {env_id}",
                                 f"resume with --env {state['env']}")
    selected = None  # (dream score, generation, params) of the best-scoring mean so far
    if state and "selected_params" in state:
        selected = (float(state["selected_score"]), int(state["selected_generation"]),
                    state["selected_params"].double().numpy())
    if state and "told" in state:
        es, start = _replayed_es(state, cfg, path)
        generation, log = int(state["generation"]), list(state["log"])
        best_x, best_f = state["best_params"].double().numpy(), float(state["best_fitness"])
    elif state:  # saved before the fitness history was kept: the search restarts from its mean and scales
        es = _new_es(state["mean"].double().numpy(), float(state["sigma"]), cfg, state["stds"].double().numpy(),
                     cfg.seed + int(state["generation"]))
        start = None
        generation, log = int(state["generation"]), list(state["log"])
        best_x, best_f = state["best_params"].double().numpy(), float(state["best_fitness"])
    else:
        _set_architecture(wm, cfg)
        seen = _sample_observations(wm, cfg, max_steps)
        wm.controller.fit_normalizer(seen)
        x0 = wm.controller.initial_params(seen)
        start = {"x0": torch.as_tensor(x0), "sigma0": float(cfg.sigma0),
                 "stds0": torch.as_tensor(np.asarray(wm.controller.param_scales(), np.float64)),
                 "seed": cfg.seed, "popsize": cfg.popsize}
        es = _new_es(x0, cfg.sigma0, cfg, start["stds0"].numpy(), cfg.seed)
        generation, log, best_x, best_f = 0, [], x0.copy(), -np.inf
    told = list(state["told"].double().unbind(0)) if state and "told" in state else []  # -fitness, per generation

    evaluator = None
    if cfg.where == "real":
        # The workers get a copy of the model (with the new controller's normaliser), not the checkpoint:
        # the checkpoint changes only when a generation is done, so a search that fails or is stopped
        # before then leaves the saved controller and its search as they were.
        evaluator = RealEvaluator(wm, env_id, cfg.workers, cfg.timeout)
        evaluator.steps = int(log[-1].get("real_env_steps", 0)) if log else 0
    bar = progress_bar(total=cfg.generations, initial=generation,
                       desc=f"CMA-ES in the {'dream' if cfg.where == 'dream' else 'real env'}", unit="gen",
                       disable=not cfg.progress)
    selecting = cfg.where == "dream" and cfg.select_every > 0
    try:
        while generation < cfg.generations:
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, generation])
            xs = np.asarray(es.ask())
            if evaluator:
                fit = evaluator(xs, cfg.rollouts, cfg.greedy, max_steps, rng)
            else:
                fit = dream_fitness(wm, xs, cfg.rollouts, cfg.temperature, max_steps, cfg.greedy, rng)
            es.tell(list(xs), list(-fit))  # pycma minimises
            told.append(torch.as_tensor(-fit, dtype=torch.float64))
            generation += 1
            if fit.max() > best_f:
                best_f, best_x = float(fit.max()), xs[fit.argmax()].copy()
            row = {"generation": generation, "best": float(fit.max()), "mean": float(fit.mean()),
                   "worst": float(fit.min()), "sigma": float(es.sigma),
                   "real_env_steps": evaluator.steps if evaluator else 0}  # cumulative, resumes counted
            if selecting and (generation % cfg.select_every == 0 or generation == cfg.generations):
                score = _selection_score(wm, es.mean, cfg, max_steps)
                row["selection_score"] = score
                if selected is None or score > selected[0]:
                    selected = (score, generation, np.array(es.mean))
            row["seconds"] = time.perf_counter() - t0
            log.append(row)
            # Save every generation: mean/sigma/scales restore the search; the controller is the mean
            # chosen by the selection, or the last one.
            wm.controller.set_flat(selected[2] if selecting and selected is not None else es.mean)
            wm.train_state["cmaes"] = {
                "generation": generation, "mean": torch.as_tensor(es.mean), "sigma": float(es.sigma),
                "stds": torch.as_tensor(np.sqrt(np.maximum(es.sm.variances, 1e-20))),
                "best_params": torch.as_tensor(best_x), "best_fitness": best_f, "log": log,
                "where": cfg.where, "temperature": cfg.temperature, "greedy": cfg.greedy,
                "rollouts": cfg.rollouts, "max_steps": cfg.max_steps, "env": env_id,
                "select_every": cfg.select_every, "select_dreams": cfg.select_dreams,
            }
            if selected is not None:
                wm.train_state["cmaes"].update(selected_score=selected[0], selected_generation=selected[1],
                                               selected_params=torch.as_tensor(selected[2]))
            if start is not None:  # what replays the search exactly on --resume (see _replayed_es)
                wm.train_state["cmaes"].update(start, told=torch.stack(told))
            wm.metrics["controller"] = {"generations": generation, "where": cfg.where, "best_fitness": best_f,
                                        "greedy": cfg.greedy, "rollouts": cfg.rollouts, "popsize": cfg.popsize,
                                        "real_env_steps": log[-1]["real_env_steps"]}
            wm.save(path)
            bar.update(1)
            bar.set_postfix(best=f"{log[-1]['best']:.3f}", mean=f"{log[-1]['mean']:.3f}", sigma=f"{es.sigma:.3f}")
    finally:
        bar.close()
        if evaluator:
            evaluator.close()
    return {"checkpoint": str(path), "generations": generation, "log": log}


def _selection_score(wm: WorldModel, mean: np.ndarray, cfg: ControllerTrainConfig, max_steps: int) -> float:
    """The mean return of the controller ``mean`` over the search's fixed selection dreams: the same start
    frames and action draws at every call (its own seed stream, apart from the generations')."""
    rng = np.random.default_rng([cfg.seed, 2**31])
    return float(dream_fitness(wm, np.asarray(mean)[None], cfg.select_dreams, cfg.temperature, max_steps,
                               cfg.greedy, rng)[0])


def _set_architecture(wm: WorldModel, cfg: ControllerTrainConfig) -> None:
    """A fresh controller of the requested architecture (only when starting a search, never on resume)."""
    changes = {}
    if cfg.controller and cfg.controller != wm.config.controller:
        changes["controller"] = cfg.controller
    if cfg.hidden >= 0 and cfg.hidden != wm.config.controller_hidden:
        changes["controller_hidden"] = cfg.hidden
    if changes:
        wm.config = dataclasses.replace(wm.config, **changes)  # validates, with a clear error
        wm.controller = wm.new_controller(wm.config)


@torch.no_grad()
def _sample_observations(wm: WorldModel, cfg: ControllerTrainConfig, max_steps: int, n: int = 256) -> torch.Tensor:
    """Observations from random-action dreams, to normalise the controller's inputs."""
    batch = DreamBatch(wm, n, cfg.temperature)
    rng = np.random.default_rng(cfg.seed)
    batch.reset(np.arange(n), rng)
    gen = torch.Generator().manual_seed(cfg.seed)
    seen = [batch.observation()]
    space_dim = wm.config.action_dim
    for _ in range(min(max_steps, 20)):
        if wm.config.discrete_actions:
            a = torch.randint(0, space_dim, (n,), generator=gen)
        else:
            lo, hi = wm.controller.low, wm.controller.high
            a = lo + (hi - lo) * rand((n, space_dim), gen, like=lo)
        batch.step(a.to(wm.device), gen)
        seen.append(batch.observation())
    return torch.cat(seen)
