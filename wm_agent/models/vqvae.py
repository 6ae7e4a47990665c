"""V: a VQ-VAE that turns a 64x64 RGB frame into a small grid of codebook vectors and back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wm_agent.config import WorldModelConfig


class VectorQuantizer(nn.Module):
    """Snap each latent vector to its nearest codebook entry, with a straight-through gradient.

    The loss is ``beta * ||z_e - sg[e]||^2`` (commitment) plus, without EMA, ``||sg[z_e] - e||^2``
    (codebook). With ``ema=True`` the codebook instead follows exponential moving averages of the
    vectors assigned to it, which is more stable. ``dead_code_restart`` moves codes that no vector used
    for a while onto random encoder outputs, the usual cure for codebook collapse. ``stats`` reports
    perplexity and the fraction of codes in use of the last batch, because a collapsed codebook
    otherwise fails silently.
    """

    def __init__(self, num_embeddings: int, dim: int, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, dead_code_restart: bool = True, eps: float = 1e-5):
        super().__init__()
        self.num_embeddings, self.dim, self.beta = num_embeddings, dim, beta
        self.ema, self.decay, self.dead_code_restart, self.eps = ema, decay, dead_code_restart, eps
        embed = torch.randn(num_embeddings, dim) * 0.5
        if ema:
            self.register_buffer("codebook", embed)
            self.register_buffer("cluster_size", torch.ones(num_embeddings))
            self.register_buffer("embed_avg", embed.clone())
        else:
            self.codebook = nn.Parameter(embed)
        # Fast EMA of assignments per code: a code unused for a few dozen batches counts as dead.
        self.register_buffer("usage", torch.full((num_embeddings,), float("inf")))
        self.stats: dict[str, float] = {}

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest code for each row of ``flat``.

        Args:
            flat: (N, dim).

        Returns:
            Indices (N,).
        """
        return nearest_code(flat, self.codebook)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for integer ``indices``.

        Args:
            indices: integer indices of any shape.

        Returns:
            Code vectors of shape + (dim,).
        """
        return F.embedding(indices, self.codebook)

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes for vectors ``z``.

        Args:
            z: (..., dim).

        Returns:
            (quantised z, indices).
        """
        idx = self.nearest(z.reshape(-1, self.dim)).view(z.shape[:-1])
        return self.lookup(idx), idx

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z_e`` (B, dim, G, G) -> (z_q with straight-through gradient, vq_loss, indices (B, G, G)).

        Always in float32, also inside a bf16 autocast (training on a GPU): bf16 counts stop being exact
        past 256 (a batch's code counts), its 8-bit mantissa blurs the nearest-code distances and the
        EMA statistics, and the codebook (float32) cannot take bf16 rows in place.

        Args:
            z_e: (B, dim, G, G) encoder outputs.

        Returns:
            (z_q with straight-through gradient, vq_loss, indices (B, G, G)).
        """
        with torch.autocast(z_e.device.type, enabled=False):
            return self._quantize(z_e.float())

    def _quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, d, g, _ = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.nearest(flat.detach())
        z_q = self.lookup(idx)
        onehot = F.one_hot(idx, self.num_embeddings).type(flat.dtype)

        if self.training:
            with torch.no_grad():
                counts = onehot.sum(0)
                fresh = torch.isinf(self.usage)
                self.usage[fresh] = counts.sum() / self.num_embeddings
                self.usage.mul_(0.9).add_(counts, alpha=0.1)
                if self.ema:
                    self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
                    self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat.detach(), alpha=1 - self.decay)
                    n = self.cluster_size.sum()
                    size = (self.cluster_size + self.eps) / (n + self.num_embeddings * self.eps) * n
                    self.codebook.copy_(self.embed_avg / size[:, None])
                if self.dead_code_restart:
                    self._restart_dead_codes(flat.detach())

        commitment = F.mse_loss(flat, z_q.detach())
        loss = self.beta * commitment
        if not self.ema:
            loss = loss + F.mse_loss(z_q, flat.detach())
        z_q = flat + (z_q - flat).detach()  # straight-through: gradients skip the argmin

        with torch.no_grad():
            probs = onehot.mean(0)
            entropy = -(probs * torch.log(probs + 1e-10)).sum()
            self.stats = {"perplexity": float(entropy.exp()), "usage": float((probs > 0).float().mean())}
        return z_q.view(b, g, g, d).permute(0, 3, 1, 2), loss, idx.view(b, g, g)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        expected = flat.shape[0] / self.num_embeddings
        dead = self.usage < 0.03 * expected
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Restart onto the worst-represented vectors: rare patches (an agent, a goal) are exactly the
        # ones a collapsed codebook blurs away, and random picks would mostly land on the background.
        err = (flat - self.codebook[self.nearest(flat)]).pow(2).sum(1)
        new = flat[err.topk(min(n_dead, flat.shape[0])).indices]
        dead_idx = dead.nonzero().squeeze(1)[: len(new)]
        self.codebook.data[dead_idx] = new
        self.usage[dead_idx] = expected
        if self.ema:
            self.embed_avg[dead_idx] = new
            self.cluster_size[dead_idx] = 1.0


def _conv_stack(channels: list[int], kernel: int, transpose: bool) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    pad = (kernel - 2) // 2  # both kernels halve (or double) the side exactly
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(conv(cin, cout, kernel, stride=2, padding=pad))
        if i < len(channels) - 2 or not transpose:
            layers.append(nn.ReLU(inplace=True))
    return layers


class VQVAE(nn.Module):
    """``x_recon, recon_loss, vq_loss = vae(obs)`` with ``obs`` float (B, 3, H, W) in [0, 1].

    ``encode`` gives code indices (B, G, G); ``latent`` gives the flattened quantised vectors
    (B, G*G*dim) that the MDN-RNN models; ``decode_latent`` maps such vectors (snapped to the codebook
    first) back to frames.
    """

    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        ch = list(config.channels)
        self.encoder = nn.Sequential(
            *_conv_stack([3] + ch, config.kernel_size, transpose=False),
            nn.Conv2d(ch[-1], config.latent_dim, 1),
        )
        self.quantizer = VectorQuantizer(
            config.num_embeddings, config.latent_dim, config.beta, config.ema, config.ema_decay,
            config.dead_code_restart,
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(config.latent_dim, ch[-1], 1),
            nn.ReLU(inplace=True),
            *_conv_stack(ch[::-1] + [3], config.kernel_size, transpose=True),
            nn.Sigmoid(),
        )

    def check_input(self, obs: torch.Tensor) -> None:
        s = self.config.image_size
        if not isinstance(obs, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(obs).__name__}")
        if obs.dim() != 4 or tuple(obs.shape[1:]) != (3, s, s):
            raise ValueError(f"expected frames of shape (B, 3, {s}, {s}), got {tuple(obs.shape)}")
        if not obs.is_floating_point():
            raise ValueError(f"expected float frames in [0, 1], got dtype {obs.dtype}; "
                             "use wm_agent.models.vqvae.frames_to_tensor")
        if not torch.isfinite(obs).all():
            raise ValueError("pixel values contain NaN or infinity")
        lo, hi = float(obs.min()), float(obs.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"expected pixel values in [0, 1], got range [{lo:.3g}, {hi:.3g}]")

    def forward(self, obs: torch.Tensor):
        self.check_input(obs)
        z_q, vq_loss, _ = self.quantizer(self.encoder(obs))
        x_recon = self.decoder(z_q)
        return x_recon, F.mse_loss(x_recon, obs), vq_loss

    @torch.no_grad()
    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Frames -> code indices.

        Args:
            obs: frames (B, 3, H, W) in [0, 1].

        Returns:
            Code indices (B, G, G).
        """
        self.check_input(obs)
        z_e = self.encoder(obs).permute(0, 2, 3, 1)
        return self.quantizer.snap(z_e)[1]

    def indices_to_latent(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices -> flattened latent.

        Args:
            indices: code indices (..., G, G).

        Returns:
            Flattened latent (..., G*G*dim).
        """
        z = self.quantizer.lookup(indices)
        return z.flatten(-3)

    def latent_to_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Flattened latents -> nearest code indices.

        Args:
            z: flattened latents (..., G*G*dim), e.g. sampled by the MDN.

        Returns:
            Nearest code indices (..., G, G).
        """
        g, d = self.config.latent_grid, self.config.latent_dim
        return self.quantizer.snap(z.reshape(*z.shape[:-1], g, g, d))[1]

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices -> frames.

        Args:
            indices: code indices (B, G, G).

        Returns:
            Frames (B, 3, H, W) in [0, 1].
        """
        return self.decoder(self.quantizer.lookup(indices).permute(0, 3, 1, 2))

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Flattened latents -> frames, after snapping to the codebook.

        Args:
            z: flattened latents (B, G*G*dim).

        Returns:
            Frames (B, 3, H, W) in [0, 1].
        """
        return self.decode(self.latent_to_indices(z))


def nearest_code(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Indices of the nearest row of ``codebook`` for each row of ``flat``.

    Args:
        flat: (N, dim).
        codebook: (K, dim).

    Returns:
        Indices (N,).
    """
    # ||x||^2 is the same for every code, so the argmin needs only ||e||^2 - 2 x.e (one addmm):
    # this runs on every dream step for every cell of every env.
    return torch.addmm(codebook.pow(2).sum(1)[None], flat, codebook.t(), alpha=-2).argmin(1)


def code_memberships(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Latent cells (..., dim) -> (..., num_embeddings): how much each cell holds each code.

    The nearest code's row of a Gaussian similarity between codes, with a width of a tenth of the
    codebook's median spacing, normalised to sum to 1: one-hot for well separated codes, identical
    rows shared out among near-duplicates (EMA restarts leave codes that decode alike, a dream may snap
    a cell to either, and a cell kind with four duplicate codes must not weigh four times as much). Networks that
    read the latent grid (M's conv heads, the keypoint controller) read it this way because a learnt
    codebook can put a rare code (the agent) between two common ones on a line, where no single ReLU
    or linear score over raw latent dimensions can single it out.

    Args:
        z: latent cells (..., dim).
        codebook: (num_embeddings, dim).

    Returns:
        (..., num_embeddings): how much each cell holds each code.
    """
    # Autocast off: M reads this inside training's bf16 autocast, where addmm's ||e||^2 - 2 x.e in bf16
    # (8 significant bits) picks the wrong one of two nearby codes.
    with torch.autocast(z.device.type, enabled=False):
        cb = codebook.to(z.dtype)
        nearest = nearest_code(z.reshape(-1, cb.shape[1]), cb)
        return membership_table(cb)[nearest].view(*z.shape[:-1], len(cb))


def membership_table(codebook: torch.Tensor) -> torch.Tensor:
    """The memberships of a cell that holds each code (see ``code_memberships``).

    Args:
        codebook: (K, dim).

    Returns:
        (K, K): row k is the memberships of a cell that holds code k.
    """
    dist = torch.cdist(codebook, codebook)
    spacing = dist[~torch.eye(len(codebook), dtype=torch.bool, device=codebook.device)].median().clamp_min(1e-6)
    similar = torch.exp(-0.5 * (dist / (0.1 * spacing)).pow(2))
    return similar / similar.sum(1, keepdim=True)


def frames_to_tensor(frames, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames -> float frames.

    Args:
        frames: uint8 (B, H, W, 3), numpy or torch.
        device: where the tensor goes.

    Returns:
        float (B, 3, H, W) in [0, 1].

    Raises:
        ValueError: for frames of another dtype or shape.
    """
    t = torch.as_tensor(frames, device=device)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {t.dtype}")
    if t.dim() != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (B, H, W, 3), got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_frames(x: torch.Tensor):
    """float frames -> uint8 frames.

    Args:
        x: float (B, 3, H, W) in [0, 1].

    Returns:
        uint8 numpy (B, H, W, 3).
    """
    return (x.detach().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
