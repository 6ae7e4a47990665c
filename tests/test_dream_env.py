"""The dream (DreamEnv, DreamVectorEnv) and the real env seen through the world model (LatentObservation).

The registry-wide ``check_env`` and seeded-rollout tests in test_envs.py cover ``WM-Dream-v0`` through
``conftest.ENV_KWARGS_FACTORIES``; this file checks what is particular to the dream.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import wm_env_ids
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from helpers import gridworld_frames, tiny_world_model

from envs import ImageObservation
from wm_agent.dream_env import DreamEnv, DreamVectorEnv
from wm_agent.latent_env import LatentObservation
from wm_agent.world_model import WorldModel


@pytest.fixture(scope="module")
def wm():
    return tiny_world_model()


def _actions(n: int, seed: int = 0) -> list[int]:
    return [int(a) for a in np.random.default_rng(seed).integers(4, size=n)]


def _rollout(env, actions, **reset_kwargs):
    obs, _ = env.reset(**reset_kwargs)
    out = [(obs, 0.0, False, False)]
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for (oa, ra, ta, ua), (ob, rb, tb, ub) in zip(a, b):
        np.testing.assert_array_equal(oa, ob)
        assert (ra, ta, ua) == (rb, tb, ub)


def test_dream_is_under_the_generic_env_tests():
    assert "WM-Dream-v0" in wm_env_ids()


def _findings(caught) -> list[str]:
    """check_env's warnings, less the expected ones: concat(z, h) is an unbounded Box by design."""
    return [str(w.message) for w in caught
            if not issubclass(w.category, DeprecationWarning) and "infinity" not in str(w.message)
            and "different from the unwrapped" not in str(w.message)]


@pytest.mark.parametrize("observation", ["latent", "pixels"])
def test_check_env(wm, observation):
    env = gym.make("WM-Dream-v0", world_model=wm, observation=observation, render_mode="rgb_array")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert _findings(caught) == []


# -- spaces ------------------------------------------------------------------------------------------
def test_dream_spaces_equal_the_latent_view_of_the_real_env(wm):
    dream = gym.make("WM-Dream-v0", world_model=wm)
    real = LatentObservation(gym.make("WM-GridWorld-v0"), wm)
    assert dream.observation_space == real.observation_space
    assert dream.action_space == real.action_space == spaces.Discrete(4)
    z, h = wm.config.z_size, wm.config.hidden_size
    assert dream.observation_space.shape == (z + h,) and dream.observation_space.dtype == np.float32
    od, _ = dream.reset(seed=0)
    orl, _ = real.reset(seed=0)
    assert od.shape == orl.shape and od.dtype == orl.dtype
    assert dream.observation_space.contains(od) and real.observation_space.contains(orl)


def test_continuous_world_model_gives_box_actions():
    wm = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    env = DreamEnv(wm, max_episode_steps=3)
    assert env.action_space == spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.array([0.5, 0.5, 0.5], np.float32))
    assert env.observation_space.contains(obs) and isinstance(reward, float)
    for bad in (np.array([0.0, np.nan, 0.0]), np.zeros(2), "left"):
        with pytest.raises(ValueError, match="is not in the action space"):
            env.step(bad)


def test_box_actions_outside_the_box_are_clipped_as_gymnasiums_continuous_envs_do():
    wm = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    outside, inside = np.array([1.5, -0.5, 2.0]), np.array([1.0, 0.0, 1.0], np.float32)
    a, b = DreamEnv(wm, temperature=1.0), DreamEnv(wm, temperature=1.0)
    assert np.array_equal(a.reset(seed=3)[0], b.reset(seed=3)[0])
    for _ in range(3):
        assert np.array_equal(a.step(outside)[0], b.step(inside)[0])
    va, vb = DreamVectorEnv(2, wm), DreamVectorEnv(2, wm)
    va.reset(seed=3), vb.reset(seed=3)
    assert np.array_equal(va.step(np.stack([outside, inside]))[0], vb.step(np.stack([inside, inside]))[0])


def test_continuous_dream_accepts_float64_actions_like_the_vector_dream():
    wm = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    venv = DreamVectorEnv(2, wm)
    venv.reset(seed=0)
    venv.step(np.full((2, 3), 0.5))  # float64: accepted by the vector dream
    env = DreamEnv(wm)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.5, 0.5, 0.5]))  # float64, within the bounds
    assert env.observation_space.contains(obs)


# -- determinism -------------------------------------------------------------------------------------
def test_seeded_rollouts_at_temperature_one_repeat(wm):
    env = gym.make("WM-Dream-v0", world_model=wm, temperature=1.0)
    acts = _actions(20)
    a = _rollout(env, acts, seed=11)
    b = _rollout(env, acts, seed=11)
    _assert_same(a, b)
    c = _rollout(env, acts, seed=12)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_temperature_zero_is_deterministic_without_a_seed(wm):
    frame = gridworld_frames(1, first_seed=5)[0]
    acts = _actions(12, seed=1)
    a = _rollout(gym.make("WM-Dream-v0", world_model=wm, temperature=0.0), acts, options={"frame": frame})
    b = _rollout(gym.make("WM-Dream-v0", world_model=wm, temperature=0.0), acts, options={"frame": frame})
    _assert_same(a, b)


def test_temperature_zero_follows_the_models_most_likely_step(wm):
    frame = gridworld_frames(1, first_seed=6)[0]
    env = DreamEnv(wm, temperature=0.0)
    obs, _ = env.reset(options={"frame": frame})
    obs2, reward, *_ = env.step(2)
    z = wm.encode(frame[None])
    with torch.no_grad():
        params, hidden = wm.rnn.eval()(z[:, None], torch.tensor([[2]]))
    k = int(params["pi"][0, 0].argmax())
    expected_z = wm.vae.indices_to_latent(wm.vae.latent_to_indices(params["mu"][0, 0, k][None]))[0]
    np.testing.assert_allclose(obs2[: wm.config.z_size], expected_z.numpy(), atol=1e-6)
    np.testing.assert_allclose(obs2[wm.config.z_size :], hidden[0][0, 0].numpy(), atol=1e-5)
    assert reward == pytest.approx(float(params["reward"][0, 0]), abs=1e-5)


# -- reset and step ----------------------------------------------------------------------------------
def test_reset_from_a_given_frame(wm):
    frame = gridworld_frames(1, first_seed=40)[0]
    env = gym.make("WM-Dream-v0", world_model=wm)
    obs, info = env.reset(options={"frame": frame})
    z = wm.config.z_size
    np.testing.assert_array_equal(obs[:z], wm.encode(frame[None])[0].numpy())
    assert not obs[z:].any()  # a fresh LSTM state
    assert isinstance(info, dict)


def test_reset_from_the_banked_start_frames(wm):
    env = DreamEnv(wm)
    bank = wm.vae.indices_to_latent(wm.start_codes).numpy()
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        assert any(np.array_equal(obs[: wm.config.z_size], row) for row in bank)


@pytest.mark.parametrize(
    "frame",
    [np.zeros((32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8),
     np.zeros((1, 64, 64, 3), np.uint8)],
)
def test_bad_start_frame(wm, frame):
    env = DreamEnv(wm)
    with pytest.raises(ValueError, match="frame"):
        env.reset(options={"frame": frame})


@pytest.mark.parametrize("action", [4, -1, 1.5, "up", np.array([0, 1]), [1]])
@pytest.mark.parametrize("latent", [False, True])
def test_bad_action(wm, action, latent):
    env = LatentObservation(gym.make("WM-GridWorld-v0"), wm) if latent else DreamEnv(wm)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="is not in the action space"):
        env.step(action)


def test_latent_observation_steps_only_after_reset(wm):
    with pytest.raises(gym.error.ResetNeeded):
        LatentObservation(gym.make("WM-GridWorld-v0"), wm).step(0)


def test_single_env_steps_run_on_one_torch_thread_and_restore_the_count(wm):
    from wm_agent.torch_utils import one_torch_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        env = DreamEnv(wm)
        env.reset(seed=0)
        env.step(0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_constructor_validation(wm, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        DreamEnv(wm, temperature=-0.1)
    with pytest.raises(ValueError, match="observation"):
        DreamEnv(wm, observation="ram")
    with pytest.raises(ValueError, match="render_mode"):
        DreamEnv(wm, render_mode="ansi")
    with pytest.raises(TypeError, match="world_model"):
        DreamEnv(42)
    with pytest.raises(FileNotFoundError):
        DreamEnv(tmp_path / "missing.pt")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_episode_steps must be a positive int"):
            DreamEnv(wm, max_episode_steps=steps)
    if not torch.cuda.is_available():
        wm.save(tmp_path / "wm.pt")
        with pytest.raises(ValueError, match="this torch cannot use CUDA here"):
            DreamEnv(tmp_path / "wm.pt", device="cuda")


def test_a_model_without_start_frames_dreams_from_a_given_frame(wm):
    bare = WorldModel(wm.config)
    bare.vae.load_state_dict(wm.vae.state_dict())
    bare.rnn.load_state_dict(wm.rnn.state_dict())
    bare.train_state = dict(wm.train_state)  # V and M trained, as the loaded weights were
    frame = gridworld_frames(1)[0]
    env = DreamEnv(bare)
    obs, _ = env.reset(options={"frame": frame})
    np.testing.assert_array_equal(obs[: wm.config.z_size], wm.encode(frame[None])[0].numpy())
    with pytest.raises(ValueError, match="start frames"):
        env.reset()  # nothing to start from


def test_dreams_and_latent_views_refuse_an_untrained_model(tmp_path):
    v_only = tiny_world_model(trained=False)
    v_only.train_state = {"vae": {"epoch": 1}}
    v_only.save(tmp_path / "v_only.pt")
    for make in (lambda m: DreamEnv(m), lambda m: DreamVectorEnv(2, m),
                 lambda m: gym.make("WM-Dream-v0", world_model=m)):
        with pytest.raises(ValueError, match="v_only.pt has no trained MDN-RNN"):
            make(str(tmp_path / "v_only.pt"))
    with pytest.warns(UserWarning, match="no trained MDN-RNN: the h part of its observations is noise"):
        LatentObservation(gym.make("WM-GridWorld-v0"), v_only)  # a V-only baseline is allowed, with a word
    first_epoch_of_m = tiny_world_model(trained=False)
    first_epoch_of_m.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 0, "partial": {}}}
    with pytest.warns(UserWarning, match="no trained MDN-RNN"):
        LatentObservation(gym.make("WM-GridWorld-v0"), first_epoch_of_m)
    stopped = tiny_world_model(trained=False)
    stopped.train_state = {"vae": {"epoch": 0, "partial": {}}}  # stopped within its first epoch, or --epochs 0
    with pytest.raises(ValueError, match="no trained VQ-VAE: not one epoch of it finished"):
        LatentObservation(gym.make("WM-GridWorld-v0"), stopped)


def test_world_model_from_a_checkpoint_path(wm, tmp_path):
    path = tmp_path / "wm.pt"
    wm.save(path)
    frame = gridworld_frames(1)[0]
    acts = _actions(6)
    a = _rollout(gym.make("WM-Dream-v0", world_model=str(path), temperature=0.0), acts, options={"frame": frame})
    b = _rollout(DreamEnv(wm, temperature=0.0), acts, options={"frame": frame})
    _assert_same(a, b)


def test_truncates_at_max_episode_steps(wm):
    env = DreamEnv(wm, max_episode_steps=4, done_threshold=1.1)  # the done head can never fire
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    assert DreamEnv(wm).max_episode_steps == gym.spec("WM-GridWorld-v0").max_episode_steps  # the real limit


def test_a_custom_envs_dreams_end_at_its_registered_limit(wm, tmp_path, monkeypatch):
    """A model of a user's env ("module:Id", as --env takes it) dreams episodes as long as the real ones."""
    (tmp_path / "short_envs_for_test.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('ShortGrid-v0', entry_point='envs.gridworld:GridWorldEnv', max_episode_steps=7)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    wm.env_id = "short_envs_for_test:ShortGrid-v0"
    try:
        assert DreamEnv(wm).max_episode_steps == DreamVectorEnv(2, wm).max_episode_steps == 7
        assert wm.real_env_id() == "short_envs_for_test:ShortGrid-v0"
        wm.env_id = "no_such_module_for_test:Gone-v0"  # a checkpoint used away from its env's module
        assert DreamEnv(wm).max_episode_steps == 1000
        with pytest.raises(ValueError, match="trained on 'no_such_module_for_test:Gone-v0', which cannot be made"):
            wm.real_env_id()
    finally:
        wm.env_id = "WM-GridWorld-v0"
        gym.registry.pop("ShortGrid-v0", None)


def test_dreams_step_only_after_reset_and_refuse_what_they_do_not_offer(wm):
    with pytest.raises(gym.error.ResetNeeded):
        DreamEnv(wm).step(0)
    vec = DreamVectorEnv(3, wm)
    with pytest.raises(gym.error.ResetNeeded):
        vec.step(np.zeros(3, np.int64))  # the default make_vec path has no OrderEnforcing wrapper
    with pytest.raises(ValueError, match="one int seed for all its dreams"):
        vec.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="render_mode must be one of \\['rgb_array'\\]"):
        gym.make_vec("WM-Dream-v0", num_envs=2, world_model=wm, render_mode="human")
    with pytest.raises(ValueError, match="takes options {'reset_mask': ...} only"):
        vec.reset(options={"frame": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ValueError, match="options {'frame': ...} only"):
        DreamEnv(wm).reset(options={"reset_mask": True})


def test_dreams_end_where_the_datas_env_ends(wm):
    """collect --env-kwargs '{"max_episode_steps": 20}' makes 20-step real episodes, so 20-step dreams."""
    wm.env_kwargs = {"max_episode_steps": 20}
    try:
        assert DreamEnv(wm).max_episode_steps == DreamVectorEnv(2, wm).max_episode_steps == 20
        assert wm.make_env().spec.max_episode_steps == wm.episode_limit() == 20
        assert wm.episode_limit("CartPole-v1") == 500  # another env: its own limit
    finally:
        wm.env_kwargs = {}


def test_training_v_from_python_marks_m_and_c_stale():
    model = tiny_world_model()
    model.train_state["cmaes"] = {"generation": 1}
    with pytest.warns(UserWarning, match="training V further makes its trained MDN-RNN and controller stale"):
        model.train_vae(gridworld_frames(8), epochs=1, batch_size=4)
    assert set(model.train_state) == {"vae"}
    with pytest.raises(ValueError, match="no trained MDN-RNN"):
        DreamEnv(model)


@pytest.mark.parametrize("threshold", [-0.5, float("nan"), "0.5"])
def test_a_done_threshold_that_is_not_a_probability_bound_is_refused(wm, threshold):
    for make in (lambda: DreamEnv(wm, done_threshold=threshold),
                 lambda: DreamVectorEnv(2, wm, done_threshold=threshold)):
        with pytest.raises(ValueError, match="done_threshold must be a number >= 0"):
            make()


def test_done_threshold_decides_termination(wm):
    env = DreamEnv(wm, done_threshold=0.0)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(0)
    assert terminated and 0 < info["done_probability"] < 1
    env = DreamEnv(wm, done_threshold=1.0)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(0)
    assert not terminated


def test_pixel_observations(wm):
    env = gym.make("WM-Dream-v0", world_model=wm, observation="pixels", render_mode="rgb_array")
    assert env.observation_space == spaces.Box(0, 255, (64, 64, 3), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs, *_ = env.step(1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), obs)


def test_pixel_observation_is_the_decoded_latent(wm):
    frame = gridworld_frames(1, first_seed=3)[0]
    pix = DreamEnv(wm, observation="pixels", temperature=0.0)
    lat = DreamEnv(wm, observation="latent", temperature=0.0)
    p, _ = pix.reset(options={"frame": frame})
    z, _ = lat.reset(options={"frame": frame})
    np.testing.assert_array_equal(p, wm.decode(torch.as_tensor(z[None, : wm.config.z_size]))[0])


# -- the vector dream --------------------------------------------------------------------------------
def test_make_vec_gives_the_batched_dream(wm):
    env = gym.make_vec("WM-Dream-v0", num_envs=8, world_model=wm)
    assert isinstance(env, DreamVectorEnv) and env.num_envs == 8
    single = DreamEnv(wm).observation_space
    assert env.single_observation_space == single and env.single_action_space == spaces.Discrete(4)
    assert env.observation_space == gym.vector.utils.batch_space(single, 8)
    assert env.action_space == spaces.MultiDiscrete([4] * 8)
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == (8, single.shape[0]) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)
    obs, rewards, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.shape == (8, single.shape[0]) and rewards.shape == terminated.shape == truncated.shape == (8,)
    assert terminated.dtype == truncated.dtype == np.bool_
    assert env.observation_space.contains(obs)


def test_vector_dream_is_seeded(wm):
    def run(seed):
        env = gym.make_vec("WM-Dream-v0", num_envs=4, world_model=wm, temperature=1.0)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for t in range(8):
            obs, r, te, tr, _ = env.step(np.array(_actions(4, seed=t)))
            out += [obs, r, te, tr]
        return out

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_vector_autoreset_next_step_after_truncation(wm):
    n, limit = 3, 3
    env = DreamVectorEnv(n, wm, max_episode_steps=limit, done_threshold=1.1)  # only truncation ends episodes
    env.reset(seed=0)
    z = wm.config.z_size
    bank = wm.vae.indices_to_latent(wm.start_codes).numpy()
    for t in range(1, 12):
        obs, rewards, terminated, truncated, _ = env.step(np.zeros(n, np.int64))
        assert not terminated.any()
        phase = t % (limit + 1)  # steps 1..limit of an episode, then 0: the autoreset step
        if phase == 0:
            assert not truncated.any() and (rewards == 0).all()
            assert not obs[:, z:].any()  # fresh LSTM states
            for row in obs[:, :z]:
                assert any(np.array_equal(row, b) for b in bank)  # from a banked start frame
        else:
            np.testing.assert_array_equal(truncated, np.full(n, phase == limit))
            assert (rewards != 0).all()  # the reward head's output


def test_vector_autoreset_next_step_after_termination(wm):
    env = DreamVectorEnv(4, wm, done_threshold=0.0)  # every dreamt step terminates
    env.reset(seed=0)
    for t in range(6):
        obs, rewards, terminated, truncated, _ = env.step(np.ones(4, np.int64))
        assert not truncated.any()
        if t % 2 == 0:
            assert terminated.all() and (rewards != 0).all()
        else:
            assert not terminated.any() and (rewards == 0).all()
            assert not obs[:, wm.config.z_size :].any()


def test_vector_env_row_matches_a_single_dream_at_temperature_zero(wm):
    """Rows are independent: row i of the batch dreams what one DreamEnv dreams from the same start."""
    n = 5
    venv = DreamVectorEnv(n, wm, temperature=0.0)
    obs, _ = venv.reset(seed=1)
    z = wm.config.z_size
    bank = wm.vae.indices_to_latent(wm.start_codes).numpy()
    frames = gridworld_frames(len(bank))  # the frames the bank was made from
    starts = [next(j for j in range(len(bank)) if np.array_equal(obs[i, :z], bank[j])) for i in range(n)]
    steps = 6
    actions = np.random.default_rng(0).integers(4, size=(steps, n))
    vec = [obs]
    for t in range(steps):
        vec.append(venv.step(actions[t])[:4])
    for i in range(n):
        env = DreamEnv(wm, temperature=0.0)
        o, _ = env.reset(options={"frame": frames[starts[i]]})
        np.testing.assert_allclose(o, vec[0][i], atol=1e-5)
        for t in range(steps):
            o, r, te, tr, _ = env.step(int(actions[t, i]))
            vo, vr, vte, vtr = vec[t + 1]
            np.testing.assert_allclose(o, vo[i], atol=1e-4)
            assert r == pytest.approx(vr[i], abs=1e-4)
            assert (te, tr) == (bool(vte[i]), bool(vtr[i]))
            if te or tr:
                break


def test_vector_env_validation(wm):
    env = DreamVectorEnv(4, wm)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="not in the action space"):
        env.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="num_envs"):
        DreamVectorEnv(0, wm)
    with pytest.raises(ValueError, match="latent"):
        DreamVectorEnv(2, wm, observation="pixels")


# -- LatentObservation -------------------------------------------------------------------------------
def test_latent_observation_encodes_frames_and_steps_the_lstm(wm):
    env = LatentObservation(gym.make("WM-GridWorld-v0"), wm)
    obs, info = env.reset(seed=3)
    z = wm.config.z_size
    np.testing.assert_array_equal(obs[:z], wm.encode(info["frame"][None])[0].numpy())
    assert not obs[z:].any()
    obs2, reward, terminated, truncated, info2 = env.step(1)
    np.testing.assert_array_equal(obs2[:z], wm.encode(info2["frame"][None])[0].numpy())
    with torch.no_grad():
        _, hidden = wm.rnn.eval()(torch.as_tensor(obs[None, None, :z]), torch.tensor([[1]]))
    np.testing.assert_allclose(obs2[z:], hidden[0][0, 0].numpy(), atol=1e-6)
    assert env.observation_space.contains(obs2)


def test_latent_observation_check_env(wm):
    env = LatentObservation(gym.make("WM-GridWorld-v0"), wm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    assert _findings(caught) == []


def test_latent_observation_rejects_non_64x64_envs(wm):
    with pytest.raises(ValueError, match="64x64x3"):
        LatentObservation(gym.make("CartPole-v1"), wm)
    with pytest.raises(ValueError, match="64x64x3"):
        LatentObservation(ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"), size=32), wm)


def test_latent_observation_rejects_mismatched_action_spaces(wm):
    # right frames, wrong actions: CartPole seen as 64x64 pictures has Discrete(2)
    with pytest.raises(ValueError, match="action space"):
        LatentObservation(ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array")), wm)
    five = tiny_world_model(action_dim=5)
    with pytest.raises(ValueError, match="action space"):
        LatentObservation(gym.make("WM-GridWorld-v0"), five)
    box = tiny_world_model(action_dim=4, discrete_actions=False)
    with pytest.raises(ValueError, match="action space"):
        LatentObservation(gym.make("WM-GridWorld-v0"), box)


def test_gym_makes_max_episode_steps_shortens_dreams_and_the_dreams_own_cap_lengthens_them(wm):
    """gym.make keeps max_episode_steps for its TimeLimit (the env never sees it): as the docstring says,
    it ends dreams sooner, not later; DreamEnv's and the batched dream's own argument set the cap."""
    cap = wm.episode_limit()
    kwargs = dict(world_model=wm, done_threshold=2.0, temperature=0.0)

    def length(reset, step) -> int:
        reset(seed=0)
        steps = 1
        while not step():
            steps += 1
        return steps

    short, long = gym.make("WM-Dream-v0", max_episode_steps=cap - 5, **kwargs), DreamEnv(max_episode_steps=cap + 7,
                                                                                         **kwargs)
    batched = gym.make_vec("WM-Dream-v0", num_envs=2, max_episode_steps=cap + 7, **kwargs)
    assert length(short.reset, lambda: short.step(0)[3]) == cap - 5
    assert length(long.reset, lambda: long.step(0)[3]) == cap + 7
    assert length(batched.reset, lambda: batched.step(np.zeros(2, np.int64))[3][0]) == cap + 7


def test_the_vector_dream_renders_a_tuple_and_reports_done_probabilities(wm):
    venv = DreamVectorEnv(3, wm, render_mode="rgb_array")
    venv.reset(seed=0)
    frames = venv.render()
    # VectorEnv.render's contract
    assert isinstance(frames, tuple) and len(frames) == 3 and frames[0].shape == (64, 64, 3)
    info = venv.step(np.zeros(3, np.int64))[4]
    assert info["done_probability"].shape == (3,) and info["_done_probability"].all()
    assert ((0 <= info["done_probability"]) & (info["done_probability"] <= 1)).all()


def test_gymnasiums_vector_record_video_films_the_batched_dream(wm, tmp_path):
    pytest.importorskip("moviepy")  # Gymnasium's RecordVideo needs it; wm-agent does not depend on it
    from gymnasium.wrappers.vector import RecordVideo

    recorded = RecordVideo(DreamVectorEnv(2, wm, render_mode="rgb_array"), str(tmp_path / "videos"),
                           episode_trigger=lambda e: True)
    recorded.reset(seed=0)  # Gymnasium's vector wrapper asserts a sequence of frames here
    recorded.step(np.zeros(2, np.int64))
    recorded.close()


def test_a_device_for_a_model_in_memory_on_another_device_is_refused(wm):
    with pytest.raises(ValueError, match="applies to a checkpoint path"):
        DreamEnv(wm, device="meta")
    DreamEnv(wm, device="cpu")  # its own device is fine


def test_the_vector_dream_resets_only_the_masked_dreams(wm):
    venv = DreamVectorEnv(3, wm, temperature=0.0)
    with pytest.raises(ValueError, match="first reset starts every dream"):
        venv.reset(seed=0, options={"reset_mask": np.array([True, False, True])})
    venv.reset(seed=0)
    for _ in range(2):
        obs = venv.step(np.array([1, 2, 3]))[0]
    before = venv._batch.steps.copy()
    again, _ = venv.reset(options={"reset_mask": np.array([False, True, False])})
    assert np.array_equal(again[[0, 2]], obs[[0, 2]])  # the others go on where they were
    assert list(venv._batch.steps) == [before[0], 0, before[2]]
    for bad in (np.array([1, 0, 1]), np.array([True, False]), "all"):
        with pytest.raises(ValueError, match="reset_mask must be a bool array"):
            venv.reset(options={"reset_mask": bad})
    with pytest.raises(ValueError, match="at least one dream"):
        venv.reset(options={"reset_mask": np.zeros(3, bool)})


def test_a_partial_reset_leaves_the_other_dreams_random_future_alone(wm):
    a, b = DreamVectorEnv(3, wm, temperature=1.0), DreamVectorEnv(3, wm, temperature=1.0)
    for venv in (a, b):
        venv.reset(seed=1)
        venv.step(np.array([1, 2, 3]))
    a.reset(options={"reset_mask": np.array([False, False, True])})
    for _ in range(3):
        assert np.array_equal(a.step(np.array([0, 1, 2]))[0][:2], b.step(np.array([0, 1, 2]))[0][:2])
    with pytest.raises(ValueError, match="reset_mask"):
        venv.reset(options={"frame": None})


def test_latent_observation_hands_the_env_an_array_and_m_the_clipped_action():
    wm = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    env = LatentObservation(gym.make("WM-CarRacing-v0"), wm)
    env.reset(seed=0)
    for action in ([0.0, 0.5, 0.0], (0.0, 0.5, 0.0), np.array([2.0, 0.5, -1.0])):  # CarRacing calls .astype on it
        obs, *_ = env.step(action)
        assert env.observation_space.contains(obs)
    env.close()
