"""V: the VQ-VAE and its vector quantiser."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import gridworld_frames, gridworld_frames_random_walk, tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wm_agent.models.vqvae import VQVAE, VectorQuantizer, frames_to_tensor, tensor_to_frames
from wm_agent.world_model import WorldModel


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return VQVAE(tiny_config())


@pytest.fixture
def frames():
    return frames_to_tensor(gridworld_frames(4))


# -- shapes ------------------------------------------------------------------------------------------
def test_forward_encode_decode_shapes(vae, frames):
    cfg = vae.config
    g, z = cfg.latent_grid, cfg.z_size
    x_recon, recon_loss, vq_loss = vae(frames)
    assert x_recon.shape == frames.shape
    assert recon_loss.dim() == 0 and vq_loss.dim() == 0
    assert recon_loss.item() >= 0 and vq_loss.item() >= 0
    assert x_recon.min().item() >= 0 and x_recon.max().item() <= 1  # sigmoid output
    torch.testing.assert_close(recon_loss, F.mse_loss(x_recon, frames))

    idx = vae.encode(frames)
    assert idx.shape == (4, g, g) and idx.dtype == torch.long
    assert int(idx.min()) >= 0 and int(idx.max()) < cfg.num_embeddings

    decoded = vae.decode(idx)
    assert decoded.shape == (4, 3, cfg.image_size, cfg.image_size)
    assert decoded.min().item() >= 0 and decoded.max().item() <= 1

    latent = vae.indices_to_latent(idx)
    assert latent.shape == (4, z)
    # extra leading dims (batch, time) are kept
    seq = torch.randint(0, cfg.num_embeddings, (2, 5, g, g))
    assert vae.indices_to_latent(seq).shape == (2, 5, z)
    assert vae.latent_to_indices(vae.indices_to_latent(seq)).shape == (2, 5, g, g)
    assert vae.decode_latent(latent).shape == decoded.shape


def test_latent_round_trips_through_the_codebook(vae):
    cfg = vae.config
    idx = torch.randint(0, cfg.num_embeddings, (3, cfg.latent_grid, cfg.latent_grid))
    latent = vae.indices_to_latent(idx)
    torch.testing.assert_close(vae.latent_to_indices(latent), idx, rtol=0, atol=0)
    # the flattened latent is cell-major: each cell's dim values are contiguous
    d = cfg.latent_dim
    torch.testing.assert_close(latent[0, :d], vae.quantizer.codebook[idx[0, 0, 0]])
    torch.testing.assert_close(latent[0, d : 2 * d], vae.quantizer.codebook[idx[0, 0, 1]])
    # a latent slightly off the codebook snaps back to the same codes
    noisy = latent + 1e-3 * torch.randn_like(latent)
    torch.testing.assert_close(vae.latent_to_indices(noisy), idx, rtol=0, atol=0)
    torch.testing.assert_close(vae.decode_latent(noisy), vae.decode(idx))


def test_encode_agrees_with_the_forward_pass(vae, frames):
    vae.eval()
    idx = vae.encode(frames)
    _, _, fwd_idx = vae.quantizer(vae.encoder(frames))
    torch.testing.assert_close(idx, fwd_idx, rtol=0, atol=0)


# -- the quantiser -----------------------------------------------------------------------------------
def test_straight_through_estimator_passes_gradients_to_the_encoder(vae, frames):
    _, recon_loss, _ = vae(frames)
    recon_loss.backward()
    for layer in (vae.encoder[0], vae.encoder[-1]):
        assert layer.weight.grad is not None
        assert layer.weight.grad.abs().sum() > 0


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(1)
    q = VectorQuantizer(8, 4).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q, _, _ = q(z_e)
    weights = torch.randn_like(z_q)
    (z_q * weights).sum().backward()
    torch.testing.assert_close(z_e.grad, weights)


@pytest.mark.parametrize("ema", [True, False])
def test_quantiser_output_is_the_nearest_codebook_vector(ema):
    torch.manual_seed(2)
    q = VectorQuantizer(16, 3, ema=ema).eval()
    z_e = torch.randn(4, 3, 5, 5)
    z_q, _, idx = q(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat.double(), q.codebook.detach().double()).argmin(1)
    torch.testing.assert_close(idx.flatten(), brute, rtol=0, atol=0)
    expected = q.codebook.detach()[brute].view(4, 5, 5, 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(z_q, expected, rtol=0, atol=1e-6)
    assert idx.shape == (4, 5, 5)


@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_commitment_loss_is_beta_times_the_distance(beta):
    torch.manual_seed(3)
    z_e = torch.randn(2, 4, 3, 3)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    for ema in (True, False):
        q = VectorQuantizer(8, 4, beta=beta, ema=ema).eval()
        _, loss, idx = q(z_e)
        dist = ((flat - q.codebook.detach()[idx.flatten()]) ** 2).mean()
        # EMA codebooks learn from averages, so only the commitment term is a loss; otherwise the
        # codebook term ||sg[z_e] - e||^2 (same value in the forward pass) is added.
        expected = beta * dist if ema else (1 + beta) * dist
        torch.testing.assert_close(loss, expected)


def test_commitment_loss_moves_the_encoder_and_codebook_loss_moves_the_codes():
    torch.manual_seed(4)
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    q = VectorQuantizer(8, 4, beta=0.25, ema=False).eval()
    _, loss, idx = q(z_e)
    loss.backward()
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    n = flat.numel()
    expected = 0.25 * 2 * (flat - q.codebook.detach()[idx.flatten()]) / n
    torch.testing.assert_close(z_e.grad.permute(0, 2, 3, 1).reshape(-1, 4), expected)
    used = torch.unique(idx)
    assert q.codebook.grad[used].abs().sum() > 0


def test_perplexity_and_usage_are_in_range():
    torch.manual_seed(5)
    k = 8
    q = VectorQuantizer(k, 4).eval()
    q(torch.randn(4, 4, 6, 6))
    assert 1.0 - 1e-4 <= q.stats["perplexity"] <= k + 1e-4
    assert 0.0 < q.stats["usage"] <= 1.0

    # every vector on one code: perplexity 1, one code in use
    one = q.codebook[3].view(1, 4, 1, 1).expand(2, 4, 3, 3).clone()
    q(one)
    assert q.stats["perplexity"] == pytest.approx(1.0, abs=1e-4)
    assert q.stats["usage"] == pytest.approx(1 / k)

    # each code used exactly once: perplexity k, all codes in use
    every = q.codebook.clone().view(2, 2, 2, 4).permute(0, 3, 1, 2)  # the quantiser wants square grids
    _, _, idx = q(every)
    assert sorted(idx.flatten().tolist()) == list(range(k))
    assert q.stats["perplexity"] == pytest.approx(k, rel=1e-4)
    assert q.stats["usage"] == pytest.approx(1.0)


def test_ema_codebook_changes_in_train_mode_but_not_in_eval_mode():
    torch.manual_seed(6)
    q = VectorQuantizer(8, 4, ema=True, dead_code_restart=False)
    z_e = torch.randn(4, 4, 5, 5) + 2.0
    before = {name: b.clone() for name, b in q.named_buffers()}
    q.eval()
    q(z_e)
    for name, b in q.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, equal_nan=True)
    q.train()
    _, _, idx = q(z_e)
    moved = (q.codebook - before["codebook"]).abs().sum(1) > 0
    used = torch.zeros(8, dtype=torch.bool)
    used[idx.flatten()] = True
    assert moved[used].all()  # every code that was used moved towards its vectors
    assert not torch.isinf(q.usage).any()


def test_ema_moves_a_used_code_towards_its_vectors():
    q = VectorQuantizer(2, 2, ema=True, decay=0.5, dead_code_restart=False)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0]]))
        q.embed_avg.copy_(q.codebook)
    target = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 4, 4).clone()
    q.train()
    dist_before = float((q.codebook[0] - target[0, :, 0, 0]).norm())
    for _ in range(10):
        q(target)
    dist_after = float((q.codebook[0] - target[0, :, 0, 0]).norm())
    assert dist_after < 0.1 * dist_before


def _two_clusters(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = 5.0 + 0.1 * torch.randn(n, 4, generator=g)
    b = -5.0 + 0.1 * torch.randn(n, 4, generator=g)
    return torch.cat([a, b]).view(2, 4, 4, 4).permute(0, 3, 1, 2)  # (B=2, dim, 4, 4): a's, then b's


@pytest.mark.parametrize("restart", [True, False])
def test_dead_code_restart_revives_an_unused_code(restart):
    k = 8
    q = VectorQuantizer(k, 4, ema=True, dead_code_restart=restart)
    with torch.no_grad():  # code 0 in the middle of both clusters, every other code far away
        q.codebook.copy_(torch.cat([torch.zeros(1, 4), torch.full((k - 1, 4), 100.0)]))
        q.embed_avg.copy_(q.codebook)
    data = _two_clusters()
    q.eval()
    _, _, idx = q(data)
    assert idx.unique().tolist() == [0]  # a collapsed codebook: one code for both clusters
    q.train()
    for _ in range(50):  # unused codes count as dead after ~35 batches
        q(data)
    q.eval()
    _, _, idx = q(data)
    idx = idx.flatten()
    if restart:
        assert len(idx.unique()) >= 2
        assert set(idx[:16].tolist()).isdisjoint(idx[16:].tolist())  # the clusters got their own codes
        assert (q.codebook.abs() < 10).sum(1).eq(4).sum() >= 2  # a dead code now sits on the data
    else:
        assert idx.unique().tolist() == [0]


def test_the_quantiser_computes_in_float32_inside_a_bf16_autocast():
    """Training on a GPU runs V under a bf16 autocast (torch_utils.autocast); the same autocast on the CPU
    shows what it did to the quantiser: a dead-code restart wrote bf16 rows into the float32 codebook
    (an error on the GPU machine), and bf16 code counts and EMA sums are not exact (289 is not a bf16)."""
    torch.manual_seed(0)
    z_e = (5.0 + 0.1 * torch.randn(1, 4, 17, 17)).to(torch.bfloat16)  # the encoder's output under autocast
    q = VectorQuantizer(8, 4, ema=True, dead_code_restart=True)
    with torch.no_grad():  # code 0 nearest to every vector, the rest unused until they restart
        q.codebook.copy_(torch.cat([torch.zeros(1, 4), torch.full((7, 4), 100.0)]))
        q.embed_avg.copy_(q.codebook)
    ref = copy.deepcopy(q)
    q.train()
    ref.train()
    for _ in range(50):  # unused codes count as dead after ~35 batches
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_q, loss, idx = q(z_e)
        z_ref, loss_ref, idx_ref = ref(z_e.float())
    assert (q.codebook.abs() < 10).sum(1).eq(4).sum() >= 2  # dead codes were restarted onto the data
    assert z_q.dtype == loss.dtype == q.codebook.dtype == torch.float32
    for name, value in ref.state_dict().items():  # the same float32 arithmetic as outside the autocast
        torch.testing.assert_close(q.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert torch.equal(idx, idx_ref) and torch.equal(z_q, z_ref) and torch.equal(loss, loss_ref)


def test_code_memberships_pick_the_nearest_code_inside_a_bf16_autocast():
    """M reads its input cells through code_memberships inside training's bf16 autocast: in bf16,
    ||e||^2 of codes near 100 is rounded to a multiple of 64, and the nearer of two codes was lost."""
    from wm_agent.models.vqvae import code_memberships

    codebook = torch.tensor([[100.0, 0.0], [100.5, 0.0], [-50.0, 3.0]])
    z = torch.tensor([[[100.4, 0.0], [100.1, 0.0], [-50.0, 2.0]]])  # nearest: codes 1, 0, 2
    plain = code_memberships(z, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = code_memberships(z, codebook)
    assert plain.argmax(-1).tolist() == [[1, 0, 2]]
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


# -- input validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 64, 64, 3), "shape"),  # channels last
        (torch.rand(3, 64, 64), "shape"),  # no batch dim
        (torch.rand(2, 3, 32, 32), "shape"),  # wrong size
        (torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8), "dtype|float"),
        (torch.rand(2, 3, 64, 64) * 255, r"\[0, 1\]"),
        (torch.rand(2, 3, 64, 64) - 0.5, r"\[0, 1\]"),
    ],
)
def test_vae_rejects_bad_input(vae, bad, match):
    with pytest.raises(ValueError, match=match):
        vae(bad)
    with pytest.raises(ValueError, match=match):
        vae.encode(bad)


def test_vae_rejects_numpy_input(vae):
    with pytest.raises(TypeError):
        vae(np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 64, 64, 3), np.float32), np.zeros((64, 64, 3), np.uint8), np.zeros((2, 3, 64, 64), np.uint8)],
)
def test_frames_to_tensor_rejects_bad_frames(bad):
    with pytest.raises(ValueError):
        frames_to_tensor(bad)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.just(3))))
def test_frames_to_tensor_round_trip(frames):
    t = frames_to_tensor(frames)
    b, h, w, _ = frames.shape
    assert t.shape == (b, 3, h, w) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    torch.testing.assert_close(t[:, 0], torch.as_tensor(frames[..., 0]).float() / 255)
    back = tensor_to_frames(t)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, frames)
    np.testing.assert_array_equal(frames_to_tensor(torch.as_tensor(frames)).numpy(), t.numpy())


def test_tensor_to_frames_clamps():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    out = tensor_to_frames(x)
    assert out.shape == (1, 1, 5, 3)
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 0, 128, 255, 255])


# -- a short training run ----------------------------------------------------------------------------
def test_short_training_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    wm = WorldModel(tiny_config(learning_rate=1e-2), env_id="WM-GridWorld-v0")
    frames = gridworld_frames_random_walk(32, seed=0)
    x = frames_to_tensor(frames)

    def eval_mse() -> float:
        wm.vae.eval()
        with torch.no_grad():
            return float(F.mse_loss(wm.vae.decode(wm.vae.encode(x)), x))

    before = eval_mse()
    history = wm.train_vae(frames, epochs=20, batch_size=32, seed=0)
    after = eval_mse()
    assert len(history) == 20 and wm.train_state["vae"]["epoch"] == 20
    assert all(np.isfinite(h["recon_mse"]) for h in history)
    assert history[-1]["recon_mse"] < history[0]["recon_mse"]
    assert after < 0.8 * before, (before, after)
