"""C: the small policy that CMA-ES searches: linear on (z_t, h_t) like the paper, or spatial keypoints on z_t.

Both take the observation concat(z, h) that the dream and ``LatentObservation`` give.
``linear`` reads all of it with one matrix (optionally one hidden layer), exactly the paper's C.
``keypoint`` reads only z, the latent GRID, the way a spatial-softmax layer does (Levine et al., 2016): each
cell is described by which codebook entry it holds (a soft membership per code, so near-duplicate
codes read alike), each keypoint scores every cell with one weight per code, the same at every cell,
a softmax over cells turns the scores into an attention map, and the keypoint's expected (row, col)
plus the 3x3 neighbourhood of memberships around it feed the linear readout (codes, not raw
latent dimensions: see ``vqvae.code_memberships``). The readout then sees "where is what, relative to
what" in a few numbers instead of a 256-dimensional absolute map: a navigation rule such as "towards
the goal, around what blocks the next cell" is linear in these features but not in the raw latent.
A last parameter is the log gain of the logits (how sharp the policy is). On GridWorld that is ~700
parameters. It ignores h, the paper's "V only" variant: a GridWorld frame shows the whole state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wm_agent.config import WorldModelConfig
from wm_agent.models.vqvae import code_memberships
from wm_agent.sampling import multinomial


ATTENTION_SCALE = 10.0  # keypoint scores = ATTENTION_SCALE * (memberships . weights), see keypoint_features


class Controller(nn.Module):
    """``controller(z, h)`` -> action logits (discrete) or actions squashed into the bounds (continuous).

    Parameters live in one flat vector (``get_flat`` / ``set_flat``) so an evolution strategy can
    search them; ``batched(params, obs)`` evaluates a whole population at once, one parameter vector
    per row, which is how a vector dream scores every candidate in one forward pass.
    """

    def __init__(self, config: WorldModelConfig, codebook: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        # The VQ-VAE's codebook, shared (not copied, not saved twice): the keypoint controller reads
        # cells as codes. WorldModel passes its own; a bare Controller gets none.
        self.codebook = codebook
        self.in_dim = config.z_size + config.hidden_size
        self.hidden = config.controller_hidden
        self.out_dim = config.action_dim
        self.kind = config.controller
        self.shapes = config.controller_shapes()
        self.num_params = config.controller_params
        self.params = nn.Parameter(torch.zeros(self.num_params))
        low = config.action_low or (-1.0,) * config.action_dim
        high = config.action_high or (1.0,) * config.action_dim
        # Inputs are standardised (statistics fitted once, then frozen and saved): latent codes and
        # LSTM states differ in scale, and CMA-ES searches one step size for all weights.
        self.register_buffer("obs_mean", torch.zeros(self.in_dim))
        self.register_buffer("obs_std", torch.ones(self.in_dim))
        self.pca = config.controller_pca
        if self.pca:  # the principal subspace the readout reads (see fit_normalizer), saved with the controller
            self.register_buffer("pca_mean", torch.zeros(self.in_dim))
            self.register_buffer("pca_basis", torch.eye(self.in_dim)[:, : self.pca])
        self.features = config.controller_features if self.kind == "linear" else self.in_dim  # what normalize() gives
        self.register_buffer("low", torch.tensor(low if not config.discrete_actions else [0.0] * config.action_dim))
        self.register_buffer("high", torch.tensor(high if not config.discrete_actions else [0.0] * config.action_dim))
        # From the config (saved there), so not a saved buffer: older checkpoints load without it.
        relu = [kind == "relu" for kind in config.squashes] or [False] * config.action_dim
        self.register_buffer("relu", torch.tensor(relu), persistent=False)
        g = config.latent_grid
        rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
        coords = torch.stack([rows.flatten(), cols.flatten()], -1).float()
        self.register_buffer("coords", (coords - (g - 1) / 2) / g, persistent=False)  # cell centres in (-1/2, 1/2)

    def fit_normalizer(self, observations: torch.Tensor) -> None:
        """Set the input standardisation (and with ``controller_pca``, the principal subspace) from a batch of
        observations.

        Args:
            observations: (N, in_dim).
        """
        mean, std = observations.mean(0), observations.std(0).clamp_min(1e-2)
        if self.kind == "keypoint":
            zs = self.config.z_size  # z is read as codes, which needs it as it is
            mean[:zs], std[:zs] = 0.0, 1.0
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std)
        if self.pca:
            self.fit_projection(observations)

    def fit_projection(self, observations: torch.Tensor) -> None:
        """The readout's inputs: the first ``controller_pca`` principal directions of the standardised
        observations, each scaled to unit variance over them. A linear readout of all of concat(z, h) has
        hundreds of weights on directions the inputs barely vary along; an evolution strategy's random
        steps pile up there (a random walk, as the returns hardly depend on them), and wherever the inputs
        do move along them those weights flip actions at random. Reading the few directions that carry
        the variance, one step size fits every weight. The normaliser is kept as it is.

        Args:
            observations: (N, in_dim), N > controller_pca.
        """
        if len(observations) <= self.pca:
            raise ValueError(f"fitting {self.pca} principal directions needs more than {self.pca} observations, "
                             f"got {len(observations)}")
        centre, stds, directions = self.principal_directions(observations)
        self.pca_mean.copy_(centre.to(self.pca_mean))
        self.pca_basis.copy_((directions[: self.pca].T / stds[: self.pca].clamp_min(1e-6)).to(self.pca_basis))

    def principal_directions(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The principal directions of the standardised observations (float64).

        Args:
            observations: (N, in_dim), N >= 2.

        Returns:
            (centre (in_dim,), each direction's std (R,), the directions (R, in_dim) as rows), most variance first.
        """
        x = ((observations.to(self.obs_mean) - self.obs_mean) / self.obs_std).double()
        centre = x.mean(0)
        _, s, vt = torch.linalg.svd(x - centre, full_matrices=False)
        return centre, s / math.sqrt(len(x) - 1), vt

    def params_from_full(self, full: np.ndarray) -> np.ndarray:
        """This controller's parameters closest to a linear controller ``full`` reading all of concat(z, h) with
        the same normaliser: its weights seen through the principal subspace (exact on that subspace).

        Args:
            full: the flat parameters (in_dim x action_dim weights, then action_dim biases) of the full readout.

        Returns:
            Flat parameters of this (``controller_pca``) controller.
        """
        if not self.pca or self.hidden:
            raise ValueError("params_from_full maps a full linear readout onto a controller_pca one (no hidden layer)")
        n, a = self.in_dim, self.out_dim
        full = np.asarray(full, np.float64)
        if full.shape != (n * a + a,):
            raise ValueError(f"expected {n * a + a} parameters of a full linear readout, got shape {full.shape}")
        w, b = full[: n * a].reshape(n, a), full[n * a :]
        basis, centre = self.pca_basis.double().cpu().numpy(), self.pca_mean.double().cpu().numpy()
        # x - centre ~ features @ pinv(basis), so x @ w + b ~ features @ (pinv(basis) @ w) + centre @ w + b
        weights = np.linalg.pinv(basis) @ w
        return np.concatenate([weights.ravel(), centre @ w + b])

    def full_params(self) -> np.ndarray:
        """This ``controller_pca`` readout as a linear controller reading all of concat(z, h) with the same
        normaliser: the same map, its weights spread back over the inputs (what ``params_from_full`` inverts).

        Returns:
            Flat parameters (in_dim x action_dim weights, then action_dim biases) of the full readout.
        """
        if not self.pca or self.hidden:
            raise ValueError("full_params spreads a controller_pca readout (no hidden layer) back over all its inputs")
        n, a = self.features, self.out_dim
        flat = self.get_flat()
        weights, bias = flat[: n * a].reshape(n, a), flat[n * a :]
        basis, centre = self.pca_basis.double().cpu().numpy(), self.pca_mean.double().cpu().numpy()
        # features = (x - centre) @ basis, so features @ weights + bias = x @ (basis @ weights) + bias - centre @ ...
        full = basis @ weights
        return np.concatenate([full.ravel(), bias - centre @ full])

    def initial_params(self, observations: torch.Tensor) -> np.ndarray:
        """Where a search starts: zeros, except that each keypoint starts on its own RARE kind of cell.

        From zero weights every keypoint attends to the whole grid and the readout sees no signal; a
        keypoint must land on the agent AND another on the goal AND the readout must use them before
        the return moves at all, a conjunction an evolution strategy found in about one run in five
        here. So keypoint k starts on the k-th rarest kind of cell in ``observations`` (a kind: a code
        and its near-duplicates), e.g. the goal and the agent rather than the background, and the
        search starts where the readout already sees where things are.

        Args:
            observations: (N, in_dim) observations whose cells the kinds are counted in.

        Returns:
            The flat initial parameters (num_params,).
        """
        flat = np.zeros(self.num_params)
        if self.kind != "keypoint" or not len(observations):
            return flat
        cfg = self.config
        cells = self.code_memberships(observations[:, : cfg.z_size].reshape(-1, cfg.latent_dim).to(self.obs_mean))
        share = cells.mean(0).double().cpu().numpy()
        rows = self.code_memberships(self.codebook.to(self.obs_mean)[None])[0].cpu().numpy()
        kinds = rows > 0.5 * rows.max(1, keepdims=True)  # a code and its near-duplicates
        groups = []
        for code in np.argsort(share):
            if share[code] < 1e-6 or any(kinds[code, g].any() for g in groups):  # unseen, or a kind already in
                continue
            groups.append(np.flatnonzero(kinds[code]))
        scores = flat[: cfg.controller_keypoints * cfg.num_embeddings].reshape(cfg.controller_keypoints, -1)
        for k in range(cfg.controller_keypoints):
            if groups:
                scores[k, groups[k % len(groups)]] = 8.0 / ATTENTION_SCALE  # 8 score units over the rest: sharp
        return flat

    def param_scales(self) -> np.ndarray:
        """Relative step sizes for a search. Keypoint scores are multiplied by ATTENTION_SCALE, so their
        steps are that much smaller (else the first generation scatters every keypoint). Readout weights
        on the glimpse features are 1/3 as large: each keypoint's 3x3 glimpse holds 9 memberships that
        sum to ~9, so unit-sized random weights on them drown the few "where is the goal" features in
        random logits, and the first generations see no signal to follow."""
        scales = np.ones(self.num_params)
        if self.kind == "keypoint":
            cfg = self.config
            k, e = cfg.controller_keypoints, cfg.num_embeddings
            scales[: k * e] = 1.0 / ATTENTION_SCALE
            cols = cfg.controller_hidden or cfg.action_dim
            readout = scales[k * e : k * e + cfg.controller_features * cols].reshape(cfg.controller_features, cols)
            sizes = cfg.keypoint_feature_sizes
            readout[sizes["where"] : sizes["where"] + sizes["glimpse"]] = 1.0 / 3.0
        return scales

    def step_factors(self, stds0) -> np.ndarray:
        """Each action's factor in a search's relative step sizes ``stds0`` for a controller of this kind (of
        any input size): the steps of its output bias, which ``param_scales`` leaves at 1, so only an
        ``output_factors`` scaling moves them.

        Args:
            stds0: the search's per-parameter step sizes.

        Returns:
            (out_dim,) factors.
        """
        return np.asarray(stds0, np.float64)[self.output_bias(len(stds0))].copy()

    def output_bias(self, num_params: int | None = None) -> slice:
        """Where the output layer's bias sits in the flat parameters of a controller of this kind with
        ``num_params`` parameters (default: this one's)."""
        end = (self.num_params if num_params is None else num_params) - (self.kind == "keypoint")  # its log gain
        return slice(end - self.out_dim, end)

    def output_factors(self, factors) -> np.ndarray:
        """Per-parameter multipliers that scale each output (before the squash) by its factor: the output
        layer's weight column and bias of action a times ``factors[a]``, every other parameter times 1.

        Args:
            factors: one positive factor per output.

        Returns:
            (num_params,) multipliers.
        """
        factors = np.asarray(factors, np.float64)
        if factors.shape != (self.out_dim,):
            raise ValueError(f"expected one output factor per action ({self.out_dim}), got {factors.tolist()}")
        multipliers = [np.ones(int(np.prod(shape))) for shape in self.shapes]
        last = len(self.shapes) - (2 if self.kind == "linear" else 3)  # the output layer's weight, then its bias
        multipliers[last] = np.broadcast_to(factors, self.shapes[last]).ravel().copy()
        multipliers[last + 1] = factors.copy()
        return np.concatenate(multipliers)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """The readout's inputs (``features`` wide) for observations concat(z, h)."""
        x = (obs - self.obs_mean) / self.obs_std
        return (x - self.pca_mean) @ self.pca_basis if self.pca else x

    def get_flat(self) -> np.ndarray:
        return self.params.detach().cpu().numpy().astype(np.float64)

    def set_flat(self, flat) -> None:
        flat = torch.as_tensor(np.asarray(flat), dtype=torch.float32)
        if flat.shape != (self.num_params,):
            raise ValueError(f"expected {self.num_params} controller parameters, got shape {tuple(flat.shape)}")
        with torch.no_grad():
            self.params.copy_(flat)

    def batched(self, params: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Outputs of N controllers; row i uses params i.

        Args:
            params: (N, num_params).
            obs: (N, in_dim).

        Returns:
            Outputs (N, action_dim).
        """
        n = params.shape[0]
        chunks, at = [], 0
        for shape in self.shapes:
            size = int(np.prod(shape))
            chunks.append(params[:, at : at + size].reshape(n, *shape))
            at += size
        gain = None
        if self.kind == "keypoint":
            gain = chunks.pop().exp()
            x = self.keypoint_features(chunks.pop(0), obs).unsqueeze(1)
        else:
            x = obs.unsqueeze(1)
        if self.hidden:
            w1, b1, w2, b2 = chunks
            x = torch.tanh(torch.bmm(x, w1) + b1.unsqueeze(1))
            out = (torch.bmm(x, w2) + b2.unsqueeze(1)).squeeze(1)
        else:
            w, b = chunks
            out = (torch.bmm(x, w) + b.unsqueeze(1)).squeeze(1)
        if gain is not None:
            # One parameter for how sharp the policy is: separable CMA-ES cannot scale hundreds of weights
            # together (that direction is a correlation it does not model), but it can move one number
            # (measured with param_scales: docs/design.md, "Ablation: the dream-trained controller").
            out = out * gain
        return self.squash(out)

    def code_memberships(self, z: torch.Tensor) -> torch.Tensor:
        """Latent cells -> code memberships, see ``vqvae.code_memberships``.

        Args:
            z: latent cells (N, cells, latent_dim).

        Returns:
            (N, cells, num_embeddings).

        Raises:
            ValueError: for a controller built without the VQ-VAE's codebook.
        """
        if self.codebook is None:
            raise ValueError("the keypoint controller reads cells as codes: build it with the VQ-VAE's codebook "
                             "(WorldModel does this)")
        return code_memberships(z, self.codebook)

    def keypoint_features(self, score_w: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Score weights and observations -> keypoint features.

        Args:
            score_w: (N, K, num_embeddings) score weights.
            obs: (N, in_dim) observations.

        Returns:
            (N, features).
        """
        cfg = self.config
        n, g = obs.shape[0], cfg.latent_grid
        cells = self.code_memberships(obs[:, : cfg.z_size].reshape(n, g * g, cfg.latent_dim))
        # Scaled so that weights of the size CMA-ES starts with (sigma0 ~ 0.5) already give a sharp map:
        # with unit scale, attention starts nearly uniform, every keypoint sits at the centre, and the
        # readout sees no signal to follow (a flat plateau for an evolution strategy).
        scores = ATTENTION_SCALE * torch.bmm(cells, score_w.transpose(1, 2))
        attention = torch.softmax(scores, 1)  # (N, cells, K)
        where = torch.einsum("nck,cx->nkx", attention, self.coords)  # (N, K, 2) expected (row, col)
        # The 3x3 cells around each keypoint, with an "inside the grid" channel so the border reads
        # differently from any code.
        e = cells.shape[-1]
        grid = torch.cat([cells, cells.new_ones(n, g * g, 1)], -1).transpose(1, 2).reshape(n, e + 1, g, g)
        glimpse = torch.bmm(F.unfold(grid, 3, padding=1), attention).transpose(1, 2)  # (N, K, (e+1)*9)
        feats = [where.flatten(1), glimpse.flatten(1)]
        k = where.shape[1]
        for i in range(k):
            for j in range(i + 1, k):
                delta = where[:, j] - where[:, i]
                feats += [delta, torch.tanh(delta * g)]  # the offset, and its sign once over a cell
        return torch.cat(feats, -1)

    def squash(self, out: torch.Tensor) -> torch.Tensor:
        if self.config.discrete_actions:
            return out
        # Clamped: with tanh at +-1, float32 rounding lands just outside asymmetric bounds ([-1, 0.2] gave
        # 0.20000005), which the env's own Box then refuses.
        t = torch.tanh(out)
        unit = torch.where(self.relu, t.clamp_min(0), (t + 1) * 0.5)
        squashed = self.low + unit * (self.high - self.low)
        return torch.minimum(torch.maximum(squashed, self.low), self.high)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.from_obs(torch.cat([z, h], -1))

    def from_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Outputs for observations concat(z, h).

        Args:
            obs: (..., in_dim).

        Returns:
            Outputs (..., out_dim).

        Raises:
            ValueError: for observations of another size.
        """
        if obs.shape[-1] != self.in_dim:
            raise ValueError(f"controller expects z+h of total size {self.in_dim}, got {obs.shape[-1]}")
        flat = self.normalize(obs.reshape(-1, self.in_dim).float())
        out = self.batched(self.params.unsqueeze(0).expand(flat.shape[0], -1), flat)
        return out.reshape(*obs.shape[:-1], self.out_dim)


def choose_actions(outputs: torch.Tensor, discrete: bool, greedy: bool, generator: torch.Generator | None = None,
                   uniforms: torch.Tensor | None = None):
    """Controller outputs -> env actions: argmax or a softmax sample of logits; continuous outputs as they are.

    ``uniforms`` (N,) in [0, 1) draws the samples by inverse CDF from those numbers instead of the
    generator: rows given the same number pick the same action wherever their policies agree (common
    random numbers, see ``cmaes.dream_fitness``).

    Args:
        outputs: controller outputs (N, ...).
        discrete: whether they are logits of discrete actions.
        greedy: argmax instead of a softmax sample.
        generator: the random stream of the samples.
        uniforms: (N,) in [0, 1): draws the samples by inverse CDF from those numbers instead of the generator.

    Returns:
        The actions (N[, A]).
    """
    if not discrete:
        return outputs
    if greedy:
        return outputs.argmax(-1)
    probs = torch.softmax(outputs, -1)
    if uniforms is None:
        return multinomial(probs, generator)
    below = (probs.cumsum(-1) <= uniforms.unsqueeze(-1).to(probs)).sum(-1)
    return below.clamp_max(outputs.shape[-1] - 1)


def env_action(outputs: torch.Tensor, discrete: bool, greedy: bool, generator: torch.Generator | None = None,
               uniforms: torch.Tensor | None = None):
    """The first row of controller outputs as an action a Gymnasium env accepts.

    Args:
        outputs, discrete, greedy, generator, uniforms: as ``choose_actions``'s.

    Returns:
        An int, or a float32 array.
    """
    action = choose_actions(outputs, discrete, greedy, generator, uniforms)[0]
    return int(action) if discrete else action.detach().cpu().numpy().astype(np.float32)
