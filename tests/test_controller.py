"""C: the controller's parameter layout, batched evaluation, bounds and action choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_config

from wm_agent.controller import Controller, choose_actions

CONTINUOUS = dict(discrete_actions=False, action_dim=3, action_low=(-1.0, 0.0, 0.0), action_high=(1.0, 1.0, 1.0))


def _controller(hidden: int = 0, continuous: bool = False, seed: int = 0) -> Controller:
    cfg = tiny_config(controller_hidden=hidden, **(CONTINUOUS if continuous else {}))
    c = Controller(cfg)
    c.set_flat(np.random.default_rng(seed).normal(size=c.num_params))
    return c


@pytest.mark.parametrize("hidden", [0, 8])
@pytest.mark.parametrize("continuous", [False, True])
def test_param_count_matches_the_config(hidden, continuous):
    c = _controller(hidden, continuous)
    cfg = c.config
    inputs = cfg.z_size + cfg.hidden_size
    a = cfg.action_dim
    expected = inputs * a + a if not hidden else inputs * hidden + hidden + hidden * a + a
    assert c.num_params == cfg.controller_params == expected
    assert c.get_flat().shape == (expected,) and c.get_flat().dtype == np.float64
    assert c.params.numel() == expected
    assert sum(int(np.prod(s)) for s in c.shapes) == expected


def test_paper_sized_controller_count():
    # the paper's controller: z=32, h=256, 3 actions -> 867 parameters
    inputs, actions = 32 + 256, 3
    assert inputs * actions + actions == 867
    cfg = tiny_config(latent_grid=4, channels=(4, 4, 4, 4), latent_dim=2, hidden_size=256, **CONTINUOUS)
    assert cfg.z_size == 32 and cfg.controller_params == 867


def test_set_flat_round_trip_and_shape_check():
    c = _controller()
    values = np.arange(c.num_params, dtype=np.float64) / 1000
    c.set_flat(values)
    np.testing.assert_allclose(c.get_flat(), values, rtol=1e-6)
    for bad in (np.zeros(c.num_params - 1), np.zeros(c.num_params + 1), np.zeros((1, c.num_params)), np.zeros(0)):
        with pytest.raises(ValueError, match=str(c.num_params)):
            c.set_flat(bad)
    np.testing.assert_allclose(c.get_flat(), values, rtol=1e-6)  # a refused vector changes nothing


@pytest.mark.parametrize("hidden", [0, 8])
@pytest.mark.parametrize("continuous", [False, True])
def test_batched_with_identical_params_equals_from_obs(hidden, continuous):
    c = _controller(hidden, continuous)
    c.fit_normalizer(torch.randn(100, c.in_dim) * 2 + 0.5)
    obs = torch.randn(6, c.in_dim)
    theta = torch.as_tensor(c.get_flat(), dtype=torch.float32).expand(6, -1)
    batched = c.batched(theta, c.normalize(obs))
    torch.testing.assert_close(batched, c.from_obs(obs))


@pytest.mark.parametrize("hidden", [0, 8])
def test_batched_row_i_uses_params_i(hidden):
    c = _controller(hidden)
    rng = np.random.default_rng(1)
    params = rng.normal(size=(4, c.num_params))
    obs = torch.randn(4, c.in_dim)
    out = c.batched(torch.as_tensor(params, dtype=torch.float32), c.normalize(obs))
    for i in range(4):
        c.set_flat(params[i])
        torch.testing.assert_close(out[i], c.from_obs(obs[i]))


def test_linear_controller_is_the_affine_map():
    c = _controller()
    c.fit_normalizer(torch.randn(50, c.in_dim))
    n_w = c.in_dim * c.out_dim
    flat = torch.as_tensor(c.get_flat(), dtype=torch.float32)
    w, b = flat[:n_w].view(c.in_dim, c.out_dim), flat[n_w:]
    obs = torch.randn(3, c.in_dim)
    torch.testing.assert_close(c.from_obs(obs), c.normalize(obs) @ w + b)


def test_forward_concatenates_z_and_h():
    c = _controller()
    z, h = torch.randn(2, 5, c.config.z_size), torch.randn(2, 5, c.config.hidden_size)
    out = c(z, h)
    assert out.shape == (2, 5, c.config.action_dim)
    torch.testing.assert_close(out, c.from_obs(torch.cat([z, h], -1)))


def test_from_obs_rejects_the_wrong_size():
    c = _controller()
    with pytest.raises(ValueError, match=str(c.in_dim)):
        c.from_obs(torch.zeros(2, c.in_dim + 1))


@pytest.mark.parametrize("hidden", [0, 8])
def test_continuous_outputs_lie_within_bounds(hidden):
    c = _controller(hidden, continuous=True)
    low, high = torch.tensor([-1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    rng = np.random.default_rng(2)
    for scale in (0.1, 1.0, 100.0):
        params = torch.as_tensor(rng.normal(size=(64, c.num_params)) * scale, dtype=torch.float32)
        out = c.batched(params, torch.randn(64, c.in_dim) * 10)
        assert ((out >= low) & (out <= high)).all()
    # a zero controller outputs the middle of the box
    zero = c.batched(torch.zeros(1, c.num_params), torch.randn(1, c.in_dim))
    torch.testing.assert_close(zero[0], (low + high) / 2)


def test_discrete_outputs_are_unbounded_logits():
    c = _controller()
    out = c.batched(torch.full((1, c.num_params), 10.0), torch.ones(1, c.in_dim))
    assert out.shape == (1, 4) and out.abs().max() > 1


def test_normalizer():
    c = _controller()
    obs = torch.randn(200, c.in_dim) * torch.linspace(0.1, 5, c.in_dim) + 3
    obs[:, 0] = 7.0  # a constant input: std clamped, not divided by zero
    c.fit_normalizer(obs)
    n = c.normalize(obs)
    assert torch.isfinite(n).all()
    torch.testing.assert_close(n.mean(0), torch.zeros(c.in_dim), atol=1e-4, rtol=0)
    torch.testing.assert_close(n[:, 1:].std(0), torch.ones(c.in_dim - 1), atol=1e-4, rtol=0)
    assert float(c.obs_std[0]) == pytest.approx(1e-2)
    assert "obs_mean" in c.state_dict() and "obs_std" in c.state_dict()  # saved with the model


def test_choose_actions():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    assert choose_actions(logits, True, greedy=True).tolist() == [1, 0]
    a = choose_actions(logits.expand(500, 2, 4).reshape(1000, 4), True, False, torch.Generator().manual_seed(0))
    b = choose_actions(logits.expand(500, 2, 4).reshape(1000, 4), True, False, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1000,)
    assert ((a >= 0) & (a < 4)).all()
    first = a[0::2]
    share = torch.softmax(logits[0], -1)
    for k in range(4):
        assert float((first == k).float().mean()) == pytest.approx(float(share[k]), abs=0.06)
    cont = torch.rand(3, 2)
    assert torch.equal(choose_actions(cont, False, greedy=False), cont)
