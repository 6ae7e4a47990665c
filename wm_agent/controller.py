"""C: the small policy on (z_t, h_t) that CMA-ES searches; linear like the paper, or one hidden layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from wm_agent.config import WorldModelConfig


class Controller(nn.Module):
    """``controller(z, h)`` -> action logits (discrete) or actions squashed into the bounds (continuous).

    Parameters live in one flat vector (``get_flat`` / ``set_flat``) so an evolution strategy can
    search them; ``batched(params, obs)`` evaluates a whole population at once, one parameter vector
    per row, which is how a vector dream scores every candidate in one forward pass.
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        self.in_dim = config.z_size + config.hidden_size
        self.hidden = config.controller_hidden
        self.out_dim = config.action_dim
        shapes = []
        if self.hidden:
            shapes += [(self.in_dim, self.hidden), (self.hidden,), (self.hidden, self.out_dim), (self.out_dim,)]
        else:
            shapes += [(self.in_dim, self.out_dim), (self.out_dim,)]
        self.shapes = shapes
        self.num_params = sum(int(np.prod(s)) for s in shapes)
        self.params = nn.Parameter(torch.zeros(self.num_params))
        low = config.action_low or (-1.0,) * config.action_dim
        high = config.action_high or (1.0,) * config.action_dim
        # Inputs are standardised (statistics fitted once, then frozen and saved): latent codes and
        # LSTM states differ in scale, and CMA-ES searches one step size for all weights.
        self.register_buffer("obs_mean", torch.zeros(self.in_dim))
        self.register_buffer("obs_std", torch.ones(self.in_dim))
        self.register_buffer("low", torch.tensor(low if not config.discrete_actions else [0.0] * config.action_dim))
        self.register_buffer("high", torch.tensor(high if not config.discrete_actions else [0.0] * config.action_dim))

    def fit_normalizer(self, observations: torch.Tensor) -> None:
        """Set the input standardisation from a batch of observations (N, in_dim)."""
        self.obs_mean.copy_(observations.mean(0))
        self.obs_std.copy_(observations.std(0).clamp_min(1e-2))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def get_flat(self) -> np.ndarray:
        return self.params.detach().cpu().numpy().astype(np.float64)

    def set_flat(self, flat) -> None:
        flat = torch.as_tensor(np.asarray(flat), dtype=torch.float32)
        if flat.shape != (self.num_params,):
            raise ValueError(f"expected {self.num_params} controller parameters, got shape {tuple(flat.shape)}")
        with torch.no_grad():
            self.params.copy_(flat)

    def batched(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """``params`` (N, num_params), ``obs`` (N, in_dim) -> outputs (N, action_dim); row i uses params i."""
        n = params.shape[0]
        chunks, at = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            chunks.append(params[:, at : at + size].reshape(n, *shape))
            at += size
        x = obs.unsqueeze(1)
        if self.hidden:
            w1, b1, w2, b2 = chunks
            x = torch.tanh(torch.bmm(x, w1) + b1.unsqueeze(1))
            out = (torch.bmm(x, w2) + b2.unsqueeze(1)).squeeze(1)
        else:
            w, b = chunks
            out = (torch.bmm(x, w) + b.unsqueeze(1)).squeeze(1)
        return self.squash(out)

    def squash(self, out: torch.Tensor) -> torch.Tensor:
        if self.config.discrete_actions:
            return out
        return self.low + (torch.tanh(out) + 1) * 0.5 * (self.high - self.low)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.from_obs(torch.cat([z, h], -1))

    def from_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Outputs for observations concat(z, h) of shape (..., in_dim)."""
        if obs.shape[-1] != self.in_dim:
            raise ValueError(f"controller expects z+h of total size {self.in_dim}, got {obs.shape[-1]}")
        flat = self.normalize(obs.reshape(-1, self.in_dim).float())
        out = self.batched(self.params.unsqueeze(0).expand(flat.shape[0], -1), flat)
        return out.reshape(*obs.shape[:-1], self.out_dim)


def choose_actions(outputs: torch.Tensor, discrete: bool, greedy: bool, generator: torch.Generator | None = None):
    """Controller outputs -> env actions: argmax or a softmax sample of logits; continuous outputs as they are."""
    if not discrete:
        return outputs
    if greedy:
        return outputs.argmax(-1)
    return torch.multinomial(torch.softmax(outputs, -1), 1, generator=generator).squeeze(-1)


def env_action(outputs: torch.Tensor, discrete: bool, greedy: bool, generator: torch.Generator | None = None):
    """The first row of controller outputs as an action a Gymnasium env accepts (int, or float32 array)."""
    action = choose_actions(outputs, discrete, greedy, generator)[0]
    return int(action) if discrete else action.detach().cpu().numpy().astype(np.float32)
