"""wm-agent train-controller: its settings (``ControllerTrainConfig``) and the job, which loads the world model,
checks the settings (and a resumed run's against the saved one), and hands the model to the search
(``wm_agent.training.cmaes``), which saves the checkpoint after every generation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from wm_agent.config import ResumeMismatch, check_settings, doc, refuse_other_settings
from wm_agent.latent_env import check_env_fits
from wm_agent.training import cmaes
from wm_agent.world_model import WorldModel


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


def train_controller(cfg: ControllerTrainConfig, wm: WorldModel | None = None) -> dict:
    """Run (or resume) the CMA-ES search; returns the per-generation log.

    Args:
        cfg: the settings; ``cfg.world_model`` is the checkpoint the controller is saved into.
        wm: the world model to train, if already in memory (else it is loaded from ``cfg.world_model``).

    Returns:
        ``{"checkpoint": path, "generations": int, "log": [per-generation rows]}``.
    """
    from wm_agent.train import resolve_device

    path = Path(cfg.world_model)
    _check_settings(cfg)
    # Messages name the model as the caller knows it: a model given in memory is not (yet) the file.
    model_name = str(path) if wm is None else f"the world model given (saved to {path})"
    wm = wm or WorldModel.load(path, resolve_device(cfg.device))
    wm.require_trained("rnn", model_name)
    env_id = _checked_env(wm, cfg)
    limit = wm.episode_limit(env_id)
    check_settings((cfg.max_steps <= limit, (f"--max-steps {cfg.max_steps} is past {env_id}'s episode limit {limit}: "
                                             "no real episode runs that long (0: the limit itself)")))
    max_steps = cfg.max_steps or limit
    state = _saved_search(wm, cfg, path, model_name, env_id)
    if not state:
        _set_architecture(wm, cfg)
    result = cmaes.search(wm, cfg, env_id, max_steps, state, save=lambda: wm.save(path))
    return {"checkpoint": str(path), **result}


def _check_settings(cfg: ControllerTrainConfig) -> None:
    """Refuse settings that would break the search, before anything is loaded."""
    if cfg.where not in ("dream", "real"):
        raise ValueError(f"--in must be 'dream' or 'real', got {cfg.where!r}")
    check_settings((cfg.popsize >= 2, f"--popsize must be >= 2, got {cfg.popsize}"),
                   (cfg.rollouts >= 1, f"--rollouts must be >= 1, got {cfg.rollouts}"),
                   (cfg.generations >= 0, f"--generations must be >= 0, got {cfg.generations}"),
                   (math.isfinite(cfg.sigma0) and cfg.sigma0 > 0, f"--sigma0 must be > 0 and finite, got {cfg.sigma0}"),
                   (cfg.seed <= cmaes.MAX_SEED,
                    f"--seed must be <= {cmaes.MAX_SEED} (pycma's seeds are 32-bit), got {cfg.seed}"),
                   (cfg.temperature >= 0, f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.hidden >= -1, f"--hidden must be >= 0 (or -1: the checkpoint's), got {cfg.hidden}"),
                   (cfg.where == "dream" or cfg.workers >= 1, f"--workers must be >= 1, got {cfg.workers}"),
                   (cfg.select_every >= 0, f"--select-every must be >= 0 (0: the last mean), got {cfg.select_every}"),
                   (cfg.select_dreams >= 1, f"--select-dreams must be >= 1, got {cfg.select_dreams}"),
                   (cfg.where == "dream" or (cfg.timeout > 0 and math.isfinite(cfg.timeout)),
                    f"--timeout must be > 0 and finite, got {cfg.timeout}"))


def _checked_env(wm: WorldModel, cfg: ControllerTrainConfig) -> str:
    """The real env's id (``--env``, or the checkpoint's); another env than the checkpoint's must fit the model."""
    env_id = wm.real_env_id(cfg.env)
    if cfg.env and not wm._is_own(env_id):  # in the dream too: there it sets the episode limit
        env = wm.make_env(env_id)
        try:
            check_env_fits(env, wm)
        finally:
            env.close()
    return env_id


def _saved_search(wm: WorldModel, cfg: ControllerTrainConfig, path: Path, model_name: str, env_id: str) -> dict | None:
    """The saved search to continue (with --resume), checked against the settings asked for; None to start one."""
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
    return state


def _check_resume_settings(state: dict, cfg: ControllerTrainConfig, wm: WorldModel, path: Path) -> None:
    """Refuse a --resume whose settings differ from the saved search's (one search scored half in the
    dream and half in the real env, say, or with another temperature because a flag was left out)."""
    saved, now = {}, {}
    for key, field, flag in cmaes.RESUME_SETTINGS:
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
