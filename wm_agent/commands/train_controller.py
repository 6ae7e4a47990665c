"""wm-agent train-controller: its settings (``ControllerTrainConfig``) and the job, which loads the world model,
checks the settings (and a resumed run's against the saved one), and hands the model to the training
algorithm (``wm_agent.training.cmaes`` or ``wm_agent.training.pg``), which saves the checkpoint after every
generation or update."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wm_agent.backends import BACKEND_HELP, BACKENDS, RAY_ADDRESS_HELP, Backend
from wm_agent.config import SQUASHES, ResumeMismatch, check_settings, doc, refuse_other_settings
from wm_agent.latent_env import check_env_fits
from wm_agent.training import cmaes, pg
from wm_agent.world_model import WorldModel


@dataclass
class ControllerTrainConfig:
    """wm-agent train-controller: train the controller by CMA-ES (--algo cmaes, the paper's evolution strategy) or
    policy gradient (--algo pg: PPO with a learned value baseline), in the dream or the real env. Options marked
    "cmaes only" or "pg only" are refused with the other --algo unless left at their defaults."""

    world_model: str = doc("world-model checkpoint (trained V and M); the controller is saved into it")
    env: str | None = doc("real env id, used by --in real and for the episode limit (default: the checkpoint's env)",
                          None)
    env_kwargs: dict | None = doc("--in real: gym.make keyword arguments of the real env, each replacing the one the "
                                  "checkpoint's data was collected with, saved in the checkpoint (so evaluate, render "
                                  "and --resume use them too); e.g. '{\"action_repeat\": 3}' on WM-CarRacing-v0: the "
                                  "controller decides every 3 frames, while M keeps the dynamics it learnt at the "
                                  "data's repeat (default: the checkpoint's)", None)
    where: str = doc("where the controller is trained: dream (batched, cheap) or real (cmaes: candidates scored in "
                     "worker processes; pg: real envs in this process)", "dream", flag="--in")
    algo: str = doc("training algorithm: cmaes (evolution strategy over whole episodes) or pg (policy gradient: "
                    "PPO actor-critic on single steps)", "cmaes")
    popsize: int = doc("cmaes only: CMA-ES population size", 64)
    rollouts: int = doc("cmaes only: episodes per candidate (their mean return is its fitness)", 16)
    generations: int = doc("cmaes only: CMA-ES generations to run (in total, counting resumed ones)", 100)
    temperature: float = doc("dream temperature tau (pi ~ softmax(log pi / tau), sigma * sqrt(tau))", 1.0)
    controller: str | None = doc("controller architecture to train: linear or keypoint (default: the checkpoint's)",
                                 None)
    hidden: int | None = doc("hidden units of the controller's readout (default: the checkpoint's)", None)
    pca: int | None = doc("linear controller: how many principal directions of its standardised input (z, h) it "
                          "reads, whitened (0: all of it, the paper's C; default: the checkpoint's). With --warm-start "
                          "the saved linear controller is carried over onto them, fitted on real episodes it drives "
                          "(one already on principal directions has them refitted; --pca 0 spreads it back over all "
                          "of (z, h))",
                          None)
    squash: tuple[str, ...] | None = doc("continuous actions: how the controller's tanh output maps onto each "
                                         "action's bounds, one of " + " / ".join(SQUASHES) + " per action (the world "
                                         "model's action_squash; default: the checkpoint's). With --warm-start the "
                                         "saved weights are kept and read through the new mapping", None)
    sigma0: float = doc("cmaes only: initial CMA-ES step size", 0.5)
    greedy: bool = doc("take the argmax action instead of sampling from the controller's softmax (pg: only in "
                       "the selection dreams; training samples)", False)
    seed: int = doc("seed of the search (CMA-ES or pg), start frames and action sampling", 0)
    workers: int = doc("cmaes only: worker processes for --in real (pg runs its real envs in this process)", 2)
    timeout: float = doc("cmaes only: seconds a real-env worker may take for its episodes before the run stops",
                         300.0)
    backend: Backend = doc("cmaes only, --in real: " + BACKEND_HELP, "local")
    ray_address: str | None = doc("cmaes only: " + RAY_ADDRESS_HELP, None)
    max_steps: int = doc("episode step limit (0 = the env's own limit)", 0)
    stop_after_negative: int = doc("cmaes only, --in real: end a TRAINING episode after this many steps in a row "
                                   "with a negative reward, as CarRacing agents after the paper did (evaluate always "
                                   "runs whole episodes; 0: never)", 0)
    select_every: int = doc("in the dream: every this many generations (pg: updates), and after the last, score the "
                            "search's mean (pg: the policy) on --select-dreams fixed dreams and keep the best-scoring "
                            "one as the controller (0: the last one); in the real env the same with "
                            "--select-tracks. With --warm-start the saved controller is scored first and stays unless "
                            "a mean scores higher",
                            10)
    select_dreams: int = doc("dreams each mean (pg: policy) is scored on for --select-every (the same dreams every "
                             "time)", 512)
    select_tracks: int = doc("cmaes only, --in real: score the search's mean every --select-every generations (and "
                             "after the last) on this many fixed real tracks, whole episodes (no "
                             "--stop-after-negative), and keep the best-scoring mean as the controller; each score "
                             "costs this many real episodes (0: the last mean is the controller)", 0)
    select_average: int = doc("cmaes only, with selection: the controller scored at each --select-every is the average "
                              "of the search's means after its last this many generations, not the last mean alone: "
                              "on a noisy fitness (CarRacing's crash-or-not episodes) the mean wanders around the "
                              "optimum, and the average of its path sits nearer the middle (1: the last mean)", 1)
    updates: int = doc("pg only: PPO updates to run (in total, counting resumed ones); each collects --envs x "
                       "--horizon steps", 150)
    envs: int = doc("pg only: episodes run side by side (dreams in one batch, or real envs in lockstep)", 128)
    horizon: int = doc("pg only: steps each of the --envs episodes runs per update (ended episodes start again; "
                       "every update starts fresh episodes)", 32)
    epochs: int = doc("pg only: passes over each update's steps", 4)
    minibatches: int = doc("pg only: minibatches each pass is split into", 4)
    lr: float = doc("pg only: Adam learning rate of the policy (its parameters in units of the controller's "
                    "param_scales)", 0.01)
    critic_lr: float = doc("pg only: Adam learning rate of the critic", 0.001)
    gamma: float = doc("pg only: discount factor; a dream state that pays r every step is worth r / (1 - gamma), so "
                       "at 0.9 a reward under 0.1 a step that M's reward head makes up somewhere is worth less than "
                       "the goal's 1 (at 0.99 PPO farmed one on GridWorld)", 0.9)
    gae_lambda: float = doc("pg only: GAE lambda (0: one-step TD advantages, 1: Monte-Carlo returns)", 0.95)
    clip: float = doc("pg only: PPO clip range of the probability ratio", 0.2)
    entropy: float = doc("pg only: weight of the policy's entropy bonus", 0.01)
    critic_hidden: int = doc("pg only: hidden units of each of the critic's two layers", 64)
    max_grad_norm: float = doc("pg only: gradient norm clip, of the policy's and the critic's each", 0.5)
    init_std: float = doc("pg only, continuous actions: initial std of the Gaussian policy around the controller's "
                          "action, as a fraction of each action's range (learned from there)", 0.25)
    warm_start: bool = doc("cmaes only: start a new search from the checkpoint's trained controller (its parameters "
                           "the first mean, its input normaliser kept) instead of from scratch, e.g. a dream-trained "
                           "C refined --in real, or a search continued with other settings; the earlier run's log is "
                           "kept in the new one's state, and so are the output step factors an earlier --output-scale "
                           "set", False)
    output_scale: tuple[float, ...] | None = doc(
        "cmaes only, with --warm-start: multiply each action's output (the last layer's weights and bias) in the saved "
        "controller by this factor, one per action, and that action's search steps alike: a saturated (bang-bang) "
        "output scaled down acts in proportion to its input again, and the search's steps stay in proportion to its "
        "weights (in later warm starts too)", None)
    resume: bool = doc("continue the run (of --algo) saved in the checkpoint", False)
    overwrite: bool = doc("start a new run even though the checkpoint holds one (its controller is replaced)", False)
    device: str = doc("torch device for the dream: auto, cpu or cuda", "auto")
    progress: bool = doc("show a progress bar and per-generation log", True)


def train_controller(cfg: ControllerTrainConfig, wm: WorldModel | None = None) -> dict:
    """Run (or resume) the controller's training by ``cfg.algo``: the CMA-ES search (``training.cmaes``) or
    policy gradient (``training.pg``). The checkpoint is saved after every generation or update.

    From Python::

        from wm_agent import ControllerTrainConfig, train_controller
        train_controller(ControllerTrainConfig(world_model="runs/grid.pt", algo="pg", temperature=0.0))

    Args:
        cfg: the settings; ``cfg.world_model`` is the checkpoint the controller is saved into.
        wm: the world model to train, if already in memory (else it is loaded from ``cfg.world_model``).

    Returns:
        ``{"checkpoint": path, "generations": int, "log": [per-generation rows]}`` (cmaes), or
        ``{"checkpoint": path, "updates": int, "dream_return": float or None, "log": [per-update rows]}`` (pg;
        ``dream_return``: the kept controller's score on the selection dreams).
    """
    from wm_agent.torch_utils import resolve_device

    path = Path(cfg.world_model)
    _check_settings(cfg)
    # Messages name the model as the caller knows it: a model given in memory is not (yet) the file.
    model_name = str(path) if wm is None else f"the world model given (saved to {path})"
    wm = wm or WorldModel.load(path, resolve_device(cfg.device))
    wm.require_trained("rnn", model_name)
    env_id = _checked_env(wm, cfg)
    if cfg.env_kwargs is not None:
        _set_env_kwargs(wm, cfg, env_id, path)
    limit = wm.episode_limit(env_id)
    check_settings((cfg.max_steps <= limit, (f"--max-steps {cfg.max_steps} is past {env_id}'s episode limit {limit}: "
                                             "no real episode runs that long (0: the limit itself)")))
    max_steps = cfg.max_steps or limit
    check_settings((cfg.output_scale is None or len(cfg.output_scale) == wm.config.action_dim,
                    f"--output-scale takes one factor per action ({wm.config.action_dim}), got "
                    f"{_shown(cfg.output_scale)}"))
    if cfg.warm_start and not (wm.is_trained("cmaes") or wm.is_trained("pg")):
        raise ValueError(f"--warm-start: {model_name} holds no trained controller to start from (train one first, "
                         "or leave out --warm-start)")
    state = _saved_run(wm, cfg, path, model_name, env_id)
    if not state:
        _set_architecture(wm, cfg, env_id, max_steps)

    def save() -> None:
        # One controller run per checkpoint: the other algorithm's saved run no longer made this controller.
        wm.train_state.pop(OTHER[cfg.algo], None)
        wm.save(path)

    result = ALGOS[cfg.algo].search(wm, cfg, env_id, max_steps, state, save)
    return {"checkpoint": str(path), **result}


# --algo -> the module whose search(wm, cfg, env_id, max_steps, state, save) trains; its train_state key is --algo.
ALGOS = {"cmaes": cmaes, "pg": pg}
OTHER = {"cmaes": "pg", "pg": "cmaes"}
NAMES = {"cmaes": "CMA-ES search", "pg": "policy-gradient run"}  # what the saved state is called in messages
# The settings of one algorithm only (refused with the other unless left at their defaults).
ONLY = {"cmaes": ("popsize", "rollouts", "generations", "sigma0", "workers", "timeout", "backend", "ray_address",
                  "stop_after_negative", "warm_start", "select_tracks", "output_scale", "select_average"),
        "pg": ("updates", "envs", "horizon", "epochs", "minibatches", "lr", "critic_lr", "gamma", "gae_lambda", "clip",
               "entropy", "critic_hidden", "max_grad_norm", "init_std")}


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _check_settings(cfg: ControllerTrainConfig) -> None:
    """Refuse settings that would break the training, before anything is loaded."""
    if cfg.algo not in ALGOS:
        raise ValueError(f"--algo must be 'cmaes' or 'pg', got {cfg.algo!r}")
    if cfg.where not in ("dream", "real"):
        raise ValueError(f"--in must be 'dream' or 'real', got {cfg.where!r}")
    for field in dataclasses.fields(cfg):
        if field.name in ONLY[OTHER[cfg.algo]] and getattr(cfg, field.name) != field.default:
            raise ValueError(f"{_flag(field)} is a setting of --algo {OTHER[cfg.algo]}, which --algo {cfg.algo} does "
                             f"not use: leave it out (at its default {field.default})")
    if cfg.algo == "cmaes":
        check_settings((cfg.popsize >= 2, f"--popsize must be >= 2, got {cfg.popsize}"),
                       (cfg.rollouts >= 1, f"--rollouts must be >= 1, got {cfg.rollouts}"),
                       (cfg.generations >= 0, f"--generations must be >= 0, got {cfg.generations}"),
                       (math.isfinite(cfg.sigma0) and cfg.sigma0 > 0,
                        f"--sigma0 must be > 0 and finite, got {cfg.sigma0}"),
                       (cfg.seed <= cmaes.MAX_SEED,
                        f"--seed must be <= {cmaes.MAX_SEED} (pycma's seeds are 32-bit), got {cfg.seed}"))
    check_settings((not (cfg.warm_start and cfg.resume),
                    "--warm-start starts a new search from the saved controller: leave out --resume"),
                   (not cfg.warm_start or (cfg.controller is None and cfg.hidden is None),
                    "--warm-start keeps the saved controller's architecture: leave out --controller and --hidden "
                    "(--pca carries a linear one over onto its principal directions)"),
                   (cfg.pca is None or cfg.pca >= 0, f"--pca must be >= 0 (0: all of the input), got {cfg.pca}"),
                   (cfg.output_scale is None or cfg.warm_start,
                    "--output-scale rescales the saved controller a new search starts from: it needs --warm-start"),
                   (cfg.output_scale is None or all(math.isfinite(f) and f > 0 for f in cfg.output_scale),
                    f"--output-scale factors must be > 0 and finite, got {cfg.output_scale}"),
                   (cfg.squash is None or set(cfg.squash) <= set(SQUASHES),
                    f"--squash takes one of {' / '.join(SQUASHES)} per action, got {' '.join(cfg.squash or ())}"))
    check_settings((cfg.temperature >= 0, f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.hidden is None or cfg.hidden >= 0, f"--hidden must be >= 0, got {cfg.hidden}"),
                   (cfg.where == "dream" or cfg.workers >= 1, f"--workers must be >= 1, got {cfg.workers}"),
                   (cfg.select_every >= 0, f"--select-every must be >= 0 (0: the last mean), got {cfg.select_every}"),
                   (cfg.select_dreams >= 1, f"--select-dreams must be >= 1, got {cfg.select_dreams}"),
                   (cfg.select_tracks >= 0, f"--select-tracks must be >= 0 (0: the last mean), got "
                                             f"{cfg.select_tracks}"),
                   (cfg.select_average >= 1, f"--select-average must be >= 1 (1: the last mean), got "
                                              f"{cfg.select_average}"),
                   (cfg.select_average == 1
                    or (cfg.select_every > 0 and (cfg.where == "dream" or cfg.select_tracks > 0)),
                    "--select-average averages the means a selection scores: it needs --select-every > 0 and, --in "
                    "real, --select-tracks > 0"),
                   (cfg.select_tracks == 0 or cfg.where == "real",
                    "--select-tracks scores the search's mean on real tracks: it needs --in real (in the dream, "
                    "--select-dreams)"),
                   (cfg.env_kwargs is None or cfg.where == "real",
                    "--env-kwargs sets the real env's gym.make arguments: it needs --in real (the dream steps M, "
                    "as its data was collected)"),
                   (cfg.stop_after_negative >= 0, f"--stop-after-negative must be >= 0, got {cfg.stop_after_negative}"),
                   (cfg.stop_after_negative == 0 or cfg.where == "real",
                    "--stop-after-negative cuts real-env training episodes: it needs --in real"),
                   (cfg.where == "dream" or (cfg.timeout > 0 and math.isfinite(cfg.timeout)),
                    f"--timeout must be > 0 and finite, got {cfg.timeout}"),
                   (cfg.backend in BACKENDS, f"--backend must be one of {BACKENDS}, got {cfg.backend!r}"),
                   (cfg.backend == "local" or cfg.where == "real",
                    f"--backend {cfg.backend} runs the workers that score candidates in the real env: it needs --in "
                    "real (in the dream, all candidates run as one batch in this process)"))
    if cfg.algo == "pg":
        _check_pg_settings(cfg)
    if cfg.backend == "ray":  # a missing Ray is said before anything is loaded
        from wm_agent.ray_pool import import_ray

        import_ray()


def _check_pg_settings(cfg: ControllerTrainConfig) -> None:
    def positive(value: float) -> bool:
        return math.isfinite(value) and value > 0

    check_settings((cfg.seed < 2**64, f"--seed must be < 2**64 (torch's seeds are 64-bit), got {cfg.seed}"),
                   (cfg.updates >= 0, f"--updates must be >= 0, got {cfg.updates}"),
                   (cfg.envs >= 1, f"--envs must be >= 1, got {cfg.envs}"),
                   (cfg.horizon >= 1, f"--horizon must be >= 1, got {cfg.horizon}"),
                   (cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}"),
                   (1 <= cfg.minibatches <= cfg.envs * cfg.horizon,
                    f"--minibatches must be >= 1 and at most --envs x --horizon = {cfg.envs * cfg.horizon}, got "
                    f"{cfg.minibatches}"),
                   (positive(cfg.lr), f"--lr must be > 0 and finite, got {cfg.lr}"),
                   (positive(cfg.critic_lr), f"--critic-lr must be > 0 and finite, got {cfg.critic_lr}"),
                   (0 < cfg.gamma <= 1, f"--gamma must be in (0, 1], got {cfg.gamma}"),
                   (0 <= cfg.gae_lambda <= 1, f"--gae-lambda must be in [0, 1], got {cfg.gae_lambda}"),
                   (positive(cfg.clip), f"--clip must be > 0 and finite, got {cfg.clip}"),
                   (math.isfinite(cfg.entropy) and cfg.entropy >= 0, f"--entropy must be >= 0, got {cfg.entropy}"),
                   (cfg.critic_hidden >= 1, f"--critic-hidden must be >= 1, got {cfg.critic_hidden}"),
                   (positive(cfg.max_grad_norm), f"--max-grad-norm must be > 0 and finite, got {cfg.max_grad_norm}"),
                   (positive(cfg.init_std), f"--init-std must be > 0 and finite, got {cfg.init_std}"))


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


def _set_env_kwargs(wm: WorldModel, cfg: ControllerTrainConfig, env_id: str, path: Path) -> None:
    """--env-kwargs over the checkpoint's own, checked by making the env once; a resumed run keeps those it ran
    with (they are the checkpoint's once it saved a generation)."""
    if not wm._is_own(env_id):
        raise ValueError(f"--env-kwargs sets the arguments of the checkpoint's own env ({wm.env_id}), not of --env "
                         f"{cfg.env}: leave one of them out")
    merged = {**wm.env_kwargs, **cfg.env_kwargs}
    if cfg.resume and cfg.algo in wm.train_state and merged != wm.env_kwargs:
        raise ResumeMismatch(path, f"the saved {NAMES[cfg.algo]} ran with env kwargs "
                                   f"{json.dumps(wm.env_kwargs, sort_keys=True)}, not "
                                   f"{json.dumps(merged, sort_keys=True)}", "resume without --env-kwargs")
    try:
        env = wm.make_env(env_id, **cfg.env_kwargs)  # the model's own keywords, these on top: the merged ones
    except Exception as exc:  # gym.make's TypeError for an unknown keyword, the env's own ValueError for a bad value
        raise ValueError(f"--env-kwargs {json.dumps(cfg.env_kwargs, sort_keys=True)}: {env_id} cannot be made with "
                         f"them: {exc}") from exc
    try:
        check_env_fits(env, wm)
    finally:
        env.close()
    wm.env_kwargs = merged  # only once they are known to work: a model given in memory is left as it was otherwise


def _saved_run(wm: WorldModel, cfg: ControllerTrainConfig, path: Path, model_name: str, env_id: str) -> dict | None:
    """The saved run to continue (with --resume), checked against the settings asked for; None to start one."""
    if "cmaes" in wm.train_state and not (cfg.resume or cfg.overwrite or cfg.warm_start):
        raise FileExistsError(f"{model_name} already holds a controller search "
                              f"({wm.train_state['cmaes'].get('generation', 0)} "
                              "generations done): pass --resume to continue it or --overwrite to start a new one")
    if "pg" in wm.train_state and not (cfg.resume or cfg.overwrite or cfg.warm_start):
        raise FileExistsError(f"{model_name} already holds a policy-gradient run of the controller "
                              f"({wm.train_state['pg'].get('update', 0)} updates done): pass --resume --algo pg to "
                              "continue it or --overwrite to start a new one")
    other = OTHER[cfg.algo]
    if cfg.resume and other in wm.train_state and cfg.algo not in wm.train_state:
        raise ResumeMismatch(path, f"the saved controller run used --algo {other}, not --algo {cfg.algo}",
                             f"resume with --algo {other}", cfg.algo, "--algo", "the saved controller run used",
                             other, cfg.algo)
    state = wm.train_state.get(cfg.algo) if cfg.resume else None
    if state:
        _check_resume_settings(state, cfg, wm, path)
        # In the dream too: the env sets the dreams' episode limit (and the env a real search runs in).
        if state.get("env", env_id) != env_id:
            raise ResumeMismatch(path, f"the saved {NAMES[cfg.algo]} ran in {state['env']}, not {env_id}",
                                 f"resume with --env {state['env']}")
    return state


def _check_resume_settings(state: dict, cfg: ControllerTrainConfig, wm: WorldModel, path: Path) -> None:
    """Refuse a --resume whose settings differ from the saved run's (one search scored half in the
    dream and half in the real env, say, or with another temperature because a flag was left out)."""
    saved, now = {}, {}
    for key, field, flag in ALGOS[cfg.algo].RESUME_SETTINGS:
        if key in state and not (key == "temperature" and cfg.where != "dream"):
            now[flag] = getattr(cfg, field)
            value = state[key]
            saved[flag] = type(now[flag])(value.item() if hasattr(value, "item") else value)
    refuse_other_settings(path, cfg.algo, f"the saved {NAMES[cfg.algo]} used", saved, now)
    for field, flag, current in (("controller", "--controller", wm.config.controller),
                                 ("hidden", "--hidden", wm.config.controller_hidden),
                                 ("pca", "--pca", wm.config.controller_pca),
                                 ("squash", "--squash", wm.config.squashes)):
        asked = getattr(cfg, field)
        if asked is not None and asked != current:
            raise ResumeMismatch(path, f"the saved search trains the checkpoint's controller "
                                       f"({flag} {_shown(current)}), not {flag} {_shown(asked)}",
                                 f"resume without {flag}")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _set_architecture(wm: WorldModel, cfg: ControllerTrainConfig, env_id: str, max_steps: int) -> None:
    """A fresh controller of the requested architecture (only when starting a search, never on resume); with
    --warm-start, the saved one carried over onto --pca principal directions."""
    changes = {}
    if cfg.controller is not None and cfg.controller != wm.config.controller:
        changes["controller"] = cfg.controller
    if cfg.hidden is not None and cfg.hidden != wm.config.controller_hidden:
        changes["controller_hidden"] = cfg.hidden
    if cfg.pca is not None and (cfg.pca != wm.config.controller_pca or (cfg.warm_start and cfg.pca)):
        changes["controller_pca"] = cfg.pca  # a warm start onto directions refits them, even as many as before
    if changes and cfg.warm_start:
        _carry_over(wm, cfg, env_id, max_steps)
    elif changes:
        wm.config = dataclasses.replace(wm.config, **changes)  # validates, with a clear error
        wm.controller = wm.new_controller(wm.config)
    if cfg.squash is not None and cfg.squash != wm.config.squashes:
        wm.set_action_squash(cfg.squash)  # the same parameters (fresh ones unless --warm-start), another mapping


PROJECTION_EPISODES = 8  # real episodes of the saved controller whose inputs the principal directions are fitted on


def _carry_over(wm: WorldModel, cfg: ControllerTrainConfig, env_id: str, max_steps: int) -> None:
    """The saved linear controller on --pca principal directions: those of the inputs it meets driving
    (``PROJECTION_EPISODES`` real episodes), its normaliser kept and its map seen through them. One already
    on principal directions is spread back over all its inputs first (the same map), so its directions are
    refitted on what it drives through now; with --pca 0 it stays spread."""
    from wm_agent.rollouts import driven_observations

    old = wm.controller
    if old.kind != "linear" or old.hidden:
        raise ValueError(f"--warm-start --pca {cfg.pca} carries a linear controller with no hidden layer over onto "
                         f"principal directions; the saved one is '{old.kind}' with {old.hidden} hidden units")
    full = old.full_params() if old.pca else old.get_flat()
    seen = None
    if cfg.pca:
        rng = np.random.default_rng([cfg.seed, 2**32])
        seeds = [int(s) for s in rng.integers(2**31, size=PROJECTION_EPISODES)]
        seen = driven_observations(wm, env_id, seeds, max_steps)
    wm.config = dataclasses.replace(wm.config, controller_pca=cfg.pca)  # validates, with a clear error
    wm.controller = wm.new_controller(wm.config)
    new = wm.controller
    with torch.no_grad():
        new.obs_mean.copy_(old.obs_mean)
        new.obs_std.copy_(old.obs_std)
    if seen is None:
        new.set_flat(full)
        return
    new.fit_projection(seen)
    new.set_flat(new.params_from_full(full))
