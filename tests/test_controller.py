"""C: the controller's parameter layout, batched evaluation, bounds and action choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_config

from wm_agent.config import WorldModelConfig
from wm_agent.models.controller import Controller, choose_actions

CONTINUOUS = dict(discrete_actions=False, action_dim=3, action_low=(-1.0, 0.0, 0.0), action_high=(1.0, 1.0, 1.0))


def _codebook(num: int = 8, dim: int = 4) -> torch.Tensor:
    """Code 0 is the zero vector, code k + 1 the unit vector of latent dim k, then twice the unit vectors."""
    eye = torch.eye(dim)
    return torch.cat([torch.zeros(1, dim), eye, 2 * eye])[:num]


def _controller(hidden: int = 0, continuous: bool = False, seed: int = 0, kind: str = "linear") -> Controller:
    cfg = tiny_config(controller_hidden=hidden, controller=kind, **(CONTINUOUS if continuous else {}))
    c = Controller(cfg, _codebook(cfg.num_embeddings, cfg.latent_dim))
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
    cfg = tiny_config(latent_grid=4, channels=(4, 4, 4, 4), latent_dim=2, hidden_size=256, controller="linear",
                      **CONTINUOUS)
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
@pytest.mark.parametrize("kind", ["linear", "keypoint"])
def test_batched_with_identical_params_equals_from_obs(hidden, continuous, kind):
    c = _controller(hidden, continuous, kind=kind)
    c.fit_normalizer(torch.randn(100, c.in_dim) * 2 + 0.5)
    obs = torch.randn(6, c.in_dim)
    theta = torch.as_tensor(c.get_flat(), dtype=torch.float32).expand(6, -1)
    batched = c.batched(theta, c.normalize(obs))
    torch.testing.assert_close(batched, c.from_obs(obs))


@pytest.mark.parametrize("hidden", [0, 8])
@pytest.mark.parametrize("kind", ["linear", "keypoint"])
def test_batched_row_i_uses_params_i(hidden, kind):
    c = _controller(hidden, kind=kind)
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


def test_choose_actions_from_given_uniforms_is_the_inverse_cdf():
    probs = torch.tensor([0.2, 0.3, 0.5])
    logits = probs.log().expand(6, 3)
    u = torch.tensor([0.0, 0.1, 0.25, 0.55, 0.9, 0.999999])
    assert choose_actions(logits, True, False, uniforms=u).tolist() == [0, 0, 1, 2, 2, 2]
    # Uniform numbers give each action its softmax share, like the generator's samples.
    many = choose_actions(torch.zeros(4000, 4) + torch.tensor([0.0, 1.0, 2.0, 0.5]), True, False,
                          uniforms=torch.rand(4000, generator=torch.Generator().manual_seed(0)))
    share = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.5]), -1)
    for k in range(4):
        assert float((many == k).float().mean()) == pytest.approx(float(share[k]), abs=0.03)


# -- the keypoint controller ---------------------------------------------------------------------------
def _one_hot_grid(cells: dict[tuple[int, int], int], g: int = 8, d: int = 4) -> torch.Tensor:
    """A latent grid (g*g*d,) with latent dim k set to 1 at each given cell: code k + 1 of ``_codebook``,
    every other cell code 0."""
    z = torch.zeros(g, g, d)
    for (r, col), k in cells.items():
        z[r, col, k] = 1.0
    return z.flatten()


@pytest.mark.parametrize("keypoints,hidden", [(1, 0), (2, 0), (3, 0), (2, 8)])
def test_keypoint_param_layout(keypoints, hidden):
    c = Controller(tiny_config(controller="keypoint", controller_keypoints=keypoints, controller_hidden=hidden))
    e, a = c.config.num_embeddings, c.config.action_dim
    features = 2 * keypoints + keypoints * 9 * (e + 1) + 4 * (keypoints * (keypoints - 1) // 2)
    head = features * a + a if not hidden else features * hidden + hidden + hidden * a + a
    assert c.num_params == c.config.controller_params == keypoints * e + head + 1  # + the logit gain
    assert sum(int(np.prod(s)) for s in c.shapes) == c.num_params
    # far fewer than the linear controller on concat(z, h): that is the point of it
    if not hidden:
        assert c.num_params < Controller(tiny_config(controller="linear")).num_params


def test_keypoints_find_their_cells_and_glimpse_the_neighbourhood():
    c = _controller(kind="keypoint")
    g, e = c.config.latent_grid, c.config.num_embeddings
    obs = torch.cat([_one_hot_grid({(0, 3): 0, (5, 6): 1, (1, 3): 2}), torch.zeros(c.config.hidden_size)])[None]
    score = torch.zeros(1, 2, e)
    score[0, 0, 1] = score[0, 1, 2] = 5.0  # keypoint 0 looks for code 1, keypoint 1 for code 2
    feats = c.keypoint_features(score, obs)[0]
    where = feats[:4].view(2, 2) * g + (g - 1) / 2
    torch.testing.assert_close(where, torch.tensor([[0.0, 3.0], [5.0, 6.0]]), atol=1e-3, rtol=0)
    glimpse = feats[4 : 4 + 9 * (e + 1)].view(e + 1, 3, 3)  # unfold order: channel, then 3x3 offsets
    assert torch.all(glimpse[e, 0] < 1e-3) and torch.all(glimpse[e, 1:] > 0.999)  # row above is off the grid
    assert glimpse[3, 2, 1] > 0.999 and glimpse[3].sum() == pytest.approx(1.0, abs=1e-3)  # (1,3) below
    assert glimpse[0, 1:].sum() == pytest.approx(4.0, abs=1e-3)  # code 0 (empty) on the 4 other on-grid cells
    assert glimpse[1, 1, 1] > 0.999  # the agent itself in the middle
    glimpse1 = feats[4 + 9 * (e + 1) : 4 + 18 * (e + 1)].view(e + 1, 3, 3)  # around (5, 6): all on the grid
    assert glimpse1[2, 1, 1] > 0.999 and torch.all(glimpse1[e] > 0.999)
    delta = feats[4 + 18 * (e + 1) : 4 + 18 * (e + 1) + 2]
    torch.testing.assert_close(delta * g, torch.tensor([5.0, 3.0]), atol=1e-3, rtol=0)


def test_keypoint_controller_can_express_move_towards_the_goal_around_obstacles():
    """Weights set by hand (no search): "towards the goal, not into an obstacle or off the grid" is
    linear in the keypoint features, for every agent/goal placement tried."""
    c = _controller(kind="keypoint")
    g, e = c.config.latent_grid, c.config.num_embeddings
    moves = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # GridWorld's up, right, down, left
    theta = torch.zeros(c.num_params)
    score = theta[: 2 * e].view(2, e)
    score[0, 1] = score[1, 2] = 5.0  # code 1 = agent, code 2 = goal, code 3 = obstacle
    w = theta[2 * e : 2 * e + c.config.controller_features * 4].view(-1, 4)
    glimpse_at = 4  # after the two keypoints' (row, col)
    sign_at = 4 + 18 * (e + 1) + 2
    for a, (dr, dc) in enumerate(moves):
        w[sign_at, a], w[sign_at + 1, a] = dr, dc  # towards the goal along each axis
        offset = (dr + 1) * 3 + (dc + 1)
        w[glimpse_at + 3 * 9 + offset, a] = -10.0  # an obstacle in that neighbour
        w[glimpse_at + e * 9 + offset, a] = 10.0  # the neighbour is on the grid
    rng = np.random.default_rng(0)
    for _ in range(200):
        agent, goal, block = (tuple(int(v) for v in rng.integers(g, size=2)) for _ in range(3))
        if len({agent, goal, block}) < 3:
            continue
        obs = torch.cat([_one_hot_grid({agent: 0, goal: 1, block: 2}), torch.zeros(c.config.hidden_size)])[None]
        a = int(c.batched(theta[None], obs).argmax())
        nxt = (agent[0] + moves[a][0], agent[1] + moves[a][1])
        assert 0 <= nxt[0] < g and 0 <= nxt[1] < g and nxt != block
        before = abs(goal[0] - agent[0]) + abs(goal[1] - agent[1])
        after = abs(goal[0] - nxt[0]) + abs(goal[1] - nxt[1])
        if nxt != block and (agent[0] + np.sign(goal[0] - agent[0]), agent[1]) != block and \
                (agent[0], agent[1] + np.sign(goal[1] - agent[1])) != block:
            assert after == before - 1  # nothing in the way: a step closer


def test_keypoint_controller_last_parameter_is_the_log_gain_of_its_logits():
    c = _controller(kind="keypoint")
    theta = torch.as_tensor(np.random.default_rng(4).normal(size=(1, c.num_params)), dtype=torch.float32)
    obs = torch.randn(1, c.in_dim)
    sharper = theta.clone()
    sharper[0, -1] += float(np.log(3.0))
    torch.testing.assert_close(c.batched(sharper, obs), 3.0 * c.batched(theta, obs))


@pytest.mark.parametrize("hidden", [0, 8])
def test_param_scales_shrink_keypoint_scores_and_glimpse_weights(hidden):
    c = _controller(hidden=hidden, kind="keypoint")
    cfg = c.config
    k, e, cols = cfg.controller_keypoints, cfg.num_embeddings, hidden or cfg.action_dim
    scales = c.param_scales()
    assert scales.shape == (c.num_params,)
    np.testing.assert_array_equal(scales[: k * e], 0.1)
    readout = scales[k * e : k * e + cfg.controller_features * cols].reshape(-1, cols)
    glimpses = slice(2 * k, 2 * k + k * 9 * (e + 1))
    np.testing.assert_array_equal(readout[glimpses], 1 / 3)
    np.testing.assert_array_equal(readout[: 2 * k], 1.0)  # where the keypoints are
    np.testing.assert_array_equal(readout[glimpses.stop :], 1.0)  # their offsets
    np.testing.assert_array_equal(scales[k * e + readout.size :], 1.0)  # biases, later layers, the gain
    np.testing.assert_array_equal(_controller(kind="linear").param_scales(), 1.0)


def test_keypoint_controller_reads_z_as_codes():
    c = _controller(kind="keypoint")
    obs = torch.randn(300, c.in_dim) * 3 + 1
    c.fit_normalizer(obs)
    zs = c.config.z_size
    assert torch.all(c.obs_mean[:zs] == 0) and torch.all(c.obs_std[:zs] == 1)  # z untouched: it is read as codes
    assert torch.all(c.obs_std[zs:] != 1)  # h is still standardised
    cells = c.code_memberships(_codebook()[None] + 0.01)  # each code, slightly off: itself
    torch.testing.assert_close(cells[0], torch.eye(8), atol=1e-3, rtol=0)
    bare = Controller(tiny_config(controller="keypoint"))
    with pytest.raises(ValueError, match="codebook"):
        bare.from_obs(torch.zeros(1, bare.in_dim))


def test_near_duplicate_codes_read_alike():
    codebook = _codebook()
    codebook[5] = codebook[1] + 1e-3  # what EMA dead-code restarts leave behind
    c = Controller(tiny_config(controller="keypoint"), codebook)
    cells = c.code_memberships(codebook[None])[0]
    torch.testing.assert_close(cells[1], cells[5], atol=1e-3, rtol=0)
    assert cells[1, 1] == pytest.approx(0.5, abs=1e-3) and cells[1, 5] == pytest.approx(0.5, abs=1e-3)
    assert cells[1, 2] < 1e-3 and cells.sum(1).allclose(torch.ones(8))  # a cell is one unit, shared out


def test_unknown_controller_kind_is_refused():
    with pytest.raises(ValueError, match="controller must be"):
        tiny_config(controller="transformer")


def test_keypoints_start_on_the_rarest_kinds_of_cell():
    codebook = _codebook()
    codebook[5] = codebook[2] + 1e-3  # code 5 duplicates code 2
    c = Controller(tiny_config(controller="keypoint", controller_keypoints=3), codebook)
    g = c.config.hidden_size
    # code 0 everywhere but: code 1 on 10 cells, code 2/5 (one kind) on one cell, code 3 on 3 cells
    grids = []
    for shift in range(4):
        cells = {(r, (col + shift) % 8): 0 for r, col in [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1),
                                                          (1, 2), (1, 3), (1, 4)]}
        cells.update({(5, shift): 1, (6, 0): 2, (6, 1): 2, (6, 2): 2})
        grids.append(torch.cat([_one_hot_grid(cells), torch.zeros(g)]))
    x0 = c.initial_params(torch.stack(grids))
    scores = torch.as_tensor(x0[: 3 * 8]).view(3, 8)
    assert scores[0, 2] > 0 and scores[0, 5] > 0 and scores[0].count_nonzero() == 2  # rarest: the 2/5 kind
    assert scores[1, 3] > 0 and scores[1].count_nonzero() == 1  # then code 3 (3 cells)
    assert scores[2, 1] > 0 and scores[2].count_nonzero() == 1  # then code 1 (10 cells); never the background
    assert not x0[3 * 8 :].any()  # the readout starts at zero
    feats = c.keypoint_features(torch.as_tensor(x0[: 3 * 8], dtype=torch.float32).view(1, 3, 8), grids[0][None])
    where = feats[0, :6].view(3, 2) * 8 + 3.5
    torch.testing.assert_close(where[0], torch.tensor([5.0, 0.0]), atol=0.15, rtol=0)  # sharp from the start
    assert not Controller(tiny_config(controller="linear"), codebook).initial_params(torch.stack(grids)).any()


def test_squashed_actions_stay_inside_asymmetric_bounds():
    """tanh at 1 put float32 rounding just above 0.2 (0.20000005), outside the env's own Box."""
    cfg = tiny_config(discrete_actions=False, action_dim=2, action_low=(-1.0, -2.0), action_high=(0.2, 0.15))
    controller = Controller(cfg)
    out = torch.tensor([[50.0, 50.0], [-50.0, -50.0], [0.0, 0.0]])
    actions = controller.squash(out)
    assert torch.all(actions <= controller.high) and torch.all(actions >= controller.low)
    assert actions[0].tolist() == controller.high.tolist() and actions[1].tolist() == controller.low.tolist()


# -- reading principal directions (controller_pca) ------------------------------------------------------------
def _low_rank_observations(c: Controller, rank: int, n: int = 200, seed: int = 0) -> torch.Tensor:
    """Observations whose standardised values span ``rank`` directions, around an offset."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, c.in_dim)) + rng.normal(size=c.in_dim)
    return torch.as_tensor(x, dtype=torch.float32)


def test_pca_controller_reads_k_whitened_directions():
    c = Controller(tiny_config(controller="linear", controller_pca=6))
    assert c.num_params == c.config.controller_params == 6 * c.out_dim + c.out_dim and c.features == 6
    obs = _low_rank_observations(c, rank=10)
    c.fit_normalizer(obs)
    features = c.normalize(obs)
    assert features.shape == (len(obs), 6)
    torch.testing.assert_close(features.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.std(0), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(features.T @ features / (len(obs) - 1), torch.eye(6), atol=1e-4, rtol=0)


def test_a_full_linear_controller_carried_over_acts_alike_on_its_subspace():
    """On observations that lie in the k principal directions the carried-over controller is the same map;
    with fewer directions than the data has, the more it keeps, the nearer it acts."""
    full = _controller()  # discrete: its outputs are the affine map itself (logits)
    obs = _low_rank_observations(full, rank=5)
    full.fit_normalizer(obs)
    errors = {}
    for k in (1, 3, 5):
        small = Controller(tiny_config(controller="linear", controller_pca=k))
        small.obs_mean.copy_(full.obs_mean)
        small.obs_std.copy_(full.obs_std)
        small.fit_projection(obs)
        small.set_flat(small.params_from_full(full.get_flat()))
        with torch.no_grad():
            errors[k] = float((small.from_obs(obs) - full.from_obs(obs)).abs().mean())
    with torch.no_grad():
        scale = float(full.from_obs(obs).abs().mean())
    assert errors[5] < 1e-4 * scale < errors[3] < errors[1]


def test_a_pca_controller_spread_back_over_its_inputs_is_the_same_map():
    """full_params: a controller_pca readout as a full linear one with the same normaliser acts alike on any
    input, and params_from_full onto the same directions gives its parameters back."""
    full = _controller()
    obs = _low_rank_observations(full, rank=5)
    small = Controller(tiny_config(controller="linear", controller_pca=3))
    small.fit_normalizer(obs)
    small.set_flat(np.random.default_rng(0).normal(size=small.num_params))
    full.obs_mean.copy_(small.obs_mean)
    full.obs_std.copy_(small.obs_std)
    full.set_flat(small.full_params())
    x = torch.randn(20, full.in_dim)
    with torch.no_grad():
        torch.testing.assert_close(full.from_obs(x), small.from_obs(x), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(small.params_from_full(small.full_params()), small.get_flat(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="spreads a controller_pca readout"):
        full.full_params()


def test_step_factors_read_each_outputs_steps_from_the_end():
    """The output bias's steps, at the end of any controller's flat vector (before the keypoint log gain)."""
    for c in (_controller(), Controller(tiny_config(controller="linear", controller_pca=3))):
        factors = np.arange(1.0, c.out_dim + 1)
        np.testing.assert_allclose(c.step_factors(c.param_scales() * c.output_factors(factors)), factors)


def test_pca_settings_are_checked():
    with pytest.raises(ValueError, match="controller_pca .* is for the 'linear' controller"):
        tiny_config(controller="keypoint", controller_pca=4)
    with pytest.raises(ValueError, match="must not exceed the input's size"):
        tiny_config(controller="linear", controller_pca=10**6)
    c = Controller(tiny_config(controller="linear", controller_pca=8))
    with pytest.raises(ValueError, match="needs more than 8 observations, got 8"):
        c.fit_projection(torch.zeros(8, c.in_dim))
    with pytest.raises(ValueError, match="maps a full linear readout"):
        _controller().params_from_full(np.zeros(3))
    with pytest.raises(ValueError, match=r"expected \d+ parameters of a full linear readout"):
        c.params_from_full(np.zeros(3))


# -- how continuous outputs map onto the bounds (action_squash) -----------------------------------------------
def test_relu_squash_rests_at_the_low_bound_for_negative_outputs():
    cfg = tiny_config(controller="linear", **{**CONTINUOUS, "action_low": (-1.0, 0.0, 0.2)},
                      action_squash=("tanh", "tanh", "relu"))
    c = Controller(cfg)
    out = torch.tensor([[-3.0, -3.0, -3.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [30.0, 30.0, 30.0]])
    t = torch.tanh(torch.tensor([-3.0, 0.0, 0.5, 30.0]))
    expected = torch.stack([t, (t + 1) / 2, 0.2 + 0.8 * t.clamp_min(0)], -1)
    torch.testing.assert_close(c.squash(out), expected)
    plain = Controller(tiny_config(controller="linear", **CONTINUOUS))  # the default: every action 'tanh'
    torch.testing.assert_close(plain.squash(out), torch.stack([t, (t + 1) / 2, (t + 1) / 2], -1))


@pytest.mark.parametrize("squash, match", [(("tanh", "relu"), "must be empty or name one squash"),
                                           (("tanh", "tanh", "clip"), "must be one of")])
def test_action_squash_is_checked(squash, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(controller="linear", **CONTINUOUS, action_squash=squash)
    with pytest.raises(ValueError, match="must be empty or name one squash"):
        tiny_config(action_squash=("tanh",) * 4)  # GridWorld's discrete actions


def test_car_racing_preset_rests_the_brake_and_old_configs_squash_with_tanh():
    assert WorldModelConfig.car_racing().squashes == ("tanh", "tanh", "relu")
    old = WorldModelConfig.car_racing().to_dict()
    del old["action_squash"]  # a checkpoint saved before the field existed
    assert WorldModelConfig.from_dict(old).squashes == ("tanh", "tanh", "tanh")
