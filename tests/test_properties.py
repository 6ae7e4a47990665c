"""Property tests: GridWorld's reset/step and ImageObservation.to_image over random inputs (hypothesis)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from envs import ImageObservation
from envs.gridworld import AGENT, GOAL, GOAL_REWARD, OBSTACLE, STEP_COST

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

seeds = st.integers(0, 2**32 - 1)
actions = st.lists(st.integers(0, 3), min_size=1, max_size=60)


def _cells(obs: np.ndarray, k: int) -> np.ndarray:
    """One colour per grid cell (cells are uniform blocks of k x k pixels)."""
    n = obs.shape[0] // k
    blocks = obs.reshape(n, k, n, k, 3)
    assert (blocks == blocks[:, :1, :, :1]).all(), "a cell is not one uniform colour"
    return blocks[:, 0, :, 0]


def _is(cells: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return (cells == colour).all(-1)


@PROPERTY
@given(seed=seeds, moves=actions, size=st.sampled_from([4, 8, 16]))
def test_gridworld_invariants_along_random_action_sequences(seed, moves, size):
    env = gym.make("WM-GridWorld-v0", size=size)
    k = 64 // size
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    assert 0 < info["oracle_steps"] and info["success"] is False
    assert info["oracle_return"] == pytest.approx(GOAL_REWARD - STEP_COST * info["oracle_steps"])
    cells = _cells(obs, k)
    assert _is(cells, AGENT).sum() == 1 and _is(cells, GOAL).sum() == 1
    obstacles = _is(cells, OBSTACLE)
    assert 3 <= obstacles.sum() <= 6
    oracle_return = info["oracle_return"]

    for t, action in enumerate(moves, start=1):
        prev = info
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        cells = _cells(obs, k)
        agent = tuple(int(v) for v in np.argwhere(_is(cells, AGENT))[0])
        assert _is(cells, AGENT).sum() == 1 and agent == info["agent"]
        np.testing.assert_array_equal(_is(cells, OBSTACLE), obstacles)  # the layout never changes
        assert info["goal"] == prev["goal"] and info["oracle_return"] == oracle_return
        # One move changes the shortest-path length by exactly one (the grid is bipartite), or the
        # agent bumped into a wall or an obstacle and nothing changed.
        delta = info["oracle_steps"] - prev["oracle_steps"]
        moved = info["agent"] != prev["agent"]
        assert delta in ((-1, 1) if moved else (0,)), (prev, info)
        if moved:
            assert abs(info["agent"][0] - prev["agent"][0]) + abs(info["agent"][1] - prev["agent"][1]) == 1
            assert not obstacles[info["agent"]]
        on_goal = info["agent"] == info["goal"]
        assert info["success"] == on_goal == terminated == (info["oracle_steps"] == 0)
        assert reward in (pytest.approx(-STEP_COST), pytest.approx(GOAL_REWARD - STEP_COST))
        assert (reward > 0) == on_goal
        assert _is(cells, GOAL).sum() == (0 if on_goal else 1)  # the agent is drawn over the goal
        assert truncated == (t == 50)  # TimeLimit(50) flags step 50 even when it also reaches the goal
        if terminated or truncated:
            break
    env.close()


@PROPERTY
@given(seed=seeds, moves=actions)
def test_gridworld_is_a_function_of_seed_and_actions(seed, moves):
    runs = []
    for _ in range(2):
        env = gym.make("WM-GridWorld-v0")
        frames = [env.reset(seed=seed)[0]]
        for action in moves:
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(obs)
            if terminated or truncated:
                break
        runs.append(np.stack(frames))
    np.testing.assert_array_equal(runs[0], runs[1])


@PROPERTY
@given(seed=seeds)
def test_gridworld_oracle_path_exists(seed):
    """Greedy descent on oracle_steps reaches the goal in exactly oracle_steps moves."""
    env = gym.make("WM-GridWorld-v0").unwrapped
    _, info = env.reset(seed=seed)
    total = 0.0
    for _ in range(info["oracle_steps"]):
        here = env.oracle_steps
        best = None
        for action, (dr, dc) in enumerate(((-1, 0), (0, 1), (1, 0), (0, -1))):
            r, c = env._agent[0] + dr, env._agent[1] + dc
            if 0 <= r < env.size and 0 <= c < env.size and 0 <= env._dist_rows[r][c] < here:
                best = action
        assert best is not None, "no neighbour is closer to the goal"
        _, reward, terminated, _, info = env.step(best)
        total += reward
    assert terminated and info["success"]
    assert total == pytest.approx(info["oracle_return"])


# ------------------------------------------------------------------------------------------------
# ImageObservation.to_image
# ------------------------------------------------------------------------------------------------
class _ImageEnv(gym.Env):
    def __init__(self, dtype):
        high = 255 if dtype == np.uint8 else 1.0
        self.observation_space = gym.spaces.Box(0, high, (96, 96, 3), dtype)
        self.action_space = gym.spaces.Discrete(2)


WRAPPERS = {
    "uint8 image env": lambda size: ImageObservation(_ImageEnv(np.uint8), size=size),
    "float image env": lambda size: ImageObservation(_ImageEnv(np.float32), size=size),
    "rendered (CartPole)": lambda size: ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"), size=size),
}
VALID_CHANNELS = (None, 1, 3, 4)  # None: a 2-D grey image


@st.composite
def frames(draw, valid_shape: bool, dtypes):
    h, w = draw(st.integers(1, 150)), draw(st.integers(1, 150))
    if valid_shape:
        channels = draw(st.sampled_from(VALID_CHANNELS))
        shape = (h, w) if channels is None else (h, w, channels)
    else:
        shape = draw(st.one_of(
            st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([0, 2, 5, 7])),
            st.tuples(st.integers(1, 150)),
            st.tuples(st.integers(1, 4), st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 3])),
            st.just(()),
        ))
    dtype = draw(st.sampled_from(dtypes))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(-0.5, 1.5, allow_nan=False, width=np.dtype(dtype).itemsize * 8)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


@PROPERTY
@given(kind=st.sampled_from(list(WRAPPERS)), size=st.integers(8, 96), data=st.data())
def test_to_image_gives_size_by_size_rgb_uint8_for_valid_frames(kind, size, data):
    wrapper = WRAPPERS[kind](size)
    dtypes = [np.uint8] if kind == "uint8 image env" else [np.uint8, np.float32, np.float64]
    frame = data.draw(frames(valid_shape=True, dtypes=dtypes))
    out = wrapper.to_image(frame)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    assert wrapper.observation_space.contains(out)
    # A one-colour frame stays that colour (the area filter averages, so nothing is invented).
    pixel = np.asarray(frame).reshape(-1, *(frame.shape[2:] or (1,)))[0]
    flat = np.broadcast_to(pixel, frame.shape).copy()
    expected = wrapper.to_image(flat)[0, 0]
    assert (wrapper.to_image(flat) == expected).all()


@PROPERTY
@given(kind=st.sampled_from(list(WRAPPERS)), data=st.data())
def test_to_image_raises_value_error_for_invalid_frames(kind, data):
    wrapper = WRAPPERS[kind](64)
    bad_dtypes = [np.int8, np.int16, np.int32, np.int64, np.uint16, np.bool_]
    if kind == "uint8 image env":
        bad_dtypes += [np.float32, np.float64]  # floats only from float-image or rendered envs
    bad_shape = data.draw(st.booleans())
    if bad_shape:
        frame = data.draw(frames(valid_shape=False, dtypes=[np.uint8, np.float32]))
    else:
        frame = data.draw(frames(valid_shape=True, dtypes=bad_dtypes))
    with pytest.raises(ValueError, match="expected"):
        wrapper.to_image(frame)
