"""M: an LSTM over (z_t, a_t) whose mixture-density head predicts z_{t+1}, plus reward and done heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wm_agent.config import WorldModelConfig

Hidden = tuple[torch.Tensor, torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


class MDNRNN(nn.Module):
    """``mdn_params, hidden = rnn(z, actions, hidden)``.

    ``z`` is (B, T, Z) flattened quantised latents; ``actions`` (B, T) integers for discrete envs or
    (B, T, A) floats. ``mdn_params`` holds ``pi``, ``mu``, ``sigma`` (mixture over the whole vector,
    diagonal components: pi (B, T, K), mu/sigma (B, T, K, Z)), their logs ``log_pi``, ``log_sigma``,
    and the ``reward`` and ``done_logit`` predictions for the transition.

    The means are predicted as ``z_t + delta`` by a conv net over the latent grid: most of a frame
    stays as it was from one step to the next, so the network only has to learn what moves. ``log_sigma`` is squashed into
    ``[min_log_sigma, max_log_sigma]`` so the NLL stays bounded on deterministic data.
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        z, k, a, h = config.z_size, config.num_mixtures, config.action_dim, config.hidden_size
        d, c = config.latent_dim, config.head_hidden
        self.input = nn.Linear(z + a, h)
        self.lstm = nn.LSTM(h, h, batch_first=True)
        # The mixture means come from a small conv net over the latent grid: what happens to a cell
        # depends mostly on its neighbours and the action, the same everywhere on the grid, so
        # convolutions learn it from few examples. The LSTM state enters as extra channels (what the
        # frame alone does not show), and pooled conv features feed pi, reward and done.
        self.context = nn.Linear(h, config.context_channels)
        cin = d + a + config.context_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.cell_head = nn.Conv2d(c, 2 * k * d, 1)
        self.global_head = nn.Linear(2 * c + h, k + 2)

    def initial_state(self, batch: int, device=None) -> Hidden:
        h = torch.zeros(1, batch, self.config.hidden_size, device=device)
        return h, h.clone()

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.discrete_actions:
            if actions.is_floating_point():
                raise ValueError(f"expected integer actions for a discrete action space, got {actions.dtype}")
            if actions.numel() and (actions.min() < 0 or actions.max() >= cfg.action_dim):
                raise ValueError(f"actions must lie in [0, {cfg.action_dim}), got range "
                                 f"[{int(actions.min())}, {int(actions.max())}]")
            return F.one_hot(actions.long(), cfg.action_dim).float()
        if actions.shape[-1] != cfg.action_dim:
            raise ValueError(f"expected continuous actions with last dim {cfg.action_dim}, got {tuple(actions.shape)}")
        return actions.float()

    def forward(self, z: torch.Tensor, actions: torch.Tensor, hidden: Hidden | None = None):
        cfg = self.config
        if z.dim() != 3 or z.shape[-1] != cfg.z_size:
            raise ValueError(f"expected z of shape (B, T, {cfg.z_size}), got {tuple(z.shape)}")
        a = self.encode_actions(actions)
        if a.shape[:2] != z.shape[:2]:
            raise ValueError(f"z {tuple(z.shape)} and actions {tuple(actions.shape)} disagree on (B, T)")
        out, hidden = self.lstm(torch.relu(self.input(torch.cat([z, a], -1))), hidden)
        return self._mdn(out, z, a), hidden

    def _mdn(self, out: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        k, g, d = cfg.num_mixtures, cfg.latent_grid, cfg.latent_dim
        b, t = z.shape[:2]
        n = b * t
        grid = z.reshape(n, g, g, d).permute(0, 3, 1, 2)
        extra = torch.cat([a.reshape(n, -1), self.context(out).reshape(n, -1)], -1)
        feats = self.trunk(torch.cat([grid, extra[:, :, None, None].expand(-1, -1, g, g)], 1))
        cells = self.cell_head(feats).reshape(n, 2, k, d, g, g).permute(0, 1, 2, 4, 5, 3).reshape(b, t, 2, k, g * g * d)
        delta, raw_sigma = cells[:, :, 0], cells[:, :, 1]
        pooled = torch.cat([feats.amax((2, 3)), feats.mean((2, 3)), out.reshape(n, -1)], -1)
        logits, reward, done = self.global_head(pooled).reshape(b, t, -1).split([k, 1, 1], -1)
        log_pi = torch.log_softmax(logits, -1)
        mu = z.unsqueeze(-2) + delta  # the mean is "this frame, changed": most of it stays put
        lo, hi = cfg.min_log_sigma, cfg.max_log_sigma
        log_sigma = lo + (hi - lo) * torch.sigmoid(raw_sigma)
        return {
            "pi": log_pi.exp(), "log_pi": log_pi, "mu": mu, "sigma": log_sigma.exp(), "log_sigma": log_sigma,
            "reward": reward.squeeze(-1), "done_logit": done.squeeze(-1),
        }

    @staticmethod
    def mixture_nll(params: dict[str, torch.Tensor], target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        """-log p(target) per (B, T), summed over the latent's dimensions, computed with log-sum-exp.

        ``beta > 0`` weights each dimension's term by ``sg[sigma^(2 beta)]`` (beta-NLL, Seitzer et al.
        2022). Without it, dimensions the model already predicts with tiny sigma dominate the gradient
        by 1/sigma^2, and the few cells that move (the very dynamics) are learnt hundreds of times slower.
        """
        log_sigma = params["log_sigma"]
        zscore = (target.unsqueeze(-2) - params["mu"]) * torch.exp(-log_sigma)
        per_dim = -0.5 * zscore.pow(2) - log_sigma - 0.5 * LOG_2PI
        if beta:
            per_dim = per_dim * torch.exp(2 * beta * log_sigma.detach())
        return -torch.logsumexp(params["log_pi"] + per_dim.sum(-1), -1)

    def loss(self, params, next_z, rewards, dones, mask=None) -> tuple[torch.Tensor, dict[str, float]]:
        """Mixture NLL (per latent dim) + reward_weight * MSE + done_weight * BCE, averaged over ``mask``."""
        cfg = self.config
        nll = self.mixture_nll(params, next_z) / cfg.z_size
        rew = (params["reward"] - rewards).pow(2)
        done = F.binary_cross_entropy_with_logits(params["done_logit"], dones.float(), reduction="none")
        terms = [("nll", nll), ("reward_mse", rew), ("done_bce", done)]
        if cfg.nll_beta:
            terms.append(("beta_nll", self.mixture_nll(params, next_z, cfg.nll_beta) / cfg.z_size))
        if mask is None:
            mask = torch.ones_like(nll)
        mask = mask.float()
        n = mask.sum().clamp_min(1.0)
        parts = {k: (v * mask).sum() / n for k, v in terms}
        fit = parts["beta_nll"] if cfg.nll_beta else parts["nll"]
        total = fit + cfg.reward_weight * parts["reward_mse"] + cfg.done_weight * parts["done_bce"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def sample(pi: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ mixture, with the paper's temperature: pi ~ softmax(log pi / tau), sigma * sqrt(tau).

        ``temperature <= 0`` is the deterministic limit: the most likely component's mean.
        ``pi`` (..., K), ``mu``/``sigma`` (..., K, Z) -> (..., Z).
        """
        if temperature <= 0:
            comp = pi.argmax(-1)
        else:
            logits = torch.log(pi.clamp_min(1e-12)) / temperature
            flat = torch.softmax(logits, -1).reshape(-1, pi.shape[-1])
            comp = torch.multinomial(flat, 1, generator=generator).view(pi.shape[:-1])
        index = comp[..., None, None].expand(*comp.shape, 1, mu.shape[-1])
        mean = mu.gather(-2, index).squeeze(-2)
        if temperature <= 0:
            return mean
        std = sigma.gather(-2, index).squeeze(-2) * math.sqrt(temperature)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise
