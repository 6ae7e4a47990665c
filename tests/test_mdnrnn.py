"""M: the MDN-RNN, its mixture NLL, loss and sampler."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_config
from torch import distributions as D

from wm_agent.models.mdnrnn import MDNRNN

B, T = 2, 3


def _rnn(continuous: bool = False, seed: int = 0, **overrides) -> MDNRNN:
    cfg = tiny_config(discrete_actions=False, action_dim=3, **overrides) if continuous else tiny_config(**overrides)
    torch.manual_seed(seed)
    return MDNRNN(cfg, torch.randn(cfg.num_embeddings, cfg.latent_dim))


def _inputs(rnn: MDNRNN, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = rnn.config
    z = torch.randn(B, T, cfg.z_size, generator=g)
    if cfg.discrete_actions:
        a = torch.randint(0, cfg.action_dim, (B, T), generator=g)
    else:
        a = torch.rand(B, T, cfg.action_dim, generator=g) * 2 - 1
    return z, a


# -- shapes and ranges -------------------------------------------------------------------------------
@pytest.mark.parametrize("continuous", [False, True])
def test_output_shapes(continuous):
    rnn = _rnn(continuous)
    cfg = rnn.config
    k, z_size, h = cfg.num_mixtures, cfg.z_size, cfg.hidden_size
    z, a = _inputs(rnn)
    params, hidden = rnn(z, a)
    assert params["pi"].shape == params["log_pi"].shape == (B, T, k)
    for name in ("mu", "sigma", "log_sigma"):
        assert params[name].shape == (B, T, k, z_size), name
    assert params["reward"].shape == params["done_logit"].shape == (B, T)
    assert hidden[0].shape == hidden[1].shape == (1, B, h)
    assert all(torch.isfinite(v).all() for v in params.values())


@pytest.mark.parametrize("continuous", [False, True])
@pytest.mark.parametrize("preset", ["tiny", "car_racing"])
def test_the_dream_steps_factored_first_layer_matches_the_dense_convolutions(continuous, preset):
    from wm_agent.config import WorldModelConfig

    if preset == "tiny":
        rnn = _rnn(continuous, seed=3)
    else:
        torch.manual_seed(3)
        rnn = MDNRNN(WorldModelConfig.car_racing(), torch.randn(64, 4))
    for p in rnn.parameters():  # trained-looking weights, not the near-zero initial conv outputs
        p.data.normal_(0, 0.3)
    cfg = rnn.config
    g = torch.Generator().manual_seed(1)
    n = 6
    # A dream grid: every cell an exact codebook vector, corners and edges included.
    codes = torch.randint(0, cfg.num_embeddings, (n, cfg.latent_grid ** 2), generator=g)
    z = rnn.codebook[codes].reshape(n, 1, cfg.z_size)
    if cfg.discrete_actions:
        a = torch.randint(0, cfg.action_dim, (n, 1), generator=g)
    else:
        a = torch.rand(n, 1, cfg.action_dim, generator=g) * 2 - 1
    with torch.no_grad():
        enc, out, _ = rnn._recur(z, a, None)
        dense, factored = rnn._heads(z, enc, out), rnn._heads_from_codes(z, codes, enc, out)
    assert dense.keys() == factored.keys()
    for key in dense:
        torch.testing.assert_close(factored[key], dense[key], rtol=1e-4, atol=1e-4, msg=key)
    assert dense["reward"].std() > 0.01 and dense["mu"].std() > 0.01  # the comparison saw real signal


def test_hidden_state_carries_over_between_calls():
    rnn = _rnn().eval()
    z, a = _inputs(rnn)
    with torch.no_grad():
        whole, _ = rnn(z, a)
        first, hidden = rnn(z[:, :2], a[:, :2])
        second, _ = rnn(z[:, 2:], a[:, 2:], hidden)
        fresh, _ = rnn(z[:, 2:], a[:, 2:])
    torch.testing.assert_close(first["mu"], whole["mu"][:, :2])
    torch.testing.assert_close(second["mu"], whole["mu"][:, 2:])
    torch.testing.assert_close(second["reward"], whole["reward"][:, 2:])
    assert not torch.allclose(fresh["pi"], whole["pi"][:, 2:])  # the state matters


def test_initial_state_is_zero():
    rnn = _rnn()
    h, c = rnn.initial_state(5)
    assert h.shape == c.shape == (1, 5, rnn.config.hidden_size)
    assert not h.any() and not c.any()
    z, a = _inputs(rnn)
    with torch.no_grad():
        p1, _ = rnn(z, a)
        p2, _ = rnn(z, a, rnn.initial_state(B))
    torch.testing.assert_close(p1["mu"], p2["mu"])


@pytest.mark.parametrize("continuous", [False, True])
def test_pi_is_a_distribution(continuous):
    rnn = _rnn(continuous)
    params, _ = rnn(*_inputs(rnn))
    assert (params["pi"] >= 0).all()
    torch.testing.assert_close(params["pi"].sum(-1), torch.ones(B, T))
    torch.testing.assert_close(params["log_pi"].exp(), params["pi"])
    torch.testing.assert_close(params["log_sigma"].exp(), params["sigma"])


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_sigma_within_bounds(scale):
    rnn = _rnn(min_log_sigma=-3.0, max_log_sigma=0.5)
    cfg = rnn.config
    if scale != 1.0:
        with torch.no_grad():
            for p in rnn.parameters():
                p.copy_(torch.randn_like(p) * scale)
    params, _ = rnn(*_inputs(rnn))
    sigma = params["sigma"]
    lo, hi = math.exp(cfg.min_log_sigma), math.exp(cfg.max_log_sigma)
    assert (sigma >= lo * (1 - 1e-6)).all() and (sigma <= hi * (1 + 1e-6)).all()
    assert ((params["log_sigma"] >= cfg.min_log_sigma - 1e-6) & (params["log_sigma"] <= cfg.max_log_sigma + 1e-6)).all()


def test_a_closed_gate_copies_the_cell_and_an_open_gate_writes_new_content():
    rnn = _rnn()
    k, d = rnn.config.num_mixtures, rnn.config.latent_dim
    z, a = _inputs(rnn)
    with torch.no_grad():  # no features reach the cell head: content = bias, gate = bias
        rnn.cell_head.weight.zero_()
        rnn.cell_head.bias.zero_()
        bias = rnn.cell_head.bias.view(k, 2 * d + 1)
        bias[:, :d] = 0.5  # the content written when the gate opens
        bias[:, -1] = 50.0  # keep
    torch.testing.assert_close(rnn(z, a)[0]["mu"], z.unsqueeze(-2).expand(*z.shape[:2], k, z.shape[-1]))
    with torch.no_grad():
        rnn.cell_head.bias.view(k, 2 * d + 1)[:, -1] = -50.0  # write
    mu = rnn(z, a)[0]["mu"]
    torch.testing.assert_close(mu, torch.full_like(mu, 0.5))


# -- the mixture NLL ---------------------------------------------------------------------------------
def _random_params(k: int, z: int, seed: int = 0, shape=(B, T)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, k, generator=g)
    log_sigma = torch.randn(*shape, k, z, generator=g) * 0.5
    return {
        "log_pi": torch.log_softmax(logits, -1),
        "mu": torch.randn(*shape, k, z, generator=g),
        "log_sigma": log_sigma,
        "sigma": log_sigma.exp(),
    }


def test_mixture_nll_with_one_component_is_the_gaussian_nll():
    params = _random_params(1, 6)
    target = torch.randn(B, T, 6)
    expected = -D.Normal(params["mu"][..., 0, :], params["sigma"][..., 0, :]).log_prob(target).sum(-1)
    torch.testing.assert_close(MDNRNN.mixture_nll(params, target), expected)


def test_mixture_nll_matches_torch_distributions():
    k, z = 4, 5
    params = _random_params(k, z, seed=1)
    target = torch.randn(B, T, z)
    mix = D.MixtureSameFamily(
        D.Categorical(logits=params["log_pi"]), D.Independent(D.Normal(params["mu"], params["sigma"]), 1)
    )
    torch.testing.assert_close(MDNRNN.mixture_nll(params, target), -mix.log_prob(target))


def test_mixture_nll_stays_finite_far_from_the_data():
    params = _random_params(3, 4)
    for p in params.values():
        p.requires_grad_(True)
    target = torch.full((B, T, 4), 1e6)
    nll = MDNRNN.mixture_nll(params, target)
    assert torch.isfinite(nll).all() and (nll > 1e9).all()  # astronomically unlikely, but a number
    nll.sum().backward()
    for name in ("log_pi", "mu", "log_sigma"):
        assert torch.isfinite(params[name].grad).all(), name


def _huge(continuous: bool) -> MDNRNN:
    rnn = _rnn(continuous)
    with torch.no_grad():
        for p in rnn.parameters():
            p.fill_(1e3)
    return rnn


@pytest.mark.parametrize("continuous", [False, True])
def test_mixture_nll_and_its_gradients_finite_for_huge_activations(continuous):
    rnn = _huge(continuous)
    z, a = _inputs(rnn)
    params, _ = rnn(z, a)
    assert all(torch.isfinite(v).all() for v in params.values())
    nll = MDNRNN.mixture_nll(params, z + 1e6) / rnn.config.z_size
    beta_nll = MDNRNN.mixture_nll(params, z + 1e6, beta=1.0) / rnn.config.z_size
    assert torch.isfinite(nll).all() and torch.isfinite(beta_nll).all()
    (nll.mean() + beta_nll.mean()).backward()
    for name, p in rnn.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("continuous", [False, True])
def test_loss_and_gradients_finite_for_huge_activations(continuous):
    rnn = _huge(continuous)
    z, a = _inputs(rnn)
    params, _ = rnn(z, a)
    assert all(torch.isfinite(v).all() for v in params.values())
    loss, parts = rnn.loss(params, z + 1e6, torch.full((B, T), 1e3), torch.ones(B, T))
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in parts.values())
    loss.backward()
    for name, p in rnn.named_parameters():
        assert torch.isfinite(p.grad).all(), name


def test_beta_nll_gradient_wrt_mu_is_the_residual_for_beta_1():
    params = _random_params(1, 6, seed=2)
    params["log_sigma"] = params["log_sigma"] * 3  # very different sigmas per dim
    params["sigma"] = params["log_sigma"].exp()
    mu = params["mu"].clone().requires_grad_(True)
    target = torch.randn(B, T, 6)
    MDNRNN.mixture_nll({**params, "mu": mu}, target, beta=1.0).sum().backward()
    # sg[sigma^2] cancels the 1/sigma^2: the gradient is the plain MSE direction, whatever sigma is
    torch.testing.assert_close(mu.grad, mu.detach() - target.unsqueeze(-2), rtol=1e-4, atol=1e-5)

    mu0 = params["mu"].clone().requires_grad_(True)
    MDNRNN.mixture_nll({**params, "mu": mu0}, target, beta=0.0).sum().backward()
    expected = (mu0.detach() - target.unsqueeze(-2)) / params["sigma"] ** 2
    torch.testing.assert_close(mu0.grad, expected, rtol=1e-4, atol=1e-5)


def test_beta_nll_keeps_the_sigma_weight_out_of_the_graph():
    params = _random_params(2, 3, seed=3)
    log_sigma = params["log_sigma"].clone().requires_grad_(True)
    target = torch.randn(B, T, 3)
    MDNRNN.mixture_nll({**params, "log_sigma": log_sigma}, target, beta=0.5).sum().backward()
    # for one component, d/dlog_sigma of -w * (-0.5 r^2 e^{-2 ls} - ls) with w = sg[e^{2 beta ls}]
    one = {k: v[..., :1, :] if v.dim() == 4 else torch.zeros_like(v[..., :1]) for k, v in params.items()}
    ls = one["log_sigma"].clone().requires_grad_(True)
    MDNRNN.mixture_nll({**one, "log_sigma": ls}, target, beta=0.5).sum().backward()
    r = target.unsqueeze(-2) - one["mu"]
    w = torch.exp(2 * 0.5 * one["log_sigma"])
    expected = w * (1 - r.pow(2) * torch.exp(-2 * one["log_sigma"]))
    torch.testing.assert_close(ls.grad, expected, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(log_sigma.grad).all()


def test_loss_combines_the_terms_with_their_weights():
    rnn = _rnn(nll_beta=0.0, reward_weight=0.3, done_weight=0.7)
    z, a = _inputs(rnn)
    params, _ = rnn(z, a)
    nxt, rew, done = torch.randn_like(z), torch.randn(B, T), (torch.rand(B, T) > 0.5).float()
    loss, parts = rnn.loss(params, nxt, rew, done)
    nll = (MDNRNN.mixture_nll(params, nxt) / rnn.config.z_size).mean()
    mse = ((params["reward"] - rew) ** 2).mean()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(params["done_logit"], done)
    torch.testing.assert_close(loss, nll + 0.3 * mse + 0.7 * bce)
    assert parts["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert "beta_nll" not in parts

    rnn.config.nll_beta = 1.0
    loss_b, parts_b = rnn.loss(params, nxt, rew, done)
    beta_nll = (MDNRNN.mixture_nll(params, nxt, 1.0) / rnn.config.z_size).mean()
    torch.testing.assert_close(loss_b, beta_nll + 0.3 * mse + 0.7 * bce)
    assert parts_b["nll"] == pytest.approx(parts["nll"], rel=1e-6)  # still reported, for comparison


def test_loss_ignores_masked_steps():
    rnn = _rnn()
    z, a = _inputs(rnn)
    params, _ = rnn(z, a)
    nxt, rew, done = torch.randn_like(z), torch.zeros(B, T), torch.zeros(B, T)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, _ = rnn.loss(params, nxt, rew, done, mask)
    junk_nxt, junk_rew, junk_done = nxt.clone(), rew.clone(), done.clone()
    junk_nxt[~mask] = 1e4
    junk_rew[~mask] = 1e4
    junk_done[~mask] = 1.0
    loss_junk, _ = rnn.loss(params, junk_nxt, junk_rew, junk_done, mask)
    torch.testing.assert_close(loss, loss_junk)
    loss_all, _ = rnn.loss(params, junk_nxt, junk_rew, junk_done)
    assert loss_all.item() > loss.item() + 1.0


# -- sampling ----------------------------------------------------------------------------------------
def test_sample_at_temperature_zero_is_the_argmax_mean():
    params = _random_params(4, 5, seed=4, shape=(6,))
    pi = params["log_pi"].exp()
    out = MDNRNN.sample(pi, params["mu"], params["sigma"], temperature=0.0)
    expected = params["mu"][torch.arange(6), pi.argmax(-1)]
    assert torch.equal(out, expected)
    again = MDNRNN.sample(pi, params["mu"], params["sigma"], 0.0, torch.Generator().manual_seed(9))
    assert torch.equal(out, again)


def test_sample_shapes_with_leading_dims():
    params = _random_params(3, 7, shape=(B, T))
    out = MDNRNN.sample(params["log_pi"].exp(), params["mu"], params["sigma"], 1.0)
    assert out.shape == (B, T, 7)


def test_higher_temperature_gives_larger_spread():
    n, z = 4000, 3
    pi = torch.ones(n, 1)
    mu = torch.zeros(n, 1, z)
    sigma = torch.full((n, 1, z), 0.5)
    stds = {}
    for tau in (0.25, 1.0, 2.0):
        x = MDNRNN.sample(pi, mu, sigma, tau, torch.Generator().manual_seed(0))
        stds[tau] = float(x.std())
        assert stds[tau] == pytest.approx(0.5 * math.sqrt(tau), rel=0.1)
    assert stds[0.25] < stds[1.0] < stds[2.0]


def test_temperature_sharpens_and_flattens_the_mixture_weights():
    n = 4000
    pi = torch.tensor([0.8, 0.2]).expand(n, 2)
    mu = torch.tensor([[0.0], [100.0]]).expand(n, 2, 1)
    sigma = torch.full((n, 2, 1), 1e-3)

    def share_of_second(tau):
        x = MDNRNN.sample(pi, mu, sigma, tau, torch.Generator().manual_seed(1))
        return float((x > 50).float().mean())

    cold, warm, hot = share_of_second(0.3), share_of_second(1.0), share_of_second(5.0)
    assert warm == pytest.approx(0.2, abs=0.03)
    assert cold < 0.05 and hot > 0.35
    assert cold < warm < hot


def test_seeded_sampling_is_reproducible():
    params = _random_params(3, 4, seed=5, shape=(10,))
    pi = params["log_pi"].exp()
    a = MDNRNN.sample(pi, params["mu"], params["sigma"], 1.0, torch.Generator().manual_seed(7))
    b = MDNRNN.sample(pi, params["mu"], params["sigma"], 1.0, torch.Generator().manual_seed(7))
    c = MDNRNN.sample(pi, params["mu"], params["sigma"], 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# -- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [4, -1])
def test_rejects_out_of_range_discrete_actions(bad):
    rnn = _rnn()
    z, a = _inputs(rnn)
    a[0, 1] = bad
    with pytest.raises(ValueError, match="actions must lie in"):
        rnn(z, a)


def test_rejects_float_actions_for_discrete_envs():
    rnn = _rnn()
    z, a = _inputs(rnn)
    with pytest.raises(ValueError, match="integer actions"):
        rnn(z, a.float())


@pytest.mark.parametrize("dim", [2, 4])
def test_rejects_wrong_continuous_action_size(dim):
    rnn = _rnn(continuous=True)
    z, _ = _inputs(rnn)
    with pytest.raises(ValueError, match="last dim 3"):
        rnn(z, torch.zeros(B, T, dim))


@pytest.mark.parametrize("shape", [(B, 256), (B, T, 255), (B, T, 256, 1)])
def test_rejects_badly_shaped_z(shape):
    rnn = _rnn()
    assert rnn.config.z_size == 256
    with pytest.raises(ValueError, match="expected z of shape"):
        rnn(torch.zeros(shape), torch.zeros(B, T, dtype=torch.long))


def test_rejects_z_and_actions_of_different_lengths():
    rnn = _rnn()
    z, _ = _inputs(rnn)
    with pytest.raises(ValueError, match="disagree"):
        rnn(z, torch.zeros(B, T + 1, dtype=torch.long))


def test_conv_heads_read_cells_as_codes():
    rnn = _rnn()
    cfg = rnn.config
    z, a = _inputs(rnn)
    grid = rnn._grid(z.reshape(-1, cfg.z_size))
    assert grid.shape[1] == cfg.num_embeddings  # one channel per code, not per latent dimension
    snapped = rnn.codebook[rnn.codebook.new_zeros(cfg.latent_grid**2, dtype=torch.long) + 3].flatten()[None]
    torch.testing.assert_close(rnn._grid(snapped + 0.01)[0, :, 0, 0], torch.eye(cfg.num_embeddings)[3],
                               atol=1e-3, rtol=0)
    assert rnn.reads_codes and not MDNRNN(tiny_config(rnn_reads_codes=False), rnn.codebook).reads_codes
    rnn.codebook = None  # taken away after it was built to read codes: said, not a shape error deep in a conv
    with pytest.raises(ValueError, match="codebook"):
        rnn(z, a)


def test_without_a_codebook_the_conv_heads_read_raw_latents():
    """No codebook, no codes to read: a bare MDNRNN(config) reads latents whatever rnn_reads_codes says."""
    cfg = tiny_config()
    assert cfg.rnn_reads_codes
    bare = MDNRNN(cfg)
    assert not bare.reads_codes
    z, a = _inputs(bare)
    assert bare._grid(z.reshape(-1, cfg.z_size)).shape[1] == cfg.latent_dim  # one channel per latent dimension
    assert bare(z, a)[0]["mu"].shape[-1] == cfg.z_size


# -- the paper's standalone M: `rnn = MDNRNN(config); mdn_params, hidden = rnn(z, actions, hidden)` ------
def _default_rnn_and_inputs():
    from wm_agent.config import WorldModelConfig

    cfg = WorldModelConfig()  # rnn_reads_codes=True by default, and no codebook given
    torch.manual_seed(0)
    rnn = MDNRNN(cfg)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, T, cfg.z_size, generator=g)
    actions = torch.randint(0, cfg.action_dim, (B, T), generator=g)
    return rnn, z, actions


def test_a_bare_mdnrnn_of_the_default_config_runs_forward():
    rnn, z, actions = _default_rnn_and_inputs()
    cfg = rnn.config
    k, h = cfg.num_mixtures, cfg.hidden_size
    params, hidden = rnn(z, actions)
    assert params["pi"].shape == params["log_pi"].shape == (B, T, k)
    for name in ("mu", "sigma", "log_sigma"):
        assert params[name].shape == (B, T, k, cfg.z_size), name
    assert params["reward"].shape == params["done_logit"].shape == (B, T)
    assert hidden[0].shape == hidden[1].shape == (1, B, h)
    assert all(torch.isfinite(v).all() for v in params.values())
    torch.testing.assert_close(params["pi"].sum(-1), torch.ones(B, T))
    # the hidden state carries on: two halves give what one call over the whole sequence gives
    first, mid = rnn(z[:, :1], actions[:, :1])
    rest, end = rnn(z[:, 1:], actions[:, 1:], mid)
    torch.testing.assert_close(torch.cat([first["mu"], rest["mu"]], 1), params["mu"])
    torch.testing.assert_close(end[0], hidden[0])


def test_a_bare_mdnrnn_of_the_default_config_samples_and_dreams():
    rnn, z, actions = _default_rnn_and_inputs()
    cfg = rnn.config
    params, hidden = rnn(z, actions)
    gen = torch.Generator().manual_seed(0)
    sample = MDNRNN.sample(params["pi"][:, -1], params["mu"][:, -1], params["sigma"][:, -1], 1.0, gen)
    assert sample.shape == (B, cfg.z_size) and torch.isfinite(sample).all()
    # A dream step needs a snap onto some codebook (here a random one), as WorldModel.snap gives.
    codebook = torch.randn(cfg.num_embeddings, cfg.latent_dim, generator=gen)

    def snap(latents):
        cells = latents.reshape(-1, cfg.latent_dim)
        codes = torch.cdist(cells, codebook).argmin(-1)
        return codes.view(-1, cfg.latent_grid, cfg.latent_grid), codebook[codes].reshape(-1, cfg.z_size)

    codes, z0 = snap(z[:, 0])
    z1, codes1, reward, done_p, hidden = rnn.dream_step(z0, codes, actions[:, 0], None, 1.0, gen, snap)
    assert z1.shape == (B, cfg.z_size) and codes1.shape == (B, cfg.latent_grid, cfg.latent_grid)
    assert reward.shape == done_p.shape == (B,) and ((0 <= done_p) & (done_p <= 1)).all()
    assert hidden[0].shape == (1, B, cfg.hidden_size)
    rnn.dream_step(z1, codes1, actions[:, 1], hidden, 0.0, gen, snap)  # and on from there, at temperature 0
