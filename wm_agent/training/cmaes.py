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
kernels"). In the real env every episode costs real steps, so there the last mean is the controller unless
``select_tracks`` is set: then the mean is scored the same way on that many fixed real tracks, whole
episodes, as ``evaluate`` runs them (a noisy search's last mean can lie well below its best one, and a
long real-env run is otherwise picked by hand among saved copies).

The settings ``cfg`` the functions here take are a ``ControllerTrainConfig``
(``wm_agent.commands.train_controller``, which loads the model, checks a resume and calls ``search``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from wm_agent.dream_env import DreamBatch, dream_fitness
from wm_agent.rollouts import RolloutWorkers
from wm_agent.progress import progress_bar
from wm_agent.sampling import rand
from wm_agent.world_model import WorldModel

with warnings.catch_warnings():  # pycma warns that matplotlib (which we do not need) is missing
    warnings.simplefilter("ignore")
    import cma


MAX_SEED = 2**32 - 2  # pycma takes seed + 1, and its seeds are 32-bit

# Settings a resumed search must share with the saved one: (train_state key, config field, flag).
# --temperature matters only in the dream; older checkpoints lack some keys, which are not checked.
RESUME_SETTINGS = (("popsize", "popsize", "--popsize"), ("seed", "seed", "--seed"), ("where", "where", "--in"),
                   ("sigma0", "sigma0", "--sigma0"),
                   ("rollouts", "rollouts", "--rollouts"), ("greedy", "greedy", "--greedy"),
                   ("max_steps", "max_steps", "--max-steps"), ("temperature", "temperature", "--temperature"),
                   ("select_every", "select_every", "--select-every"),
                   ("select_dreams", "select_dreams", "--select-dreams"),
                   ("select_tracks", "select_tracks", "--select-tracks"),
                   ("stop_after_negative", "stop_after_negative", "--stop-after-negative"))


# -- scoring in the real env (worker processes) --------------------------------------------------------
class RealEvaluator(RolloutWorkers):
    """Scores candidates in worker processes (``RolloutWorkers``: local, or Ray tasks with ``backend="ray"``): each
    candidate's mean return over the generation's seeds, all candidates meeting the same seeds (common random
    numbers)."""

    def __init__(self, checkpoint: str | WorldModel, env_id: str, workers: int, timeout: float,
                 backend: str = "local", address: str | None = None, stop_after_negative: int | None = None):
        super().__init__(checkpoint, env_id, workers, timeout, backend, address)
        self.steps = 0  # real env steps taken so far
        self.stop_after_negative = stop_after_negative

    def __call__(self, params: np.ndarray, rollouts: int, greedy: bool, max_steps: int,
                 rng: np.random.Generator) -> np.ndarray:
        seeds = [int(s) for s in rng.integers(2**31, size=rollouts)]
        return self._returns("real-env scoring", params, seeds, greedy, max_steps, self.stop_after_negative).mean(1)

    def selection_score(self, mean: np.ndarray, tracks: int, greedy: bool, max_steps: int, seed: int) -> float:
        """The mean return of the controller ``mean`` over ``tracks`` fixed tracks, whole episodes: the same
        tracks and action draws at every call (a seed stream of their own, apart from the generations')."""
        rng = np.random.default_rng([seed, 2**31])
        seeds = [int(s) for s in rng.integers(2**31, size=tracks)]
        return float(self._returns("real-env selection", np.asarray(mean)[None], seeds, greedy, max_steps).mean())

    def _returns(self, what: str, params: np.ndarray, seeds: list[int], greedy: bool, max_steps: int,
                 stop_after_negative: int | None = None) -> np.ndarray:
        """Returns (P, len(seeds)) of ``run``, its steps counted; a failed worker stops the run with ``what``."""
        try:
            result = self.run(params, seeds, greedy, max_steps, stop_after_negative=stop_after_negative)
        except RuntimeError as exc:
            raise RuntimeError(f"{what}: {exc}; stopped the run (the checkpoint holds the last finished "
                               "generation, or is unchanged if none finished)") from exc.__cause__
        self.steps += int(result["steps"].sum())
        return result["return"]


# -- the search's state --------------------------------------------------------------------------------
def _new_es(x0: np.ndarray, sigma: float, cfg, stds: np.ndarray | None, seed: int):
    opts = {"popsize": cfg.popsize, "seed": seed + 1, "verbose": -9, "maxiter": 10**9,
            # Separable CMA-ES for large controllers: full covariance is O(n^2) memory, O(n^3) updates.
            "CMA_diagonal": len(x0) > 200}
    if stds is not None:
        opts["CMA_stds"] = stds
    return cma.CMAEvolutionStrategy(x0, sigma, opts)


def _replayed_es(state: dict, cfg) -> tuple[cma.CMAEvolutionStrategy, dict]:
    """The saved search rebuilt exactly as it stood: a fresh ES from the saved start, then every saved
    generation's ask() and tell() again with the fitness values told then. pycma's state (covariance,
    evolution paths, step-size path, its random stream) is not a set of tensors a weights-only checkpoint
    can hold, but it is a function of the start, the seed and what was told, so replaying those gives the
    uninterrupted run's state bit for bit, without scoring anything again."""
    start = {key: state[key] for key in ("x0", "sigma0", "stds0", "seed", "popsize", "earlier", "start_score")
             if key in state}
    es = _new_es(state["x0"].double().numpy(), float(state["sigma0"]), cfg, state["stds0"].double().numpy(),
                 int(state["seed"]))
    for told in state["told"].double().numpy():
        es.tell(es.ask(), list(told))
    return es, start


@dataclass
class _Search:
    """A CMA-ES search as it stands between two generations."""

    es: cma.CMAEvolutionStrategy
    start: dict | None  # what replays the search exactly on --resume (see _replayed_es); None: an old save
    generation: int
    log: list[dict]
    best_x: np.ndarray  # the best candidate so far and its fitness
    best_f: float
    told: list[torch.Tensor]  # -fitness, per generation
    selected: tuple[float, int, np.ndarray] | None = None  # (dream score, generation, params) of the best mean
    recent: list[np.ndarray] = field(default_factory=list)  # the means after the last generations, oldest first

    def candidate(self, window: int) -> np.ndarray:
        """What a selection scores: the average of the means after the last ``window`` generations (those
        there are so far; before the first, the start)."""
        means = self.recent[-window:] or [np.array(self.es.mean)]
        return np.mean(means, axis=0)


def _started(wm: WorldModel, cfg, max_steps: int) -> _Search:
    """A new search from the controller's initial parameters, its input normaliser fitted first; with
    ``cfg.warm_start``, from the saved controller as it is (refitting its normaliser would change what its
    parameters mean), each output's steps scaled as the earlier search scaled them."""
    stds0 = np.asarray(wm.controller.param_scales(), np.float64)
    if cfg.warm_start:
        x0 = wm.controller.get_flat()
        # An earlier --output-scale scaled some outputs and their steps alike; a later warm start that went
        # back to the default steps would step those weights far beyond their size.
        earlier = (wm.train_state.get("cmaes") or {}).get("stds0")
        factors = np.ones(wm.controller.out_dim) if earlier is None else wm.controller.step_factors(earlier)
        if cfg.output_scale:  # each output rescaled, and its steps kept in proportion
            x0 = x0 * wm.controller.output_factors(cfg.output_scale)
            factors = factors * np.asarray(cfg.output_scale, np.float64)
        stds0 = stds0 * wm.controller.output_factors(factors)
    else:
        seen = sample_observations(wm, cfg, max_steps)
        wm.controller.fit_normalizer(seen)
        x0 = wm.controller.initial_params(seen)
    start = {"x0": torch.as_tensor(x0), "sigma0": float(cfg.sigma0), "stds0": torch.as_tensor(stds0),
             "seed": cfg.seed, "popsize": cfg.popsize}
    if cfg.warm_start:
        start["earlier"] = earlier_runs(wm.train_state)
    es = _new_es(x0, cfg.sigma0, cfg, start["stds0"].numpy(), cfg.seed)
    return _Search(es, start, 0, [], x0.copy(), -np.inf, [])


def _resumed(state: dict, cfg) -> _Search:
    """The saved search (``train_state["cmaes"]``) as it stood after its last generation."""
    selected = None
    if "selected_params" in state:
        selected = (float(state["selected_score"]), int(state["selected_generation"]),
                    state["selected_params"].double().numpy())
    if "told" in state:
        es, start = _replayed_es(state, cfg)
    else:  # saved before the fitness history was kept: the search restarts from its mean and scales
        es = _new_es(state["mean"].double().numpy(), float(state["sigma"]), cfg, state["stds"].double().numpy(),
                     cfg.seed + int(state["generation"]))
        start = None
    told = list(state["told"].double().unbind(0)) if "told" in state else []
    # Saved before the window was kept: it starts again from the last mean.
    recent = list(state.get("recent_means", state["mean"][None]).double().numpy())
    return _Search(es, start, int(state["generation"]), list(state["log"]), state["best_params"].double().numpy(),
                   float(state["best_fitness"]), told, selected, recent)


def earlier_runs(train_state: dict) -> list[dict]:
    """The controller runs a warm-started search follows, oldest first: each one's algorithm, where it ran, the
    env's keyword arguments (saved since ``--env-kwargs`` could change them; older runs ran with the data's) and
    its per-generation (or per-update) log, so the whole history (real env steps included) stays readable."""
    for algo in ("cmaes", "pg"):
        state = train_state.get(algo)
        if state is not None:
            last = {"algo": algo, "where": state.get("where"), "log": state.get("log", [])}
            if "env_kwargs" in state:
                last["env_kwargs"] = state["env_kwargs"]
            return [*state.get("earlier", []), last]
    return []


# -- the search ----------------------------------------------------------------------------------------
def search(wm: WorldModel, cfg, env_id: str, max_steps: int, state: dict | None,
           save: Callable[[], None]) -> dict:
    """Run the CMA-ES search (from ``state``, the saved one, if given) up to ``cfg.generations``, calling
    ``save()`` after each generation has been recorded in ``wm``; returns the generations done and their log.

    Args:
        wm: the world model; its controller is the search's mean (or the selected one) after each generation.
        cfg: the ``ControllerTrainConfig`` (settings already checked).
        env_id: the real env (its episode limit; the env a real search runs in).
        max_steps: episode step limit.
        state: ``wm.train_state["cmaes"]`` of a search to resume, or None to start one.
        save: writes the checkpoint.

    Returns:
        ``{"generations": int, "log": [per-generation rows]}``.
    """
    # pycma seeds numpy's global RNG from its seed option and samples from it: the caller's stream is
    # put back afterwards, so a library user's next np.random draw does not depend on cfg.seed.
    numpy_state = np.random.get_state()
    try:
        return _search(wm, cfg, env_id, max_steps, state, save)
    finally:
        np.random.set_state(numpy_state)


def _search(wm: WorldModel, cfg, env_id: str, max_steps: int, state: dict | None, save: Callable[[], None]) -> dict:
    run = _resumed(state, cfg) if state else _started(wm, cfg, max_steps)
    evaluator = _real_evaluator(wm, cfg, env_id, run.log) if cfg.where == "real" else None
    bar = progress_bar(total=cfg.generations, initial=run.generation,
                       desc=f"CMA-ES in the {'dream' if cfg.where == 'dream' else 'real env'}", unit="gen",
                       disable=not cfg.progress)
    selecting = cfg.select_every > 0 and (cfg.where == "dream" or cfg.select_tracks > 0)
    if selecting and cfg.warm_start and state is None:
        # The saved controller competes too: a warm start keeps it unless a mean of the new search scores higher.
        start = run.candidate(cfg.select_average)  # before any generation: the saved controller itself
        run.selected = (_selection_score(start, wm, cfg, evaluator, max_steps), 0, start)
        run.start["start_score"] = run.selected[0]  # kept (with the start) for comparison once a mean beats it
    try:
        while run.generation < cfg.generations:
            _generation(run, wm, cfg, evaluator, max_steps, selecting)
            _record(run, wm, cfg, env_id, selecting)
            save()
            bar.update(1)
            bar.set_postfix(best=f"{run.log[-1]['best']:.3f}", mean=f"{run.log[-1]['mean']:.3f}",
                            sigma=f"{run.es.sigma:.3f}")
    finally:
        bar.close()
        if evaluator:
            evaluator.close()
    return {"generations": run.generation, "log": run.log}


def _real_evaluator(wm: WorldModel, cfg, env_id: str, log: list[dict]) -> RealEvaluator:
    # The workers get a copy of the model (with the new controller's normaliser), not the checkpoint:
    # the checkpoint changes only when a generation is done, so a search that fails or is stopped
    # before then leaves the saved controller and its search as they were.
    # On Ray the copy goes into the object store once, for the whole search.
    evaluator = RealEvaluator(wm, env_id, cfg.workers, cfg.timeout, cfg.backend, cfg.ray_address,
                              cfg.stop_after_negative or None)
    evaluator.steps = int(log[-1].get("real_env_steps", 0)) if log else 0
    return evaluator


def _generation(run: _Search, wm: WorldModel, cfg, evaluator: RealEvaluator | None, max_steps: int,
                selecting: bool) -> None:
    """One generation: ask, score, tell; its row appended to the log (with the selection score when due)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, run.generation])
    xs = np.asarray(run.es.ask())
    if evaluator:
        fit = evaluator(xs, cfg.rollouts, cfg.greedy, max_steps, rng)
    else:
        fit = dream_fitness(wm, xs, cfg.rollouts, cfg.temperature, max_steps, cfg.greedy, rng)
    run.es.tell(list(xs), list(-fit))  # pycma minimises
    run.told.append(torch.as_tensor(-fit, dtype=torch.float64))
    run.generation += 1
    run.recent = [*run.recent, np.array(run.es.mean)][-cfg.select_average :]
    if fit.max() > run.best_f:
        run.best_f, run.best_x = float(fit.max()), xs[fit.argmax()].copy()
    row = {"generation": run.generation, "best": float(fit.max()), "mean": float(fit.mean()),
           "worst": float(fit.min()), "sigma": float(run.es.sigma)}
    if selecting and (run.generation % cfg.select_every == 0 or run.generation == cfg.generations):
        candidate = run.candidate(cfg.select_average)
        score = _selection_score(candidate, wm, cfg, evaluator, max_steps)
        row["selection_score"] = score
        if run.selected is None or score > run.selected[0]:
            run.selected = (score, run.generation, candidate)
    row["real_env_steps"] = evaluator.steps if evaluator else 0  # cumulative (selection and resumes counted)
    row["seconds"] = time.perf_counter() - t0
    run.log.append(row)


def _selection_score(mean: np.ndarray, wm: WorldModel, cfg, evaluator: RealEvaluator | None, max_steps: int) -> float:
    if evaluator:
        return evaluator.selection_score(mean, cfg.select_tracks, cfg.greedy, max_steps, cfg.seed)
    return selection_score(wm, mean, cfg, max_steps)


def _record(run: _Search, wm: WorldModel, cfg, env_id: str, selecting: bool) -> None:
    """The search into ``wm``: the controller, ``train_state["cmaes"]`` and ``metrics["controller"]``."""
    # Save every generation: mean/sigma/scales restore the search; the controller is the mean
    # chosen by the selection, or the last one.
    es = run.es
    wm.controller.set_flat(run.selected[2] if selecting and run.selected is not None else es.mean)
    wm.train_state["cmaes"] = {
        "generation": run.generation, "mean": torch.as_tensor(es.mean), "sigma": float(es.sigma),
        "stds": torch.as_tensor(np.sqrt(np.maximum(es.sm.variances, 1e-20))),
        "best_params": torch.as_tensor(run.best_x), "best_fitness": run.best_f, "log": run.log,
        "where": cfg.where, "temperature": cfg.temperature, "greedy": cfg.greedy,
        "rollouts": cfg.rollouts, "max_steps": cfg.max_steps, "env": env_id, "env_kwargs": dict(wm.env_kwargs),
        "select_every": cfg.select_every, "select_dreams": cfg.select_dreams, "select_tracks": cfg.select_tracks,
        "stop_after_negative": cfg.stop_after_negative, "select_average": cfg.select_average,
        "recent_means": torch.as_tensor(np.array(run.recent)),
    }
    if run.selected is not None:
        wm.train_state["cmaes"].update(selected_score=run.selected[0], selected_generation=run.selected[1],
                                       selected_params=torch.as_tensor(run.selected[2]))
    if run.start is not None:  # what replays the search exactly on --resume (see _replayed_es)
        wm.train_state["cmaes"].update(run.start, told=torch.stack(run.told))
    wm.metrics["controller"] = {"generations": run.generation, "where": cfg.where, "best_fitness": run.best_f,
                                "greedy": cfg.greedy, "rollouts": cfg.rollouts, "popsize": cfg.popsize,
                                "real_env_steps": run.log[-1]["real_env_steps"]}


# -- shared with the other controller trainers ---------------------------------------------------------
def selection_score(wm: WorldModel, mean: np.ndarray, cfg, max_steps: int) -> float:
    """The mean return of the controller ``mean`` over the search's fixed selection dreams: the same start
    frames and action draws at every call (its own seed stream, apart from the generations')."""
    rng = np.random.default_rng([cfg.seed, 2**31])
    return float(dream_fitness(wm, np.asarray(mean)[None], cfg.select_dreams, cfg.temperature, max_steps,
                               cfg.greedy, rng)[0])


@torch.no_grad()
def sample_observations(wm: WorldModel, cfg, max_steps: int, n: int = 256) -> torch.Tensor:
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
