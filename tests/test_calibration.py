"""The dream must not pay more than the real env: a tiny world model trained on random GridWorld
episodes, then random-action dreams scored the way the controller search scores them."""

import numpy as np
import pytest
import torch
from helpers import gridworld_frames_random_walk, gridworld_sequences, tiny_world_model

from wm_agent.dream_env import dream_fitness
from wm_agent.training.fit import cosine_rate


def test_cosine_rate_runs_from_the_rate_down_to_its_floor():
    assert cosine_rate(1e-3, 0.05, 0, 30) == pytest.approx(1e-3)
    assert cosine_rate(1e-3, 0.05, 15, 30) == pytest.approx(1e-3 * 0.525)
    assert cosine_rate(1e-3, 0.05, 30, 30) == pytest.approx(5e-5)
    assert cosine_rate(1e-3, 0.05, 40, 30) == pytest.approx(5e-5)  # past the schedule: stays at the floor
    assert cosine_rate(1e-3, 1.0, 29, 30) == pytest.approx(1e-3)  # floor 1: constant


@pytest.fixture(scope="module")
def trained():
    """A tiny V and M trained on random episodes, and those episodes (rewards and dones)."""
    wm = tiny_world_model(trained=False)
    wm.train_vae(gridworld_frames_random_walk(600), epochs=2, batch_size=64)
    data = gridworld_sequences(n=48, steps=20, seed=3)
    wm.train_rnn(data, epochs=25, batch_size=8, lr_floor=0.05)
    return wm, data


def test_the_learning_rate_ends_at_its_floor_and_a_resume_keeps_the_schedule(trained):
    wm, _ = trained
    assert wm.train_state["rnn"]["epoch"] == 25
    lr = wm.train_state["rnn"]["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(cosine_rate(wm.config.learning_rate, 0.05, 24, 25))


def test_the_reward_head_is_calibrated_on_the_steps_it_learnt(trained):
    wm, data = trained
    z = wm.encode(data["obs"].reshape(-1, 64, 64, 3)).view(*data["obs"].shape[:2], -1)
    with torch.no_grad():
        params, _ = wm.rnn(z[:, :-1], torch.as_tensor(data["actions"]))
    mask = data["mask"]
    predicted, real = params["reward"].numpy()[mask], data["rewards"][mask]
    # The step cost is -0.01: a head whose mean is off by as much doubles every dream step's cost
    # (or erases it), and the dream return drifts by the episode length times that.
    assert abs(predicted[real < 0].mean() - real[real < 0].mean()) < 0.01


def test_random_dreams_do_not_pay_more_than_the_real_env(trained):
    wm, data = trained
    uniform = np.zeros((1, wm.controller.num_params))  # every logit 0: uniform random actions
    steps = data["rewards"].shape[1]
    dream = float(dream_fitness(wm, uniform, 256, 0.0, steps, False, np.random.default_rng(0))[0])
    real = float((data["rewards"] * data["mask"]).sum(1).mean())  # random episodes of the same length
    assert dream <= real + 0.1, (dream, real)
