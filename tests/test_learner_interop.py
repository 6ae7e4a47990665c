"""Another library's learner trains in either env: the dream and the real env share one interface.

Uses Stable-Baselines3 PPO (the `dev` extra); skipped where it is not installed.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import tiny_world_model

from wm_agent.latent_env import LatentObservation

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.env_checker import check_env as sb3_check_env  # noqa: E402


@pytest.fixture(scope="module")
def wm():
    return tiny_world_model()


def _envs(wm):
    return {
        "dream": gym.make("WM-Dream-v0", world_model=wm, temperature=1.0, max_episode_steps=20),
        "real": LatentObservation(gym.make("WM-GridWorld-v0", max_episode_steps=20), wm),
    }


@pytest.mark.parametrize("where", ["dream", "real"])
def test_sb3_env_checker_accepts_the_env(wm, where):
    env = _envs(wm)[where]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advice (e.g. about unbounded Boxes), not errors
        sb3_check_env(env, warn=True)  # raises on an interface error
    env.close()


@pytest.mark.parametrize("where", ["dream", "real"])
def test_ppo_trains_and_predicts_valid_actions(wm, where):
    env = _envs(wm)[where]
    torch.manual_seed(0)
    model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]}, verbose=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    after = model.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learnt something (changed weights)

    obs, _ = env.reset(seed=1)
    for _ in range(10):
        action, _ = model.predict(obs, deterministic=False)
        assert env.action_space.contains(int(action))
        obs, reward, terminated, truncated, _ = env.step(int(action))
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_a_policy_trained_in_the_dream_runs_in_the_real_env(wm):
    envs = _envs(wm)
    model = sb3.PPO("MlpPolicy", envs["dream"], n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                    policy_kwargs={"net_arch": [16]})
    model.learn(total_timesteps=64)
    real = envs["real"]
    obs, _ = real.reset(seed=0)
    steps = 0
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, _ = real.step(int(action))
        steps += 1
        if terminated or truncated:
            break
    assert 1 <= steps <= 20
