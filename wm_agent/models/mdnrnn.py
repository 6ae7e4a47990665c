"""M: an LSTM over (z_t, a_t) whose mixture-density head predicts z_{t+1}, plus reward and done heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wm_agent.config import WorldModelConfig
from wm_agent.models.vqvae import code_memberships, membership_table
from wm_agent.sampling import multinomial, randn

Hidden = tuple[torch.Tensor, torch.Tensor]
LOG_2PI = math.log(2 * math.pi)


class MDNRNN(nn.Module):
    """``mdn_params, hidden = rnn(z, actions, hidden)``.

    ``z`` is (B, T, Z) flattened quantised latents; ``actions`` (B, T) integers for discrete envs or
    (B, T, A) floats. ``mdn_params`` holds ``pi``, ``mu``, ``sigma`` (mixture over the whole vector,
    diagonal components: pi (B, T, K), mu/sigma (B, T, K, Z)), their logs ``log_pi``, ``log_sigma``,
    and the ``reward`` and ``done_logit`` predictions for the transition.

    The means come from a conv net over the latent grid that, per cell, either copies the cell's code
    or writes new content: most of a frame stays as it was from one step to the next, so the network
    only has to learn what moves. ``log_sigma`` is squashed into
    ``[min_log_sigma, max_log_sigma]`` so the NLL stays bounded on deterministic data.

    The conv heads read each cell as its code (``reads_codes``) when built with V's ``codebook`` and a
    config with ``rnn_reads_codes`` (WorldModel passes its codebook); built without one, ``MDNRNN(config)``
    reads the cells' raw latent vectors.
    """

    def __init__(self, config: WorldModelConfig, codebook: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        # V's codebook, shared (not copied): with ``rnn_reads_codes`` the conv heads see each cell as
        # its code (see ``vqvae.code_memberships``). WorldModel passes its own.
        self.codebook = codebook
        # Codes cannot be read without the codebook that defines them, so a bare MDNRNN(config) (the
        # paper's standalone M, the default config included) reads raw latents instead of refusing.
        # Fixed here: the conv heads' input channels depend on it.
        self.reads_codes = config.rnn_reads_codes and codebook is not None
        z, k, a, h = config.z_size, config.num_mixtures, config.action_dim, config.hidden_size
        d, c = config.latent_dim, config.head_hidden
        read = config.num_embeddings if self.reads_codes else d  # channels per cell the conv heads read
        self.input = nn.Linear(z + a, h)
        self.lstm = nn.LSTM(h, h, batch_first=True)
        # The mixture means come from a small conv net over the latent grid: what happens to a cell
        # depends mostly on its neighbours and the action, the same everywhere on the grid, so
        # convolutions learn it from few examples. The LSTM state enters as extra channels (what the
        # frame alone does not show); pooled trunk features give the mixture weights pi.
        self.context = nn.Linear(h, config.context_channels)
        cin = read + a + config.context_channels
        self.trunk = nn.Sequential(
            nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
        )
        # Per component and cell: a new content vector, a log-sigma vector and a copy gate.
        self.cell_head = nn.Conv2d(c, k * (2 * d + 1), 1)
        with torch.no_grad():  # start as "copy every cell": most of a frame stays put
            self.cell_head.bias.view(k, 2 * d + 1)[:, -1] = 4.0
        self.pi_head = nn.Linear(2 * c + h, k)
        # Reward and done come from their own small conv net over (z_t, a_t), apart from the dynamics
        # (their rare events must not bend its features) and NOT from a predicted
        # z_{t+1}: the rarest transitions (the agent stepping onto the goal) are the ones the dynamics
        # get wrong, and a head reading a wrong next frame misses exactly the events that end an
        # episode; a dream that never ends is one a controller farms for reward. A per-cell layer
        # forms conjunctions ("agent here, goal next to it, action towards it") that max-pooling then
        # finds anywhere on the grid.
        self.event_net = nn.Sequential(
            nn.Conv2d(read + a, c, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 1), nn.ReLU(inplace=True),
        )
        self.event_head = nn.Sequential(nn.Linear(2 * c + h, 64), nn.ReLU(inplace=True), nn.Linear(64, 2))

    def head_parameters(self) -> list[nn.Parameter]:
        """The reward/done heads' parameters (disjoint from the dynamics'; clipped separately)."""
        return [*self.event_net.parameters(), *self.event_head.parameters()]

    def dynamics_parameters(self) -> list[nn.Parameter]:
        heads = {id(p) for p in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in heads]

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
        a, out, hidden = self._recur(z, actions, hidden)
        return self._heads(z, a, out), hidden

    @torch.no_grad()
    def advance(self, z: torch.Tensor, actions: torch.Tensor, hidden: Hidden | None) -> Hidden:
        """Only the LSTM state after (z, actions): what a controller in the REAL env needs, without the
        mixture and event heads that predict the next frame.

        Args:
            z: latents (B, T, Z).
            actions: actions (B, T[, A]).
            hidden: the LSTM state before them; None for the initial one.

        Returns:
            The LSTM state after them.
        """
        return self._recur(z, actions, hidden)[2]

    def _recur(self, z: torch.Tensor, actions: torch.Tensor, hidden: Hidden | None):
        cfg = self.config
        if z.dim() != 3 or z.shape[-1] != cfg.z_size:
            raise ValueError(f"expected z of shape (B, T, {cfg.z_size}), got {tuple(z.shape)}")
        a = self.encode_actions(actions)
        if a.shape[:2] != z.shape[:2]:
            raise ValueError(f"z {tuple(z.shape)} and actions {tuple(actions.shape)} disagree on (B, T)")
        out, hidden = self.lstm(torch.relu(self.input(torch.cat([z, a], -1))), hidden)
        return a, out, hidden

    def _cells(self, z: torch.Tensor) -> torch.Tensor:
        g, d = self.config.latent_grid, self.config.latent_dim
        return z.reshape(-1, g, g, d)

    def _grid(self, z: torch.Tensor) -> torch.Tensor:
        """What the conv heads read: (n, channels, g, g), the cells' codes or their raw latents."""
        cells = self._cells(z)
        if self.reads_codes:
            if self.codebook is None:  # taken away after construction
                raise ValueError("this MDN-RNN was built to read cells as codes, but its codebook is now None: "
                                 "give it back the VQ-VAE's codebook")
            cells = code_memberships(cells, self.codebook)
        return cells.permute(0, 3, 1, 2)

    def _heads(self, z: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mixture and the reward/done predictions, both from one read of the grid."""
        grid = self._grid(z)
        g = self.config.latent_grid
        n = grid.shape[0]

        def first(conv: nn.Conv2d, extra: torch.Tensor) -> torch.Tensor:  # the grid, and extra on every cell
            return conv(torch.cat([grid, extra[:, :, None, None].expand(-1, -1, g, g)], 1))

        return {**self._mdn(out, z, first(self.trunk[0], self._trunk_extra(a, out))),
                **self._events(z, out, first(self.event_net[0], a.reshape(n, -1)))}

    def _trunk_extra(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """What the trunk reads besides the grid, the same on every cell: the action and the LSTM's context."""
        n = a.shape[0] * a.shape[1]
        return torch.cat([a.reshape(n, -1), self.context(out).reshape(n, -1)], -1)

    def _heads_from_codes(self, z: torch.Tensor, codes: torch.Tensor, a: torch.Tensor, out: torch.Tensor
                          ) -> dict[str, torch.Tensor]:
        """``_heads`` for a grid of exact codebook vectors ``z`` whose code indices are ``codes`` (n, g, g)
        (every dream step), with the first conv of both nets computed from the indices instead of over
        the cells' memberships: per cell,
        nine rows of a (code, tap) table instead of a dense 3x3 convolution over num_embeddings
        channels, and the per-env inputs (action, context) folded into one matrix per border class.
        The same numbers up to float rounding; the CarRacing preset's dream step runs 1.6-2x faster."""
        n = z.shape[0] * z.shape[1]
        codes = codes.reshape(n, self.config.latent_grid, self.config.latent_grid)
        table = membership_table(self.codebook.to(z.dtype))
        return {**self._mdn(out, z, _conv_from_codes(self.trunk[0], codes, table, self._trunk_extra(a, out))),
                **self._events(z, out, _conv_from_codes(self.event_net[0], codes, table, a.reshape(n, -1)))}

    def _mdn(self, out: torch.Tensor, z: torch.Tensor, first: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mixture, from the trunk's first conv layer output ``first`` (n, c, g, g)."""
        cfg = self.config
        k, g, d = cfg.num_mixtures, cfg.latent_grid, cfg.latent_dim
        b, t = z.shape[:2]
        n = b * t
        feats = self.trunk[1:](first)
        cells = self.cell_head(feats).reshape(n, k, 2 * d + 1, g, g).permute(0, 1, 3, 4, 2)  # (n, k, g, g, 2d+1)
        content, raw_sigma, gate = cells.split([d, d, 1], -1)
        keep = torch.sigmoid(gate)
        # Each cell either keeps its code or is written with new content. "The agent arrives here" is
        # then the same prediction whatever was under it (floor or goal), so rare cases generalise.
        mu = (keep * self._cells(z).unsqueeze(1) + (1 - keep) * content).reshape(b, t, k, g * g * d)
        raw_sigma = raw_sigma.reshape(b, t, k, g * g * d)
        pooled = torch.cat([feats.amax((2, 3)), feats.mean((2, 3)), out.reshape(n, -1)], -1)
        log_pi = torch.log_softmax(self.pi_head(pooled).reshape(b, t, k), -1)
        lo, hi = cfg.min_log_sigma, cfg.max_log_sigma
        log_sigma = lo + (hi - lo) * torch.sigmoid(raw_sigma)
        return {"pi": log_pi.exp(), "log_pi": log_pi, "mu": mu, "sigma": log_sigma.exp(), "log_sigma": log_sigma}

    def _events(self, z: torch.Tensor, out: torch.Tensor, first: torch.Tensor) -> dict:
        """Reward and done, from the event net's first conv layer output ``first`` (n, c, g, g)."""
        b, t = z.shape[:2]
        n = b * t
        feats = self.event_net[1:](first)
        pooled = torch.cat([feats.amax((2, 3)), feats.mean((2, 3)), out.reshape(n, -1).detach()], -1)
        reward, done = self.event_head(pooled).reshape(b, t, 2).unbind(-1)
        # Bounded (linear near 0) so even absurd activations cannot overflow the squared error.
        return {"reward": 100.0 * torch.tanh(reward / 100.0), "done_logit": done}

    @torch.no_grad()
    def dream_step(self, z: torch.Tensor, codes: torch.Tensor, actions: torch.Tensor, hidden: Hidden | None,
                   temperature: float, generator: torch.Generator | None, snap
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Hidden]:
        """One imagined step for a batch.

        Args:
            z: (N, Z) on the codebook.
            codes: its code indices (N, G, G).
            actions: (N[, A]).
            hidden: the LSTM state; None for the initial one.
            temperature: the sampling temperature (see ``sample``).
            generator: the random stream of the draws.
            snap: maps the sampled latents onto the codebook: latents -> (code indices, their latents).

        Returns:
            (z_next, codes_next, reward, done probability, hidden).
        """
        z1, a1 = z[:, None], actions[:, None]
        a, out, hidden = self._recur(z1, a1, hidden)
        # Dream latents are codes, so the conv nets' first layer reads the indices (factored).
        params = self._heads_from_codes(z1, codes, a, out) if self.reads_codes else self._heads(z1, a, out)
        codes_next, z_next = snap(self.sample(params["pi"][:, 0], params["mu"][:, 0], params["sigma"][:, 0],
                                              temperature, generator))
        return z_next, codes_next, params["reward"][:, 0], torch.sigmoid(params["done_logit"][:, 0]), hidden

    @staticmethod
    def mixture_nll(params: dict[str, torch.Tensor], target: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        """-log p(target) per (B, T), summed over the latent's dimensions, computed with log-sum-exp.

        ``beta > 0`` weights each dimension's term by ``sg[sigma^(2 beta)]`` (beta-NLL, Seitzer et al.
        2022). Without it, dimensions the model already predicts with tiny sigma dominate the gradient
        by 1/sigma^2, and the few cells that move (the very dynamics) are learnt hundreds of times slower.

        Args:
            params: the mixture's ``log_pi``, ``mu`` and ``log_sigma``.
            target: the next latents (B, T, Z).
            beta: ``beta > 0`` weights each dimension's term as above.

        Returns:
            -log p(target) per (B, T).
        """
        log_sigma = params["log_sigma"]
        zscore = (target.unsqueeze(-2) - params["mu"]) * torch.exp(-log_sigma)
        per_dim = -0.5 * zscore.pow(2) - log_sigma - 0.5 * LOG_2PI
        if beta:
            per_dim = per_dim * torch.exp(2 * beta * log_sigma.detach())
        return -torch.logsumexp(params["log_pi"] + per_dim.sum(-1), -1)

    def loss(self, params, next_z, rewards, dones, mask=None, event_weight: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mixture NLL (per latent dim) + reward_weight * MSE + done_weight * BCE, averaged over ``mask``.

        ``event_weight`` up-weights the reward and done terms of terminal transitions. The training
        commands leave it at 1: a weight w inflates the predicted odds of the event by w wherever the
        model is unsure, and a controller search farms exactly those states (see ``training.fit.fit_rnn``).

        Args:
            params: the heads' outputs (``forward``'s).
            next_z: the next latents (B, T, Z).
            rewards: (B, T).
            dones: (B, T).
            mask: (B, T) the transitions that count; None for all.
            event_weight: up-weights the reward and done terms of terminal transitions.

        Returns:
            The total loss, and each term's value by name.
        """
        cfg = self.config
        nll = self.mixture_nll(params, next_z) / cfg.z_size
        weight = 1.0 + (event_weight - 1.0) * dones.float()
        rew = (params["reward"] - rewards).pow(2) * weight
        done = F.binary_cross_entropy_with_logits(params["done_logit"], dones.float(), reduction="none") * weight
        terms = [("nll", nll), ("reward_mse", rew), ("done_bce", done)]
        if cfg.nll_beta:
            terms.append(("beta_nll", self.mixture_nll(params, next_z, cfg.nll_beta) / cfg.z_size))
        if mask is None:
            mask = torch.ones_like(nll)
        mask = mask.float()
        n = mask.sum().clamp_min(1.0)
        parts = {k: (v * mask).sum() / n for k, v in terms}
        fit = parts.get("beta_nll", parts["nll"])
        total = fit + cfg.reward_weight * parts["reward_mse"] + cfg.done_weight * parts["done_bce"]
        return total, {k: float(v.detach()) for k, v in parts.items()}

    @staticmethod
    def sample(pi: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z ~ mixture, with the paper's temperature: pi ~ softmax(log pi / tau), sigma * sqrt(tau).

        Args:
            pi: (..., K).
            mu: (..., K, Z).
            sigma: (..., K, Z).
            temperature: ``temperature <= 0`` is the deterministic limit: the most likely component's mean.
            generator: the random stream of the draws.

        Returns:
            z (..., Z).
        """
        if temperature <= 0:
            comp = pi.argmax(-1)
        else:
            logits = torch.log(pi.clamp_min(1e-12)) / temperature
            flat = torch.softmax(logits, -1).reshape(-1, pi.shape[-1])
            comp = multinomial(flat, generator).view(pi.shape[:-1])
        index = comp[..., None, None].expand(*comp.shape, 1, mu.shape[-1])
        mean = mu.gather(-2, index).squeeze(-2)
        if temperature <= 0:
            return mean
        std = sigma.gather(-2, index).squeeze(-2) * math.sqrt(temperature)
        noise = randn(mean.shape, generator, like=mean)
        return mean + std * noise


def _conv_from_codes(conv: nn.Conv2d, codes: torch.Tensor, table: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """``conv`` (3x3, padding 1) over [table[codes] as channels, ``extra`` on every cell], computed
    without building that input: codes (n, g, g) long, table (K, K), extra (n, E) -> (n, c, g, g)."""
    n, g = codes.shape[0], codes.shape[-1]
    k, c = table.shape[0], conv.out_channels
    weight = conv.weight.reshape(c, -1, 9)  # (c, K + E, taps)
    # Row (code * 9 + tap): what one neighbour holding that code adds through that tap; a last zero
    # row for the taps that fall off the grid (the conv's zero padding).
    rows = torch.einsum("ckt,jk->jtc", weight[:, :k], table.to(weight.dtype)).reshape(k * 9, c)
    rows = torch.cat([rows, rows.new_zeros(1, c)])
    padded = F.pad(codes, (1, 1, 1, 1), value=-1)
    neighbours = torch.stack([padded[:, dy : dy + g, dx : dx + g] for dy in range(3) for dx in range(3)], -1)
    taps = torch.arange(9, device=codes.device)
    index = torch.where(neighbours >= 0, neighbours * 9 + taps, k * 9).reshape(-1, 9)
    from_codes = F.embedding_bag(index, rows, mode="sum").view(n, g, g, c)
    # The per-env channels are the same on every cell, so a cell sees them through the taps that
    # land on the grid: one (c, E) matrix per cell, summed over those taps.
    inside = F.pad(codes.new_ones(1, g, g, dtype=weight.dtype), (1, 1, 1, 1))[0]
    inside = torch.stack([inside[dy : dy + g, dx : dx + g] for dy in range(3) for dx in range(3)], -1)
    per_cell = torch.einsum("ijt,cet->ijce", inside, weight[:, k:])
    from_extra = torch.einsum("ijce,ne->nijc", per_cell, extra.to(weight.dtype))
    return (from_codes + from_extra + conv.bias).permute(0, 3, 1, 2)
