"""Controller training by policy gradient (--algo pg): in the dream, in the real env, resume, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import tiny_world_model

from wm_agent.commands.train_controller import ControllerTrainConfig, train_controller
from wm_agent.dream_env import dream_fitness
from wm_agent.world_model import WorldModel


def _cfg(path, **kw) -> ControllerTrainConfig:
    base = dict(world_model=str(path), algo="pg", updates=2, envs=6, horizon=6, epochs=2, minibatches=2, max_steps=8,
                select_every=1, select_dreams=8, temperature=0.0, progress=False, device="cpu")
    return ControllerTrainConfig(**{**base, **kw})


def _without_seconds(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in log]


def _same(a, b) -> bool:
    """Equal, tensors (also inside dicts and lists) bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


# -- in the dream ------------------------------------------------------------------------------------
def test_pg_trains_in_the_dream_and_saves_a_controller_evaluate_runs(ckpt):
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    result = train_controller(_cfg(ckpt, updates=3, select_every=2))
    assert result["checkpoint"] == str(ckpt) and result["updates"] == 3
    assert [row["update"] for row in result["log"]] == [1, 2, 3]
    assert [row["dream_steps"] for row in result["log"]] == [36, 72, 108]  # envs x horizon per update
    scored = {row["update"]: row["selection_score"] for row in result["log"] if "selection_score" in row}
    assert sorted(scored) == [2, 3]  # every 2nd update and the last
    state = torch.load(ckpt, weights_only=True)["train_state"]["pg"]  # tensors, numbers, strings, lists, dicts
    wm = WorldModel.load(ckpt)
    assert state["update"] == 3 and state["where"] == "dream" and "cmaes" not in wm.train_state
    assert state["selected_update"] == max(scored, key=scored.get) and result["dream_return"] == max(scored.values())
    np.testing.assert_allclose(wm.controller.get_flat(), state["selected_params"].numpy(), rtol=1e-6, atol=1e-6)
    assert not torch.equal(wm.controller.obs_std, torch.ones_like(wm.controller.obs_std))  # normaliser fitted
    assert wm.metrics["controller"]["algo"] == "pg" and wm.metrics["controller"]["updates"] == 3
    # The kept controller's score is its return on the fixed selection dreams, as CMA-ES scores a mean.
    again = dream_fitness(wm, state["selected_params"].numpy()[None], 8, 0.0, 8, False,
                          np.random.default_rng([0, 2**31]))[0]
    assert again == pytest.approx(state["selected_score"], abs=1e-5)
    summary = evaluate(EvaluateConfig(checkpoint=str(ckpt), episodes=2, max_steps=5, progress=False))
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0


def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path):
    paths = [tmp_path / f"{i}.pt" for i in range(3)]
    for path in paths:
        tiny_world_model().save(path)
    logs = [train_controller(_cfg(path, seed=seed))["log"] for path, seed in zip(paths, (0, 0, 1))]
    assert _same(_without_seconds(logs[0]), _without_seconds(logs[1]))
    assert not _same(_without_seconds(logs[0]), _without_seconds(logs[2]))
    a, b = (WorldModel.load(p) for p in paths[:2])
    assert torch.equal(a.controller.params, b.controller.params)


def test_a_resumed_run_is_the_uninterrupted_one(tmp_path, monkeypatch):
    """A run stopped after its 2nd of 4 updates (Ctrl-C) and resumed ends as the run that was never stopped."""
    straight, halves = tmp_path / "a.pt", tmp_path / "b.pt"
    tiny_world_model().save(straight)
    tiny_world_model().save(halves)
    whole = train_controller(_cfg(straight, updates=4, select_every=3))["log"]
    save = WorldModel.save

    def save_then_stop(self, path):
        save(self, path)
        if self.train_state["pg"]["update"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(WorldModel, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_controller(_cfg(halves, updates=4, select_every=3))
    monkeypatch.setattr(WorldModel, "save", save)
    assert WorldModel.load(halves).train_state["pg"]["update"] == 2
    resumed = train_controller(_cfg(halves, updates=4, select_every=3, resume=True))["log"]
    assert _same(_without_seconds(whole), _without_seconds(resumed))
    sa, sb = (WorldModel.load(p).train_state["pg"] for p in (straight, halves))
    for key in ("units", "log_std", "critic", "optimizer", "selected_params", "selected_update", "dream_steps"):
        assert _same(sa[key], sb[key]), key
    assert torch.equal(WorldModel.load(straight).controller.params, WorldModel.load(halves).controller.params)


def test_resume_past_the_target_runs_nothing(ckpt):
    train_controller(_cfg(ckpt))
    before = ckpt.read_bytes()
    assert train_controller(_cfg(ckpt, resume=True))["updates"] == 2
    assert ckpt.read_bytes() == before


def test_continuous_actions_train_a_gaussian_around_the_controller(tmp_path):
    wm = tiny_world_model(action_dim=3, discrete_actions=False, action_low=(-1.0, 0.0, 0.0),
                          action_high=(1.0, 1.0, 1.0), controller="linear")
    path = tmp_path / "car.pt"
    result = train_controller(_cfg(path, init_std=0.2), wm)
    state = WorldModel.load(path).train_state["pg"]
    assert state["log_std"].shape == (3,) and len(result["log"][-1]["std"]) == 3
    # std starts at 0.2 of each action's range and is learnt from there
    assert not torch.allclose(state["log_std"], torch.log(torch.tensor([0.4, 0.2, 0.2])))
    out = WorldModel.load(path).controller.from_obs(torch.randn(5, wm.controller.in_dim))
    assert out.shape == (5, 3) and (out[:, 1:] >= 0).all() and (out <= 1).all() and (out >= -1).all()


def test_a_pca_controller_trains_with_a_critic_on_its_directions(ckpt):
    train_controller(_cfg(ckpt, controller="linear", pca=4, updates=1))
    wm = WorldModel.load(ckpt)
    assert wm.config.controller_pca == 4
    assert wm.train_state["pg"]["critic"]["net.0.weight"].shape[1] == 4  # the critic reads what the readout reads


# -- in the real env ---------------------------------------------------------------------------------
def test_pg_trains_in_the_real_env(ckpt):
    result = train_controller(_cfg(ckpt, where="real", envs=2, horizon=5, max_steps=5, updates=1))
    row = result["log"][0]
    assert row["real_env_steps"] == 10 and row["dream_steps"] == 0 and "selection_score" not in row
    # GridWorld: -0.01 per step, +1 at the goal; an episode of at most 5 steps scores between -0.05 and 1
    assert row["episodes"] >= 2 and -0.05 - 1e-9 <= row["mean_return"] <= 1.0
    state = WorldModel.load(ckpt).train_state["pg"]
    assert state["where"] == "real" and state["real_env_steps"] == 10
    np.testing.assert_allclose(WorldModel.load(ckpt).controller.get_flat(),
                               (state["units"] * torch.as_tensor(WorldModel.load(ckpt).controller.param_scales(),
                                                                 dtype=torch.float32)).numpy(), rtol=1e-6)


# -- one controller run per checkpoint ---------------------------------------------------------------
def test_switching_algorithms_needs_overwrite_and_replaces_the_other_run(ckpt):
    train_controller(_cfg(ckpt))
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"holds a policy-gradient run of the controller \(2 updates done\): "
                                              "pass --resume --algo pg"):
        train_controller(ControllerTrainConfig(world_model=str(ckpt), popsize=4, rollouts=1, generations=1,
                                               max_steps=8, progress=False, device="cpu"))
    with pytest.raises(ValueError, match=re.escape("the saved controller run used --algo pg, not --algo cmaes; "
                                                   "resume with --algo pg")):
        train_controller(ControllerTrainConfig(world_model=str(ckpt), popsize=4, rollouts=1, generations=1,
                                               max_steps=8, progress=False, device="cpu", resume=True))
    assert ckpt.read_bytes() == before
    train_controller(ControllerTrainConfig(world_model=str(ckpt), popsize=4, rollouts=1, generations=1, max_steps=8,
                                           progress=False, device="cpu", overwrite=True))
    assert set(WorldModel.load(ckpt).train_state) == {"vae", "rnn", "cmaes"}
    with pytest.raises(FileExistsError, match="holds a controller search"):
        train_controller(_cfg(ckpt))
    train_controller(_cfg(ckpt, overwrite=True))
    assert set(WorldModel.load(ckpt).train_state) == {"vae", "rnn", "pg"}


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(algo="dqn"), "--algo must be 'cmaes' or 'pg', got 'dqn'"),
    (dict(popsize=8), "--popsize is a setting of --algo cmaes, which --algo pg does not use"),
    (dict(generations=5), "--generations is a setting of --algo cmaes"),
    (dict(envs=0), "--envs must be >= 1, got 0"),
    (dict(horizon=0), "--horizon must be >= 1, got 0"),
    (dict(minibatches=37), "--minibatches must be >= 1 and at most --envs x --horizon = 36, got 37"),
    (dict(lr=0.0), "--lr must be > 0 and finite, got 0.0"),
    (dict(critic_lr=float("nan")), "--critic-lr must be > 0 and finite, got nan"),
    (dict(gamma=1.5), r"--gamma must be in \(0, 1\], got 1.5"),
    (dict(gae_lambda=-0.1), r"--gae-lambda must be in \[0, 1\], got -0.1"),
    (dict(clip=0.0), "--clip must be > 0"),
    (dict(entropy=-1.0), "--entropy must be >= 0"),
    (dict(updates=-1), "--updates must be >= 0"),
    (dict(init_std=0.0), "--init-std must be > 0"),
    (dict(where="moon"), "--in must be 'dream' or 'real'"),
])
def test_bad_settings_are_refused_up_front(ckpt, kw, message):
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=message):
        train_controller(_cfg(ckpt, **kw))
    assert ckpt.read_bytes() == before


def test_a_pg_setting_with_cmaes_is_refused(ckpt):
    with pytest.raises(ValueError, match="--updates is a setting of --algo pg, which --algo cmaes does not use"):
        train_controller(ControllerTrainConfig(world_model=str(ckpt), updates=5, progress=False, device="cpu"))


@pytest.mark.parametrize("kw, message", [
    (dict(lr=0.5), "the saved policy-gradient run used --lr 0.01, not --lr 0.5; resume with --lr 0.01"),
    (dict(envs=7), "used --envs 6, not --envs 7"),
    (dict(seed=3), "used --seed 0, not --seed 3"),
    (dict(temperature=1.0), "used --temperature 0, not --temperature 1"),
    (dict(where="real"), "used --in dream, not --in real"),
])
def test_resume_refuses_a_different_run(ckpt, kw, message):
    train_controller(_cfg(ckpt, updates=1))
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=re.escape(message)):
        train_controller(_cfg(ckpt, resume=True, **kw))
    assert ckpt.read_bytes() == before


def test_the_command_line_takes_algo_pg(ckpt, capsys):
    from wm_agent.cli import main

    args = ["train-controller", "--world-model", str(ckpt), "--device", "cpu", "--no-progress", "--max-steps", "5"]
    assert main([*args, "--algo", "pg", "--updates", "1", "--envs", "3", "--horizon", "4", "--select-dreams", "4"]) == 0
    assert f"done: checkpoint={ckpt}, updates=1, dream_return=" in capsys.readouterr().out
    assert main([*args, "--algo", "pg", "--popsize", "8", "--resume"]) == 1
    assert "--popsize is a setting of --algo cmaes, which --algo pg does not use" in capsys.readouterr().err
    assert main([*args, "--algo", "ppo"]) == 1
    assert "--algo must be 'cmaes' or 'pg', got 'ppo'" in capsys.readouterr().err
