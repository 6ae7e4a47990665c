"""The WM-* environments and the image wrapper."""

from __future__ import annotations

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_wm_env, wm_env_ids
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from envs import GridWorldEnv, ImageObservation
from envs.gridworld import MOVES

ENV_IDS = wm_env_ids()


def test_the_generic_tests_cover_gridworld_and_car_racing():
    assert {"WM-GridWorld-v0", "WM-CarRacing-v0", "WM-Pixels-v0"} <= set(ENV_IDS)


# -- every WM-* env ---------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = make_wm_env(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    env.close()
    problems = [
        str(w.message)
        for w in caught
        # check_env always notes that gym.make's wrappers differ from the unwrapped env; Box2D's SWIG
        # bindings add DeprecationWarnings on import. Anything else is a finding.
        if "different from the unwrapped" not in str(w.message) and not issubclass(w.category, DeprecationWarning)
    ]
    assert problems == []


def _rollout(env_id: str, seed: int, steps: int = 15):
    env = make_wm_env(env_id)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames, rewards = [obs], []
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(obs)
        rewards.append(reward)
        if terminated or truncated:
            obs, _ = env.reset()
            frames.append(obs)
    env.close()
    return np.stack(frames), np.array(rewards)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeded_rollouts_repeat_exactly(env_id):
    frames_a, rewards_a = _rollout(env_id, seed=3)
    frames_b, rewards_b = _rollout(env_id, seed=3)
    frames_c, _ = _rollout(env_id, seed=4)
    assert frames_a.shape[1:] == (64, 64, 3) and frames_a.dtype == np.uint8
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(rewards_a, rewards_b)
    assert not np.array_equal(frames_a[0], frames_c[0])  # and the seed matters


# -- GridWorld --------------------------------------------------------------------------------------
def _oracle_action(env: GridWorldEnv) -> int:
    """A move onto a neighbouring cell one step closer to the goal (BFS distances)."""
    r, c = (int(v) for v in env._agent)
    for action, (dr, dc) in enumerate(MOVES):
        rr, cc = r + int(dr), c + int(dc)
        if 0 <= rr < env.size and 0 <= cc < env.size and env._dist_rows[rr][cc] == env._dist_rows[r][c] - 1:
            return action
    raise AssertionError(f"no neighbour of {(r, c)} is closer to the goal")


@pytest.mark.parametrize("seed", range(20))
def test_gridworld_following_the_oracle_path_reaches_the_goal(seed):
    env = gym.make("WM-GridWorld-v0")
    _, info = env.reset(seed=seed)
    length = info["oracle_steps"]
    assert length >= 1
    assert info["oracle_return"] == pytest.approx(1 - 0.01 * length)
    total, terminated, remaining = 0.0, False, length
    while not terminated:
        _, reward, terminated, truncated, info = env.step(_oracle_action(env.unwrapped))
        assert not truncated
        assert info["oracle_steps"] == remaining - 1  # strictly one closer each step
        remaining -= 1
        total += reward
    assert remaining == 0 and info["success"] and info["agent"] == info["goal"]
    assert total == pytest.approx(1 - 0.01 * length)


def test_gridworld_layouts_are_varied_reachable_and_not_trivial():
    env = GridWorldEnv()
    lengths, obstacles = [], []
    for seed in range(500):
        _, info = env.reset(seed=seed)
        lengths.append(info["oracle_steps"])
        obstacles.append(int(np.sum(env._blocked)))
        assert env._dist_rows[env._agent[0]][env._agent[1]] > 0  # the goal is reachable and not under the agent
    assert np.mean(lengths) >= 5
    assert min(obstacles) >= 3 and max(obstacles) <= 6
    assert len(set(obstacles)) == 4  # every count from 3 to 6 occurs


@pytest.mark.parametrize("action", [4, -1, 1.5, "up"])
def test_gridworld_rejects_invalid_actions(action):
    env = gym.make("WM-GridWorld-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action must be"):
        env.step(action)


def test_gridworld_draws_agent_goal_and_obstacles():
    env = GridWorldEnv()
    obs, info = env.reset(seed=1)
    k = env.cell
    agent_r, agent_c = info["agent"]
    goal_r, goal_c = info["goal"]
    np.testing.assert_array_equal(obs[agent_r * k, agent_c * k], [230, 50, 40])
    np.testing.assert_array_equal(obs[goal_r * k, goal_c * k], [40, 200, 60])
    grey = np.all(obs[::k, ::k] == [128, 128, 128], axis=-1)
    np.testing.assert_array_equal(grey, np.array(env._blocked))


def test_make_with_module_prefix_imports_envs():
    env = gym.make("envs:WM-GridWorld-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)


# -- WM-Pixels-v0 -----------------------------------------------------------------------------------
def test_pixels_env_is_the_image_observation_of_the_render():
    env = gym.make("WM-Pixels-v0", env_id="CartPole-v1")
    by_hand = ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"))
    obs, _ = env.reset(seed=5)
    np.testing.assert_array_equal(obs, by_hand.reset(seed=5)[0])
    np.testing.assert_array_equal(env.step(1)[0], by_hand.step(1)[0])
    assert env.spec.max_episode_steps == 500  # CartPole's own limit still ends its episodes
    assert gym.make("WM-Pixels-v0", env_id="CartPole-v1", image_size=32).reset(seed=0)[0].shape == (32, 32, 3)


def test_pixels_env_refuses_other_render_modes_and_envs_that_cannot_render_frames():
    with pytest.raises(ValueError, match="render_mode is 'rgb_array', got 'human'"):
        gym.make("WM-Pixels-v0", env_id="CartPole-v1", render_mode="human")
    if "WMTest-NoFrames-v0" not in gym.registry:
        gym.register("WMTest-NoFrames-v0", entry_point=f"{__name__}:_NoFramesEnv")
    # Gymnasium only warns of the mode the env lacks; the factory refuses
    with pytest.warns(UserWarning, match="not in the possible render_modes"), \
            pytest.raises(ValueError, match="cannot render rgb_array frames"):
        gym.make("WM-Pixels-v0", env_id="WMTest-NoFrames-v0")


class _NoFramesEnv(gym.Env):
    metadata = {"render_modes": ["human"]}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Discrete(2)


# -- ImageObservation -------------------------------------------------------------------------------
def test_image_observation_renders_non_image_envs():
    env = ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(0)
    assert obs.shape == (64, 64, 3) and obs.std() > 0  # a real picture, not a blank frame
    env.close()


def test_image_observation_of_a_rendered_env_passes_check_env():
    """check_env re-makes the env in each advertised render mode; from rendered frames only rgb_array works."""
    env = ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"), size=64)
    assert env.metadata["render_modes"] == ["rgb_array"]
    check_env(env, skip_render_check=False)
    env.close()


def test_image_observation_needs_rgb_array_for_non_image_envs():
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        ImageObservation(gym.make("CartPole-v1"))


class _PictureEnv(gym.Env):
    """A fixed 96x96 picture: red top half, blue bottom half, as uint8, or as floats in [0, ``high``]."""

    def __init__(self, dtype=np.uint8, high=None):
        picture = np.zeros((96, 96, 3))
        picture[:48, :, 0] = 1.0
        picture[48:, :, 2] = 0.5
        if dtype == np.uint8:
            high = 255
        elif high is None:
            high = 1.0
        self._picture = (picture * (high if high in (1.0, 255) else 1.0)).astype(dtype)
        self.observation_space = spaces.Box(0, high, (96, 96, 3), dtype)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._picture.copy(), {}

    def step(self, action):
        return self._picture.copy(), 0.0, False, False, {}


def test_image_observation_crops_before_resizing():
    obs, _ = ImageObservation(_PictureEnv(), crop=(0, 48)).reset()
    assert obs.shape == (64, 64, 3)
    np.testing.assert_array_equal(obs.reshape(-1, 3), np.tile([255, 0, 0], (64 * 64, 1)))  # only red is left
    obs, _ = ImageObservation(_PictureEnv(), crop=(48, 96, 0, 48)).reset()
    assert np.all(obs[..., 2] == 127) and np.all(obs[..., :2] == 0)
    with pytest.raises(ValueError, match="rows must satisfy 0 <= start < end <= 96, got 50:50"):
        ImageObservation(_PictureEnv(), crop=(50, 50))  # an empty crop is refused when built, not at reset


@pytest.mark.parametrize("high", [1.0, 255.0, np.inf, float(np.finfo(np.float32).max)])
def test_image_observation_scales_float_images(high):
    obs, _ = ImageObservation(_PictureEnv(np.float32, high)).reset()
    assert obs.dtype == np.uint8
    assert obs[0, 0].tolist() == [255, 0, 0] and obs[-1, -1].tolist() == [0, 0, 128]


def test_image_observation_refuses_floats_of_an_unknown_range():
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[0, 255\]"):
        ImageObservation(_PictureEnv(np.float32, 10.0))


class _ArrayEnv(gym.Env):
    """Observations of any ``space`` (a fixed ``picture``, or seeded noise within the bounds); the rgb_array
    render is ``_frame(t)`` blown up to 128x128 in 2x2 blocks, so its 64x64 resize is ``_frame(t)`` exactly."""

    def __init__(self, space, render_mode=None, picture=None):
        self.metadata = {"render_modes": ["rgb_array"]}
        self.observation_space, self.action_space = space, spaces.Discrete(2)
        self.render_mode, self._picture, self._t = render_mode, picture, 0

    def _observation(self):
        if self._picture is not None:
            return self._picture.copy()
        noise = self.np_random.normal(0.0, 300.0, self.observation_space.shape)
        return np.clip(noise, self.observation_space.low, self.observation_space.high).astype(
            self.observation_space.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._observation(), {}

    def step(self, action):
        self._t += 1
        return self._observation(), 0.0, False, False, {}

    def render(self):
        return np.kron(_frame(self._t), np.ones((2, 2, 1), np.uint8))


def _frame(t: int) -> np.ndarray:
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:32, :, 0] = 200
    frame[:, :32, 1] = (40 * t) % 256
    frame[..., 2] = (np.arange(64)[:, None] * 3 + t) % 256
    return frame


NOT_PIXELS = {  # image-shaped spaces whose bounds say they do not hold pixels, and the reason the refusal gives
    "features": (spaces.Box(-np.inf, np.inf, (10, 10), np.float32), "the lower bound is -inf"),
    "[-1, 1] image": (spaces.Box(-1.0, 1.0, (16, 16, 3), np.float32), "the lower bound is -1"),
    "16-bit image": (spaces.Box(0, 65535, (16, 16, 3), np.uint16),
                     r"must lie in \[0, 255\], the bounds are \[0, 65535\]"),
    "int above 255": (spaces.Box(0, 1000, (16, 16), np.int64), r"the bounds are \[0, 1000\]"),
}


@pytest.mark.parametrize("name", list(NOT_PIXELS))
def test_image_shaped_non_pixels_are_refused_when_built_without_a_render(name):
    """Neither clipped to [0, 1] and drawn (features, [-1, 1] images) nor refused only at the first reset (ints)."""
    space, reason = NOT_PIXELS[name]
    with pytest.raises(ValueError) as exc:
        ImageObservation(_ArrayEnv(space))
    message = str(exc.value)
    assert "observations are not images" in message and re.search(reason, message), message
    assert "rescale them to [0, 1]" in message and "render_mode='rgb_array'" in message
    assert f"observation_space={space}" in message and "render_mode=None" in message


@pytest.mark.parametrize("name", list(NOT_PIXELS))
def test_image_shaped_non_pixels_are_seen_through_the_render(name):
    env = ImageObservation(_ArrayEnv(NOT_PIXELS[name][0], render_mode="rgb_array"))
    assert env.metadata["render_modes"] == ["rgb_array"]
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, _frame(0))
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs, _frame(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no spec to re-make it in other render modes
        check_env(env, skip_render_check=False)


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, np.int32])
def test_integer_images_within_0_255_convert_exactly(dtype):
    picture = (np.arange(64 * 64 * 3).reshape(64, 64, 3) % 256).astype(dtype)
    env = ImageObservation(_ArrayEnv(spaces.Box(0, 255, (64, 64, 3), dtype), picture=picture))
    assert not env._from_render
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8
    np.testing.assert_array_equal(obs, picture)
    obs, _ = ImageObservation(_ArrayEnv(spaces.Box(0, 255, (64, 64, 3), dtype), "rgb_array", picture)).reset()
    np.testing.assert_array_equal(obs, picture)  # pixels the space vouches for win over the render
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)


# -- CarRacing --------------------------------------------------------------------------------------
def test_car_racing_is_seen_at_64x64():
    env = gym.make("WM-CarRacing-v0")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert isinstance(env.action_space, spaces.Box) and env.action_space.shape == (3,)
    env.close()


def test_car_racing_discrete_variant():
    env = gym.make("WM-CarRacing-v0", continuous=False)
    assert env.action_space == spaces.Discrete(5)
    env.close()


def _drive(env, action, seed=3):
    env.reset(seed=seed)
    total, decisions = 0.0, 0
    while True:
        obs, reward, terminated, truncated, info = env.step(action)
        total, decisions = total + reward, decisions + 1
        if terminated or truncated:
            return obs, total, decisions, terminated, truncated, info


def test_car_racing_action_repeat_keeps_every_frames_reward_and_the_last_frame():
    """Held gas drives off the playfield: k=4 ends on the same frame with the same return and picture as k=1."""
    gas = np.array([0.0, 0.3, 0.0])
    obs1, ret1, n1, term1, _, _ = _drive(gym.make("WM-CarRacing-v0"), gas)
    obs4, ret4, n4, term4, _, info = _drive(gym.make("WM-CarRacing-v0", action_repeat=4), gas)
    assert term1 and term4 and info["frames"] == n1 and n4 == -(-n1 // 4)
    assert ret4 == pytest.approx(ret1) and np.array_equal(obs4, obs1)


def test_car_racing_action_repeat_truncates_after_the_envs_1000_frames():
    env = gym.make("WM-CarRacing-v0", action_repeat=3)
    _, _, decisions, terminated, truncated, info = _drive(env, np.zeros(3))
    assert (decisions, info["frames"], terminated, truncated) == (334, 1000, False, True)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, 101, "4"])
def test_car_racing_refuses_a_bad_action_repeat(bad):
    with pytest.raises(ValueError, match="action_repeat must be a whole number"):
        gym.make("WM-CarRacing-v0", action_repeat=bad)


@pytest.mark.parametrize("action", [
    1, True, 5, -1, np.int8(1), np.int64(3), np.uint32(2), np.uint64(1), np.array(2), np.array(2, np.uint64),
    np.array([1]), np.float64(1), 1.0, "1", None, np.bool_(True), np.array(True)])
def test_gridworld_takes_exactly_the_actions_its_action_space_contains(action):
    """The env checks actions without Discrete.contains (~5 us a call) but must agree with it, as the dream,
    which uses contains, does."""
    env = gym.make("WM-GridWorld-v0").unwrapped
    env.reset(seed=0)
    if env.action_space.contains(action):
        env.step(action)
    else:
        with pytest.raises(ValueError, match="action must be an int in"):
            env.step(action)


def test_car_racing_with_action_repeat_says_its_decision_limit():
    """The registry's 1000 counts decisions; the made env knows an episode has 1000 / k of them, and so does a
    world model trained on it (its dreams end there)."""
    from wm_agent.env_ids import time_limit_of
    from wm_agent.world_model import WorldModel

    assert time_limit_of(gym.make("WM-CarRacing-v0", action_repeat=4)) == 250
    assert time_limit_of(gym.make("WM-CarRacing-v0", action_repeat=3)) == 334
    assert time_limit_of(gym.make("WM-CarRacing-v0")) == 1000
    from wm_agent.config import WorldModelConfig
    wm = WorldModel(WorldModelConfig(action_dim=3, discrete_actions=False), "WM-CarRacing-v0",
                    env_kwargs={"action_repeat": 4})
    assert wm.episode_limit() == 250 and WorldModel(wm.config, "WM-CarRacing-v0").episode_limit() == 1000
