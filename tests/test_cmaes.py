"""Controller search with CMA-ES: in the dream (batched), in the real env (worker processes), resume."""

from __future__ import annotations

import re
import multiprocessing as mp
import threading
import time

import numpy as np
import pytest
import torch
from helpers import gridworld_frames, tiny_world_model

from wm_agent.commands.evaluate import EvaluateConfig, evaluate
from wm_agent.commands.train_controller import ControllerTrainConfig, train_controller
from wm_agent.dream_env import DreamEnv, dream_fitness
from wm_agent.models.controller import choose_actions
from wm_agent.training import cmaes
from wm_agent.training.cmaes import RealEvaluator
from wm_agent.world_model import WorldModel


def _cfg(path, **kw) -> ControllerTrainConfig:
    base = dict(world_model=str(path), popsize=4, rollouts=2, generations=2, max_steps=8, progress=False,
                device="cpu")
    return ControllerTrainConfig(**{**base, **kw})


# -- in the dream ------------------------------------------------------------------------------------
def test_train_in_the_dream_saves_the_search_and_resumes(ckpt):
    result = train_controller(_cfg(ckpt))
    assert result["generations"] == 2 and [e["generation"] for e in result["log"]] == [1, 2]
    wm = WorldModel.load(ckpt)
    state = wm.train_state["cmaes"]
    assert state["generation"] == 2 and len(state["log"]) == 2 and state["where"] == "dream"
    n = wm.controller.num_params
    assert state["mean"].shape == state["stds"].shape == state["best_params"].shape == (n,)
    np.testing.assert_allclose(wm.controller.get_flat(), state["mean"].numpy(), rtol=1e-6, atol=1e-6)
    assert state["best_fitness"] == pytest.approx(max(e["best"] for e in state["log"]))
    for e in state["log"]:
        assert e["worst"] <= e["mean"] <= e["best"] and e["sigma"] > 0
    assert not torch.equal(wm.controller.obs_std, torch.ones_like(wm.controller.obs_std))  # normaliser fitted
    assert wm.metrics["controller"]["generations"] == 2

    result = train_controller(_cfg(ckpt, generations=3, resume=True))
    assert result["generations"] == 3 and len(result["log"]) == 3
    assert result["log"][:2] == state["log"]  # the first two generations are kept, not rerun
    wm2 = WorldModel.load(ckpt)
    assert wm2.train_state["cmaes"]["generation"] == 3
    torch.testing.assert_close(wm2.controller.obs_mean, wm.controller.obs_mean)  # not refitted on resume


def test_a_saved_search_is_kept_unless_told_to_start_again(ckpt):
    train_controller(_cfg(ckpt, generations=2))
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"holds a controller search \(2 generations done\): pass --resume"):
        train_controller(_cfg(ckpt, generations=1))
    assert ckpt.read_bytes() == before
    result = train_controller(_cfg(ckpt, generations=1, overwrite=True))
    assert [e["generation"] for e in result["log"]] == [1]
    assert WorldModel.load(ckpt).train_state["cmaes"]["generation"] == 1


def test_a_warm_started_search_starts_from_the_saved_controller_and_keeps_its_history(ckpt):
    """Dream then real, or a search continued with other settings: the first mean is the saved controller,
    whose input normaliser is kept (refitting it would change what its weights mean)."""
    train_controller(_cfg(ckpt, generations=2, select_every=0))
    before = WorldModel.load(ckpt)
    first_log = before.train_state["cmaes"]["log"]
    result = train_controller(_cfg(ckpt, generations=1, popsize=6, sigma0=0.1, warm_start=True, select_every=0))
    assert [e["generation"] for e in result["log"]] == [1]
    after = WorldModel.load(ckpt)
    state = after.train_state["cmaes"]
    np.testing.assert_array_equal(state["x0"].numpy(), before.controller.get_flat())
    assert torch.equal(after.controller.obs_mean, before.controller.obs_mean)
    assert torch.equal(after.controller.obs_std, before.controller.obs_std)
    assert state["earlier"] == [{"algo": "cmaes", "where": "dream", "log": first_log, "env_kwargs": before.env_kwargs}]
    train_controller(_cfg(ckpt, generations=2, popsize=6, sigma0=0.1, resume=True, select_every=0))
    resumed = WorldModel.load(ckpt).train_state["cmaes"]
    assert resumed["generation"] == 2 and resumed["earlier"] == state["earlier"]  # kept through a resume


@pytest.mark.parametrize("kw, message", [
    (dict(warm_start=True, resume=True), "leave out --resume"),
    (dict(warm_start=True, controller="keypoint"), "leave out --controller and --hidden"),
    (dict(warm_start=True, algo="pg"), "--warm-start is a setting of --algo cmaes"),
])
def test_warm_start_refuses_what_it_cannot_do(ckpt, kw, message):
    cfg = _cfg(ckpt, **kw) if kw.get("algo") != "pg" else ControllerTrainConfig(world_model=str(ckpt), **kw)
    with pytest.raises(ValueError, match=message):
        train_controller(cfg)


def test_warm_start_needs_a_trained_controller(tmp_path):
    path = tmp_path / "m.pt"
    tiny_world_model().save(path)
    with pytest.raises(ValueError, match="holds no trained controller"):
        train_controller(_cfg(path, warm_start=True))


def test_resume_past_the_target_runs_nothing(ckpt):
    train_controller(_cfg(ckpt, generations=2))
    before = ckpt.read_bytes()
    result = train_controller(_cfg(ckpt, generations=2, resume=True))
    assert result["generations"] == 2 and len(result["log"]) == 2
    assert ckpt.read_bytes() == before


def test_a_resumed_search_is_the_uninterrupted_one(tmp_path):
    """pycma's covariance and paths are rebuilt by replaying what was told: 2 + 2 generations = 4 straight."""
    straight, halves = tmp_path / "a.pt", tmp_path / "b.pt"
    tiny_world_model().save(straight)
    tiny_world_model().save(halves)
    whole = train_controller(_cfg(straight, generations=4))["log"]
    train_controller(_cfg(halves, generations=2))
    resumed = train_controller(_cfg(halves, generations=4, resume=True))["log"]
    for a, b in zip(whole, resumed, strict=True):
        assert (a["best"], a["mean"], a["worst"], a["sigma"]) == (b["best"], b["mean"], b["worst"], b["sigma"])
    sa, sb = (WorldModel.load(p).train_state["cmaes"] for p in (straight, halves))
    assert torch.equal(sa["mean"], sb["mean"]) and torch.equal(sa["told"], sb["told"]) and sa["told"].shape == (4, 4)


def test_the_controller_is_the_best_scoring_mean_on_the_selection_dreams(ckpt):
    log = train_controller(_cfg(ckpt, generations=5, select_every=2, select_dreams=16, temperature=0.0))["log"]
    scored = {e["generation"]: e["selection_score"] for e in log if "selection_score" in e}
    assert sorted(scored) == [2, 4, 5]  # every 2nd generation and the last
    state = WorldModel.load(ckpt).train_state["cmaes"]
    assert state["selected_generation"] == max(scored, key=scored.get)
    assert state["selected_score"] == max(scored.values())
    np.testing.assert_allclose(WorldModel.load(ckpt).controller.get_flat(), state["selected_params"].numpy(),
                               rtol=1e-6, atol=1e-6)
    # The selection dreams are fixed: the mean scored again on them gets the score it was given.
    wm = WorldModel.load(ckpt)
    again = dream_fitness(wm, state["selected_params"].numpy()[None], 16, 0.0, 8, False,
                          np.random.default_rng([0, 2**31]))[0]
    assert again == pytest.approx(state["selected_score"], abs=1e-5)


def test_a_warm_start_keeps_the_saved_controller_unless_a_mean_scores_higher(ckpt, monkeypatch):
    """With selection, a warm-started search scores its first mean (the saved controller) before any generation:
    a search that only got worse gives the saved controller back."""
    train_controller(_cfg(ckpt, generations=1, select_every=0))
    saved = WorldModel.load(ckpt).controller.get_flat()
    scored = []

    def score(wm, mean, cfg, max_steps):  # the saved controller beats every later mean
        scored.append(np.array(mean))
        return 1.0 if np.allclose(mean, saved, rtol=1e-6, atol=1e-6) else 0.0

    monkeypatch.setattr(cmaes, "selection_score", score)
    train_controller(_cfg(ckpt, generations=2, select_every=1, warm_start=True))
    wm = WorldModel.load(ckpt)
    assert len(scored) == 3 and wm.train_state["cmaes"]["selected_generation"] == 0
    assert wm.train_state["cmaes"]["start_score"] == 1.0
    train_controller(_cfg(ckpt, generations=3, select_every=1, resume=True))
    assert WorldModel.load(ckpt).train_state["cmaes"]["start_score"] == 1.0  # kept through a resume
    np.testing.assert_allclose(wm.controller.get_flat(), saved, rtol=1e-6, atol=1e-6)


def test_select_average_scores_the_average_of_the_last_means_and_resumes_with_them(tmp_path, monkeypatch):
    """--select-average 3: a selection scores the average of the means after the last 3 generations (fewer before
    there are 3), and a resumed search keeps that window, so it selects what the uninterrupted one would."""
    monkeypatch.setattr(cmaes, "selection_score", lambda wm, mean, cfg, max_steps: -float(np.sum(mean)))
    straight, stepwise = tmp_path / "a.pt", tmp_path / "b.pt"
    tiny_world_model().save(straight)
    tiny_world_model().save(stepwise)
    kw = dict(select_every=2, select_average=3)
    train_controller(_cfg(straight, generations=4, **kw))
    means = []
    for generations in range(1, 5):
        train_controller(_cfg(stepwise, generations=generations, resume=generations > 1, **kw))
        means.append(WorldModel.load(stepwise).train_state["cmaes"]["mean"].numpy())
    sa, sb = (WorldModel.load(p).train_state["cmaes"] for p in (straight, stepwise))
    np.testing.assert_array_equal(sa["recent_means"].numpy(), np.array(means[1:]))
    assert torch.equal(sa["recent_means"], sb["recent_means"]) and sa["select_average"] == 3
    scored = {2: np.mean(means[:2], axis=0), 4: np.mean(means[1:], axis=0)}
    best = max(scored, key=lambda g: -np.sum(scored[g]))
    assert sa["selected_generation"] == best
    np.testing.assert_allclose(sa["selected_params"].numpy(), scored[best], rtol=0, atol=1e-12)
    np.testing.assert_allclose(WorldModel.load(straight).controller.get_flat(), scored[best], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw, message", [
    (dict(select_average=0), "--select-average must be >= 1 (1: the last mean), got 0"),
    (dict(select_average=2, select_every=0), "--select-average averages the means a selection scores"),
    (dict(select_average=2, where="real", select_tracks=0), "it needs --select-every > 0 and, --in real, --select"),
    (dict(select_average=2, algo="pg", popsize=64, rollouts=16, generations=100),
     "--select-average is a setting of --algo cmaes, which --algo pg does not"),
])
def test_select_average_is_refused_where_nothing_is_averaged(ckpt, kw, message):
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=re.escape(message)):
        train_controller(_cfg(ckpt, **kw))
    assert ckpt.read_bytes() == before


def test_without_selection_the_controller_is_the_last_mean(ckpt):
    log = train_controller(_cfg(ckpt, generations=3, select_every=0))["log"]
    assert not any("selection_score" in e for e in log)
    wm = WorldModel.load(ckpt)
    assert "selected_params" not in wm.train_state["cmaes"]
    np.testing.assert_allclose(wm.controller.get_flat(), wm.train_state["cmaes"]["mean"].numpy(), rtol=1e-6, atol=1e-6)


def test_a_resumed_search_selects_as_the_uninterrupted_one(tmp_path):
    straight, halves = tmp_path / "a.pt", tmp_path / "b.pt"
    tiny_world_model().save(straight)
    tiny_world_model().save(halves)
    kw = dict(select_every=1, select_dreams=8)
    whole = train_controller(_cfg(straight, generations=4, **kw))["log"]
    train_controller(_cfg(halves, generations=2, **kw))
    resumed = train_controller(_cfg(halves, generations=4, resume=True, **kw))["log"]
    assert [e["selection_score"] for e in whole] == [e["selection_score"] for e in resumed]
    sa, sb = (WorldModel.load(p).train_state["cmaes"] for p in (straight, halves))
    assert sa["selected_generation"] == sb["selected_generation"]
    assert torch.equal(sa["selected_params"], sb["selected_params"])


@pytest.mark.parametrize("kw, message", [
    (dict(select_every=3), "used --select-every 10, not --select-every 3"),
    (dict(popsize=6), "used --popsize 4, not --popsize 6; resume with --popsize 4"),
    (dict(seed=3), "used --seed 0, not --seed 3; resume with --seed 0"),
    (dict(where="real"), "used --in dream, not --in real"),
    (dict(rollouts=3), "used --rollouts 2, not --rollouts 3"),
    (dict(greedy=True), "used --no-greedy, not --greedy"),
    (dict(max_steps=9), "used --max-steps 8, not --max-steps 9"),
    (dict(temperature=1.0), "used --temperature 0, not --temperature 1; resume with --temperature 0"),
    (dict(controller="linear"), "trains the checkpoint's controller (--controller keypoint), not --controller linear"),
])
def test_resume_refuses_a_different_search(ckpt, kw, message):
    """A resumed search must be the saved one: a left-out --temperature 0 would silently become 1.0."""
    train_controller(_cfg(ckpt, generations=1, temperature=0.0))
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=re.escape(message)):
        train_controller(_cfg(ckpt, generations=2, resume=True, **{"temperature": 0.0, **kw}))
    assert ckpt.read_bytes() == before


def test_the_env_comes_from_the_checkpoint(tmp_path):
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    wm = tiny_world_model()
    path = tmp_path / "wm.pt"
    train_controller(_cfg(path, generations=1), wm)
    summary = evaluate(EvaluateConfig(checkpoint=str(path), episodes=2, progress=False), wm)
    assert summary["env"] == wm.env_id == "WM-GridWorld-v0" and summary["episodes"] == 2
    capped = evaluate(EvaluateConfig(checkpoint=str(path), episodes=2, max_steps=1, progress=False), wm)
    assert capped["mean_steps"] == 1.0  # every episode stopped after its first step
    for alias in ("envs:WM-GridWorld-v0", "WM-GridWorld-v0"):  # what gym.make accepts, as its registered id
        assert wm.real_env_id(alias) == "WM-GridWorld-v0"
    wm.env_id = None  # a model built in Python without naming its env
    for run in (lambda: evaluate(EvaluateConfig(checkpoint=str(path), episodes=1, progress=False), wm),
                lambda: train_controller(_cfg(path, generations=1), wm)):
        with pytest.raises(ValueError, match="pass --env"):
            run()


@pytest.mark.parametrize("greedy", [False, True])
def test_evaluate_in_worker_processes_gives_the_in_process_results(tmp_path, greedy):
    """Each episode samples from a stream of its own, so splitting the episodes over processes changes nothing."""
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    wm = tiny_world_model()
    path = tmp_path / "wm.pt"
    train_controller(_cfg(path, generations=1), wm)
    base = dict(checkpoint=str(path), episodes=5, seed=7, greedy=greedy, max_steps=12, progress=False)
    here = evaluate(EvaluateConfig(**base))
    spread = evaluate(EvaluateConfig(**base, workers=2))
    assert spread == here
    # Episode by episode, in seed order (the summary's means would not notice a shuffle).
    import gymnasium as gym

    from wm_agent.rollouts import RolloutWorkers, rollout_batch

    seeds = [7 + i for i in range(5)]
    params = WorldModel.load(path).controller.params.detach()[None]
    one = rollout_batch(WorldModel.load(path), [gym.make("WM-GridWorld-v0") for _ in seeds], params, seeds, greedy, 12)
    workers = RolloutWorkers(str(path), "WM-GridWorld-v0", 3)
    try:
        split = workers.run(params.numpy(), seeds, greedy, 12)
    finally:
        workers.close()
    assert one.keys() == split.keys()
    for key in one:
        np.testing.assert_array_equal(split[key], one[key])
    # evaluate prints them too, episode by episode in seed order, so two controllers compare track by track.
    assert here["returns"] == [float(r) for r in one["return"][0]]
    assert here["mean_return"] == pytest.approx(np.mean(here["returns"]))


def test_an_untrained_controller_is_named(tmp_path):
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    path = tmp_path / "wm.pt"
    tiny_world_model().save(path)
    with pytest.warns(UserWarning, match="no trained controller"):
        evaluate(EvaluateConfig(checkpoint=str(path), episodes=1, progress=False))


def test_train_with_an_in_memory_model_and_hidden_layer(tmp_path):
    wm = tiny_world_model(controller_hidden=4)
    path = tmp_path / "h.pt"
    result = train_controller(_cfg(path, generations=1, temperature=0.0, greedy=True), wm)
    assert result["generations"] == 1 and path.exists()
    assert WorldModel.load(path).train_state["cmaes"]["mean"].shape == (wm.config.controller_params,)


@pytest.mark.parametrize("kw, match", [(dict(where="moon"), "--in"), (dict(popsize=1), "popsize"),
                                       (dict(rollouts=0), "rollouts"), (dict(generations=-1), "generations"),
                                       (dict(select_every=-1), "--select-every must be >= 0"),
                                       (dict(select_dreams=0), "--select-dreams must be >= 1")])
def test_bad_settings(ckpt, kw, match):
    with pytest.raises(ValueError, match=match):
        train_controller(_cfg(ckpt, **kw))


def test_needs_a_trained_mdn_rnn(tmp_path):
    path = tmp_path / "untrained.pt"
    tiny_world_model(trained=False).save(path)
    with pytest.raises(ValueError, match="train-rnn"):
        train_controller(_cfg(path))


# -- dream_fitness -----------------------------------------------------------------------------------
def test_dream_fitness_shape_and_seed():
    wm = tiny_world_model()
    params = np.random.default_rng(0).normal(size=(3, wm.controller.num_params))
    a = dream_fitness(wm, params, 2, 1.0, 6, False, np.random.default_rng(5))
    b = dream_fitness(wm, params, 2, 1.0, 6, False, np.random.default_rng(5))
    assert a.shape == (3,) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_dream_fitness_gives_identical_candidates_identical_scores_at_temperature_zero():
    wm = tiny_world_model()
    p = np.random.default_rng(1).normal(size=wm.controller.num_params)
    q = np.random.default_rng(2).normal(size=wm.controller.num_params)
    fit = dream_fitness(wm, np.stack([p, q, p]), 3, 0.0, 8, True, np.random.default_rng(0))
    assert fit[0] == fit[2]  # the same starts (common random numbers) and deterministic dreams


def test_dream_fitness_samples_actions_with_common_random_numbers():
    """Sampled actions too: a candidate's r-th rollout draws from the same numbers as every other's, so
    copies of one controller score exactly alike (with independent draws they would not)."""
    wm = tiny_world_model()
    p = np.random.default_rng(1).normal(size=wm.controller.num_params)
    q = np.random.default_rng(2).normal(size=wm.controller.num_params)
    fit = dream_fitness(wm, np.stack([p, q, p, p]), 4, 0.0, 8, False, np.random.default_rng(0))
    assert fit[0] == fit[2] == fit[3]
    assert fit[0] != fit[1]


def test_dream_fitness_equals_a_dream_env_episode():
    """At temperature 0 with greedy actions, the batched score is one DreamEnv episode's return, each
    reward weighted by the model's probability that the episode is still running."""
    wm = tiny_world_model()
    params = np.random.default_rng(3).normal(size=(1, wm.controller.num_params))
    max_steps = 10
    fit = dream_fitness(wm, params, 1, 0.0, max_steps, True, np.random.default_rng(7))
    start = int(np.random.default_rng(7).integers(len(wm.start_codes), size=1)[0])  # as dream_fitness draws it
    frame = gridworld_frames(len(wm.start_codes))[start]
    wm.controller.set_flat(params[0])
    env = DreamEnv(wm, temperature=0.0, max_episode_steps=max_steps, done_threshold=1.1)  # never ends early
    obs, _ = env.reset(options={"frame": frame})
    total, survival = 0.0, 1.0
    for _ in range(max_steps):
        action = choose_actions(wm.controller.from_obs(torch.as_tensor(obs)[None]), True, greedy=True)[0]
        obs, reward, terminated, truncated, info = env.step(int(action))
        total += reward * survival
        survival *= 1.0 - info["done_probability"]
        if truncated:
            break
    assert fit[0] == pytest.approx(total, abs=1e-4)


# -- in the real env ---------------------------------------------------------------------------------
def test_train_in_the_real_env(ckpt):
    result = train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1,
                                   max_steps=5, timeout=120))
    assert result["generations"] == 1
    entry = result["log"][0]
    # GridWorld: -0.01 per step, +1 at the goal, so 5 steps score between -0.05 and 1
    assert -0.05 - 1e-9 <= entry["worst"] <= entry["best"] <= 1.0
    state = WorldModel.load(ckpt).train_state["cmaes"]
    assert state["where"] == "real" and state["generation"] == 1


def test_a_real_search_with_select_tracks_keeps_its_best_scoring_mean(ckpt):
    """--select-tracks: every --select-every generations the mean is scored on the same real tracks (whole
    episodes, counted in real_env_steps), and the controller is the best-scoring mean so far."""
    kw = dict(where="real", workers=1, popsize=4, rollouts=1, max_steps=5, select_every=1, select_tracks=2)
    result = train_controller(_cfg(ckpt, generations=3, **kw))
    scores = [row["selection_score"] for row in result["log"]]
    wm = WorldModel.load(ckpt)
    state = wm.train_state["cmaes"]
    best = int(np.argmax(scores))
    assert state["selected_generation"] == best + 1 and state["selected_score"] == scores[best]
    np.testing.assert_array_equal(wm.controller.get_flat(), state["selected_params"].float().numpy())
    # each generation: 4 candidates x 1 track, then the mean on 2 tracks, all of 1 to 5 steps
    assert 3 * 6 <= result["log"][-1]["real_env_steps"] <= 3 * 6 * 5
    again = evaluate(EvaluateConfig(checkpoint=str(ckpt), episodes=2, max_steps=5, progress=False))
    assert again["episodes"] == 2  # the selected mean is a controller evaluate runs like any other
    train_controller(_cfg(ckpt, generations=4, resume=True, **kw))
    assert len(WorldModel.load(ckpt).train_state["cmaes"]["log"]) == 4
    with pytest.raises(ValueError, match="--select-tracks scores the search's mean on real tracks"):
        train_controller(_cfg(ckpt, select_tracks=2, overwrite=True))


def test_a_real_search_that_fails_before_its_first_generation_leaves_the_checkpoint_alone(ckpt):
    train_controller(_cfg(ckpt, generations=1))
    before = ckpt.read_bytes()
    # Another architecture and an overrunning worker: the run stops before any generation is done.
    with pytest.raises(RuntimeError, match="unchanged if none finished"):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                              timeout=0.01, overwrite=True, controller="linear"))
    assert ckpt.read_bytes() == before  # the dream-trained controller and its search are still the saved ones
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]


def test_a_dream_search_resumes_only_with_its_own_env(ckpt):
    """In the dream too: the env sets the dreams' episode limit, which would change mid-search."""
    import gymnasium as gym

    train_controller(_cfg(ckpt, generations=1))
    before = ckpt.read_bytes()
    gym.register("TestGridWorldLong-v0", entry_point="envs.gridworld:GridWorldEnv", max_episode_steps=100)
    try:
        with pytest.raises(ValueError, match="ran in WM-GridWorld-v0, not TestGridWorldLong-v0; resume with --env "
                                             "WM-GridWorld-v0"):
            train_controller(_cfg(ckpt, generations=2, resume=True, env="TestGridWorldLong-v0"))
        # An env the model cannot act in is refused in the dream too (there it would only set the episode limit)
        with pytest.raises(ValueError, match="needs 64x64x3 uint8 observations"):
            train_controller(_cfg(ckpt, generations=1, overwrite=True, env="CartPole-v1"))
    finally:
        del gym.registry["TestGridWorldLong-v0"]
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("change, message", [
    ({"sigma0": float("inf")}, "--sigma0 must be > 0 and finite, got inf"),
    ({"seed": 2**32 - 1}, "--seed must be <= 4294967294"),
    ({"max_steps": 51}, "--max-steps 51 is past WM-GridWorld-v0's episode limit 50"),
    ({"where": "real", "timeout": float("inf")}, "--timeout must be > 0 and finite, got inf"),
])
def test_settings_that_would_break_the_search_are_refused_up_front(ckpt, change, message):
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=message):
        train_controller(_cfg(ckpt, generations=1, overwrite=True, **change))
    assert ckpt.read_bytes() == before


def test_a_resume_with_another_sigma0_is_refused(ckpt):
    train_controller(_cfg(ckpt, generations=1))
    with pytest.raises(ValueError, match="used --sigma0 0.5, not --sigma0 3"):
        train_controller(_cfg(ckpt, generations=2, resume=True, sigma0=3.0))


def test_a_real_search_resumes_only_in_its_own_env(ckpt):
    import gymnasium as gym

    train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                          timeout=120))
    gym.register("TestGridWorldTwin-v0", entry_point="envs.gridworld:GridWorldEnv", max_episode_steps=100)
    before = ckpt.read_bytes()
    try:
        with pytest.raises(ValueError, match="ran in WM-GridWorld-v0, not TestGridWorldTwin-v0"):
            train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=2, max_steps=5,
                                  timeout=120, resume=True, env="TestGridWorldTwin-v0"))
    finally:
        del gym.registry["TestGridWorldTwin-v0"]
    assert ckpt.read_bytes() == before


def _no_workers_left(deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while mp.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    return not mp.active_children()


def _params(n: int = 2) -> np.ndarray:
    return np.zeros((n, tiny_world_model().controller.num_params))


def test_real_evaluator_reports_a_failing_worker(tmp_path):
    ev = RealEvaluator(str(tmp_path / "missing.pt"), "WM-GridWorld-v0", workers=1, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="worker failed: FileNotFoundError.*missing.pt"):
        ev(_params(), 1, True, 5, np.random.default_rng(0))
    assert time.monotonic() - t0 < 30
    assert _no_workers_left()


def test_real_evaluator_stops_a_worker_that_overruns(ckpt):
    ev = RealEvaluator(str(ckpt), "WM-GridWorld-v0", workers=1, timeout=0.01)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="did not finish within"):
        ev(_params(), 1, True, 5, np.random.default_rng(0))
    assert time.monotonic() - t0 < 5
    assert _no_workers_left()


def test_real_evaluator_reports_a_worker_that_dies(ckpt):
    ev = RealEvaluator(str(ckpt), "WM-GridWorld-v0", workers=1, timeout=60)

    def kill_workers():
        for proc in mp.active_children():  # the test's only child processes: the evaluator's workers
            proc.kill()

    timer = threading.Timer(0.5, kill_workers)  # the worker is still starting (importing torch) by then
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match=r"died \(killed by SIGKILL \(out of memory\?\)\)"):
            ev(_params(), 1, True, 5, np.random.default_rng(0))
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30
    assert _no_workers_left()


@pytest.mark.parametrize("greedy", [True, False])
def test_batched_real_rollouts_match_one_episode_at_a_time(greedy):
    """rollout_batch steps many envs in lockstep; each episode must be exactly the one run_episode plays
    alone (same return, length and success), whatever else is in the batch: with sampled actions too,
    since an episode draws them from its own seed's stream."""
    import gymnasium as gym

    from wm_agent.rollouts import make_latent_env, rollout_batch, run_episode

    wm = tiny_world_model(seed=3)
    wm.controller.fit_normalizer(torch.randn(64, wm.controller.in_dim))
    rng = np.random.default_rng(0)
    params = torch.as_tensor(rng.normal(size=(3, wm.controller.num_params)) * 0.5, dtype=torch.float32)
    seeds = [11, 12, 13, 14]
    envs = [gym.make("WM-GridWorld-v0") for _ in range(len(params) * len(seeds))]
    batch = rollout_batch(wm, envs, params, seeds, greedy=greedy)
    assert batch["return"].shape == (3, 4) and batch["oracle_return"].shape == (3, 4)
    single = make_latent_env("WM-GridWorld-v0", wm)
    for i, theta in enumerate(params):
        wm.controller.set_flat(theta.numpy())
        for j, seed in enumerate(seeds):
            one = run_episode(single, wm, seed, greedy)
            assert batch["return"][i, j] == pytest.approx(one["return"])
            assert batch["steps"][i, j] == one["steps"] and batch["success"][i, j] == one["success"]
            assert batch["oracle_return"][i, j] == pytest.approx(one["oracle_return"])
    # Fewer seeds in the batch: the episodes that remain play exactly as before.
    fewer = rollout_batch(wm, envs, params, seeds[1:3], greedy=greedy)
    np.testing.assert_array_equal(fewer["steps"], batch["steps"][:, 1:3])
    with pytest.raises(ValueError, match="need 12 envs"):
        rollout_batch(wm, envs[:5], params, seeds, True)


def test_the_search_leaves_numpys_global_random_stream_as_it_was(ckpt):
    """pycma seeds numpy's global RNG from its own seed; a library user's stream must not depend on it."""
    np.random.seed(42)
    expected = np.random.random(3)
    np.random.seed(42)
    train_controller(_cfg(ckpt, generations=1))
    assert np.array_equal(np.random.random(3), expected)


def test_evaluate_prints_the_dream_return_beside_the_real_one(tmp_path):
    """The same controller scored as a dream search scores it (its own seed's dreams), unless --dreams 0; a model
    with no start frames has no dreams to score."""
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    path = tmp_path / "wm.pt"
    train_controller(_cfg(path, generations=1), tiny_world_model())
    base = dict(checkpoint=str(path), episodes=2, seed=3, max_steps=6, progress=False)
    result = evaluate(EvaluateConfig(**base, dreams=8, temperature=0.5))
    wm = WorldModel.load(path)
    expected = dream_fitness(wm, wm.controller.get_flat()[None], 8, 0.5, 6, False, np.random.default_rng(3))[0]
    assert result["dream_return"] == pytest.approx(float(expected))
    assert result["dreams"] == 8 and result["dream_temperature"] == 0.5
    assert "dream_return" not in evaluate(EvaluateConfig(**base, dreams=0))
    wm.start_codes = wm.start_codes[:0]
    assert "dream_return" not in evaluate(EvaluateConfig(**base), wm=wm)
    with pytest.raises(ValueError, match="--dreams must be >= 0"):
        evaluate(EvaluateConfig(**base, dreams=-1))


def test_evaluate_in_workers_scores_the_model_given_in_memory_not_the_file(tmp_path):
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    path = tmp_path / "wm.pt"
    tiny_world_model().save(path)
    wm = WorldModel.load(path)
    with torch.no_grad():
        wm.controller.set_flat(np.random.default_rng(5).normal(size=wm.controller.num_params) * 3)
    base = dict(checkpoint=str(tmp_path / "never_saved.pt"), episodes=4, seed=7, max_steps=6, progress=False)
    here = evaluate(EvaluateConfig(**base), wm)
    spread = evaluate(EvaluateConfig(**base, workers=2), wm)
    assert here == spread
    assert evaluate(EvaluateConfig(**{**base, "checkpoint": str(path)}, workers=2)) != here  # the file's differs


def test_stop_after_negative_ends_an_episode_after_that_many_negative_rewards_in_a_row():
    """GridWorld pays -0.01 a step until the goal: cutting after 3 negative steps in a row is a 3-step cap."""
    import gymnasium as gym

    from wm_agent.rollouts import rollout_batch

    wm = tiny_world_model(seed=3)
    wm.controller.fit_normalizer(torch.randn(64, wm.controller.in_dim))
    params = torch.as_tensor(np.random.default_rng(0).normal(size=(2, wm.controller.num_params)), dtype=torch.float32)
    envs = [gym.make("WM-GridWorld-v0") for _ in range(4)]
    cut = rollout_batch(wm, envs, params, [5, 6], greedy=True, stop_after_negative=3)
    capped = rollout_batch(wm, envs, params, [5, 6], greedy=True, max_steps=3)
    assert cut["steps"].max() <= 3
    np.testing.assert_array_equal(cut["steps"], capped["steps"])
    np.testing.assert_allclose(cut["return"], capped["return"])


def test_a_real_search_with_stop_after_negative_saves_it_and_resumes_only_with_it(ckpt):
    train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=8,
                          timeout=120, stop_after_negative=2))
    state = WorldModel.load(ckpt).train_state["cmaes"]
    assert state["stop_after_negative"] == 2 and max(row["real_env_steps"] for row in state["log"]) <= 2 * 2
    with pytest.raises(ValueError, match="--stop-after-negative 2"):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=2, max_steps=8,
                              timeout=120, resume=True))
    with pytest.raises(ValueError, match="it needs --in real"):
        train_controller(_cfg(ckpt, stop_after_negative=2, overwrite=True))
    with pytest.raises(ValueError, match="--stop-after-negative is a setting of --algo cmaes"):
        train_controller(ControllerTrainConfig(world_model=str(ckpt), algo="pg", where="real", stop_after_negative=2,
                                               overwrite=True, progress=False))


def test_env_kwargs_set_the_real_env_of_a_search_and_are_saved_for_evaluate_and_resume(ckpt):
    """--env-kwargs: the workers' env is made with them (here the episode limit: 3 steps, so a generation of 4 x 1
    episodes takes at most 12), the checkpoint keeps them, and a resume keeps them or refuses others."""
    result = train_controller(_cfg(ckpt, where="real", workers=1, popsize=4, rollouts=1, generations=1, max_steps=0,
                                   timeout=120, env_kwargs={"max_episode_steps": 3}))
    assert result["log"][0]["real_env_steps"] <= 4 * 3
    wm = WorldModel.load(ckpt)
    assert wm.env_kwargs["max_episode_steps"] == 3 and wm.episode_limit() == 3
    assert evaluate(EvaluateConfig(checkpoint=str(ckpt), episodes=2, dreams=0, progress=False))["mean_steps"] <= 3
    train_controller(_cfg(ckpt, where="real", workers=1, popsize=4, rollouts=1, generations=2, max_steps=0,
                          timeout=120, resume=True, env_kwargs={"max_episode_steps": 3}))
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match='with env kwargs .*"max_episode_steps": 3.*, not .*"max_episode_steps": 4'):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=4, rollouts=1, generations=3, max_steps=0,
                              timeout=120, resume=True, env_kwargs={"max_episode_steps": 4}))
    assert ckpt.read_bytes() == before
    # A warm start with others: the run it follows keeps the ones it ran with, in its history.
    train_controller(_cfg(ckpt, where="real", workers=1, popsize=4, rollouts=1, generations=1, max_steps=0,
                          timeout=120, warm_start=True, env_kwargs={"max_episode_steps": 4}))
    state = WorldModel.load(ckpt).train_state["cmaes"]
    assert state["env_kwargs"]["max_episode_steps"] == 4
    assert state["earlier"][-1]["env_kwargs"]["max_episode_steps"] == 3


@pytest.mark.parametrize("kw, message", [
    ({"env_kwargs": {"max_episode_steps": 3}}, "--env-kwargs sets the real env's gym.make arguments: it needs --in"),
    ({"where": "real", "env_kwargs": {"no_such_argument": 1}}, "--env-kwargs .*no_such_argument.*cannot be made"),
])
def test_env_kwargs_the_env_cannot_take_are_refused_before_anything_runs(ckpt, kw, message):
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=message):
        train_controller(_cfg(ckpt, workers=1, generations=1, timeout=120, **kw))
    assert ckpt.read_bytes() == before


# -- a full linear controller carried over onto principal directions (--warm-start --pca) -------------------
def test_warm_start_with_pca_carries_the_saved_linear_controller_over(ckpt):
    """The saved controller's weights seen through the principal directions of the inputs it meets driving,
    its normaliser kept; the search then resumes with the same --pca and refuses another."""
    train_controller(_cfg(ckpt, generations=1, controller="linear", select_every=0))
    before = WorldModel.load(ckpt)
    train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                          warm_start=True, pca=4, select_every=0))
    after = WorldModel.load(ckpt)
    c = after.controller
    assert after.config.controller_pca == 4 and c.num_params == 4 * c.out_dim + c.out_dim
    assert torch.equal(c.obs_mean, before.controller.obs_mean) and torch.equal(c.obs_std, before.controller.obs_std)
    state = after.train_state["cmaes"]
    np.testing.assert_allclose(state["x0"].numpy(), c.params_from_full(before.controller.get_flat()), rtol=1e-5,
                               atol=1e-5)
    assert state["earlier"][0]["where"] == "dream"
    train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=2, max_steps=5,
                          resume=True, pca=4, select_every=0))
    assert WorldModel.load(ckpt).train_state["cmaes"]["generation"] == 2
    with pytest.raises(ValueError, match="not --pca 2"):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=3, max_steps=5,
                              resume=True, pca=2, select_every=0))


def test_warm_start_with_pca_needs_a_linear_controller_without_a_hidden_layer(ckpt):
    train_controller(_cfg(ckpt, generations=1, select_every=0))  # the tiny model's keypoint controller
    with pytest.raises(ValueError, match="carries a linear controller with no hidden layer"):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                              warm_start=True, pca=4))
    train_controller(_cfg(ckpt, generations=1, controller="linear", select_every=0, overwrite=True))
    with pytest.raises(ValueError, match="--warm-start keeps the saved controller's architecture"):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                              warm_start=True, pca=4, hidden=8))


def test_warm_start_with_pca_refits_the_directions_of_a_pca_controller(ckpt):
    """A controller already on principal directions, warm-started with --pca K (as many or another number):
    spread back over its inputs, then seen through the directions of what it drives through now, its output
    step factors kept; with --pca 0 it stays spread, the same map on every input."""
    train_controller(_cfg(ckpt, generations=1, controller="linear", pca=3, select_every=0))
    train_controller(_cfg(ckpt, generations=1, select_every=0, warm_start=True, output_scale=(0.5, 1.0, 2.0, 1.0)))
    before = WorldModel.load(ckpt).controller
    for k in (3, 5):
        train_controller(_cfg(ckpt, where="real", workers=1, popsize=2, rollouts=1, generations=1, max_steps=5,
                              warm_start=True, pca=k, select_every=0, seed=k))
        after = WorldModel.load(ckpt)
        c, state = after.controller, after.train_state["cmaes"]
        assert c.pca == k and not torch.equal(c.pca_basis[:, :3], before.pca_basis)
        np.testing.assert_allclose(state["x0"].numpy(), c.params_from_full(before.full_params()), rtol=1e-4,
                                   atol=1e-4)
        np.testing.assert_allclose(c.step_factors(state["stds0"]), [0.5, 1.0, 2.0, 1.0])
        before = c
    train_controller(_cfg(ckpt, generations=1, select_every=0, warm_start=True, pca=0))
    spread = WorldModel.load(ckpt)
    assert spread.config.controller_pca == 0
    np.testing.assert_allclose(spread.train_state["cmaes"]["x0"].numpy(), before.full_params(), rtol=1e-6)


def test_a_new_pca_search_fits_its_directions_with_the_normaliser(ckpt):
    train_controller(_cfg(ckpt, controller="linear", pca=4, select_every=0))
    c = WorldModel.load(ckpt).controller
    assert c.pca == 4 and not torch.equal(c.pca_basis, torch.eye(c.in_dim)[:, :4])
    with pytest.raises(ValueError, match="must be >= 0"):
        train_controller(_cfg(ckpt, pca=-1, overwrite=True))


# -- how continuous outputs map onto the action bounds (--squash) -------------------------------------------
def test_squash_is_set_for_a_search_kept_by_warm_start_and_checked_on_resume(tmp_path):
    """--squash sets the world model's action_squash; --warm-start keeps the saved weights and reads them through
    the new mapping; --resume refuses another; a discrete model has no continuous action to squash."""
    path = tmp_path / "wm.pt"
    tiny_world_model(controller="linear", discrete_actions=False, action_dim=3, action_low=(-1.0, 0.0, 0.0),
                     action_high=(1.0, 1.0, 1.0)).save(path)
    train_controller(_cfg(path, generations=1, select_every=0))
    before = WorldModel.load(path)
    assert before.config.squashes == ("tanh", "tanh", "tanh")
    train_controller(_cfg(path, generations=1, select_every=0, warm_start=True, squash=("tanh", "tanh", "relu")))
    after = WorldModel.load(path)
    assert after.config.action_squash == ("tanh", "tanh", "relu")
    np.testing.assert_array_equal(after.train_state["cmaes"]["x0"].numpy(), before.controller.get_flat())
    out = after.controller.squash(torch.tensor([[-5.0, -5.0, -5.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]), atol=1e-4, rtol=0)
    train_controller(_cfg(path, generations=2, select_every=0, resume=True, squash=("tanh", "tanh", "relu")))
    with pytest.raises(ValueError, match="not --squash tanh tanh tanh"):
        train_controller(_cfg(path, generations=3, select_every=0, resume=True, squash=("tanh", "tanh", "tanh")))
    with pytest.raises(ValueError, match="--squash takes one of tanh / relu per action"):
        train_controller(_cfg(path, overwrite=True, squash=("tanh", "clip", "relu")))


def test_squash_needs_continuous_actions(ckpt):
    with pytest.raises(ValueError, match="action_squash .* must be empty or name one squash for each"):
        train_controller(_cfg(ckpt, squash=("tanh",)))


def test_output_scale_rescales_the_warm_start_and_its_steps_per_action(tmp_path):
    """--warm-start --output-scale: each action's output-layer column and bias times its factor, in the first mean
    and in the search's step sizes; refused without --warm-start or with the wrong count."""
    path = tmp_path / "wm.pt"
    tiny_world_model(controller="linear", discrete_actions=False, action_dim=3, action_low=(-1.0, 0.0, 0.0),
                     action_high=(1.0, 1.0, 1.0)).save(path)
    train_controller(_cfg(path, generations=1, select_every=0))
    before = WorldModel.load(path).controller
    train_controller(_cfg(path, generations=1, select_every=0, warm_start=True, output_scale=(0.1, 1.0, 2.0)))
    state = WorldModel.load(path).train_state["cmaes"]
    n, a = before.features, before.out_dim
    w, b = before.get_flat()[: n * a].reshape(n, a), before.get_flat()[n * a :]
    f = np.array([0.1, 1.0, 2.0])
    np.testing.assert_allclose(state["x0"].numpy(), np.concatenate([(w * f).ravel(), b * f]))
    np.testing.assert_allclose(state["stds0"].numpy()[n * a :], [0.1, 1.0, 2.0])
    x = torch.randn(5, before.in_dim)
    scaled = WorldModel.load(path).controller
    scaled.set_flat(state["x0"].numpy())
    pre = before.normalize(x) @ torch.as_tensor(w, dtype=torch.float32) + torch.as_tensor(b, dtype=torch.float32)
    torch.testing.assert_close(scaled.from_obs(x), scaled.squash(pre * torch.tensor([0.1, 1.0, 2.0])))
    # a later warm start keeps those step scales: the scaled weights are not stepped at their old size
    train_controller(_cfg(path, generations=1, select_every=0, warm_start=True))
    np.testing.assert_allclose(WorldModel.load(path).train_state["cmaes"]["stds0"].numpy(), state["stds0"].numpy())
    with pytest.raises(ValueError, match="it needs --warm-start"):
        train_controller(_cfg(path, overwrite=True, output_scale=(0.1, 1.0, 1.0)))
    with pytest.raises(ValueError, match="one factor per action"):
        train_controller(_cfg(path, warm_start=True, output_scale=(0.1, 1.0)))
