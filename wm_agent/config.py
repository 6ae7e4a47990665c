"""Typed configs: one line of doc per field, which also feeds the CLI's --help."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def doc(text: str, default: Any = dataclasses.MISSING, flag: str | None = None, **kw) -> Any:
    """A dataclass field carrying its one-line help text (and, optionally, its CLI flag)."""
    metadata = {"help": text, **({"flag": flag} if flag else {})}
    return field(default=default, metadata=metadata, **kw)


def check_settings(*checks: tuple[bool, str]) -> None:
    """Raise ValueError with the message of the first ``(ok, message)`` whose ``ok`` is false, so that a
    bad command line is told exactly which option is wrong."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def flag_text(flag: str, value) -> str:
    """A setting as typed on the command line: ``--popsize 4``, ``--sigma0 0.5``, ``--greedy`` / ``--no-greedy``."""
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


class ResumeMismatch(ValueError):
    """A --resume whose settings or data are not the saved run's. ``found`` says what differs and
    ``resume`` how to resume instead; the message adds the command line's other way out, which the
    demo (no --overwrite, no --resume) replaces with its own. For a setting, ``stage`` and ``flag`` say
    which, and ``found_as`` words it under another option name (the demo's ``--rnn-batch-size``)."""

    def __init__(self, path, found: str, resume: str, stage: str | None = None, flag: str | None = None,
                 what: str = "", saved=None, now=None):
        self.path, self.found, self.resume = str(path), found, resume
        self.stage, self.flag, self.what, self.saved, self.now = stage, flag, what, saved, now
        super().__init__(f"{path}: {found}; {resume}, or pass --overwrite without --resume to start again")

    def found_as(self, flag: str) -> str:
        return f"{self.what} {flag_text(flag, self.saved)}, not {flag_text(flag, self.now)}" if self.flag else self.found


def refuse_other_settings(path, stage: str, what: str, saved: dict, now: dict) -> None:
    """On --resume, a ``ResumeMismatch`` for the first flag in ``now`` whose ``saved`` value differs (flags the
    saved run did not record, from older checkpoints, are not checked); ``what`` leads the sentence."""
    for flag, value in now.items():
        if flag in saved and saved[flag] != value:
            old = saved[flag]
            raise ResumeMismatch(path, f"{what} {flag_text(flag, old)}, not {flag_text(flag, value)}",
                                 f"resume with {flag_text(flag, old)}", stage, flag, what, old, value)


@dataclass
class WorldModelConfig:
    """Sizes of V (VQ-VAE), M (MDN-RNN) and C (controller); stored inside every checkpoint."""

    image_size: int = doc("side of the square RGB frames the VQ-VAE sees", 64)
    latent_dim: int = doc("dimension of one codebook vector", 4)
    latent_grid: int = doc("side of the quantised latent grid (image_size / latent_grid must be a power of 2)", 8)
    num_embeddings: int = doc("codebook size", 8)
    hidden_size: int = doc("LSTM hidden units of the MDN-RNN", 128)
    head_hidden: int = doc("channels of the MDN-RNN's conv head over the latent grid", 32)
    context_channels: int = doc("channels through which the LSTM state enters the conv head", 16)
    rnn_reads_codes: bool = doc("M's conv heads read each latent cell as its code (one-hot over the codebook) "
                                "instead of its raw latent vector", True)
    num_mixtures: int = doc("Gaussian components of the MDN head", 5)
    learning_rate: float = doc("Adam learning rate for V and M", 3e-3)
    channels: tuple[int, ...] = doc("conv channels of the VQ-VAE encoder, one per stride-2 stage", (16, 32, 32))
    kernel_size: int = doc("VQ-VAE conv kernel: 2 gives non-overlapping patches (one code per patch), 4 overlaps", 2)
    beta: float = doc("commitment loss weight of the vector quantiser", 0.25)
    ema: bool = doc("update the codebook by exponential moving averages instead of its loss", True)
    ema_decay: float = doc("decay of the EMA codebook updates", 0.99)
    dead_code_restart: bool = doc("move unused codes onto random encoder outputs during training", True)
    action_dim: int = doc("number of discrete actions, or the size of a continuous action vector", 4)
    discrete_actions: bool = doc("actions are integers in [0, action_dim) rather than vectors", True)
    action_low: tuple[float, ...] = doc("lower bounds of continuous actions (empty: -1)", ())
    action_high: tuple[float, ...] = doc("upper bounds of continuous actions (empty: +1)", ())
    min_log_sigma: float = doc("lower bound of the MDN's log std (keeps the NLL bounded on deterministic data)", -4.0)
    max_log_sigma: float = doc("upper bound of the MDN's log std", 1.0)
    nll_beta: float = doc("beta-NLL weight sg[sigma^(2 beta)] on the mixture NLL while training (0 = plain NLL)", 1.0)
    reward_weight: float = doc("weight of the reward MSE in the MDN-RNN loss", 0.1)
    done_weight: float = doc("weight of the done BCE in the MDN-RNN loss", 0.1)
    controller: str = doc("controller architecture: 'linear' on concat(z, h) as in the paper, or 'keypoint' "
                          "(spatial-softmax keypoints on the latent grid, see controller.py)", "linear")
    controller_hidden: int = doc("hidden units of the controller (0 = linear readout, as in the paper)", 0)
    controller_keypoints: int = doc("keypoints of the 'keypoint' controller (>= 1)", 2)
    max_controller_params: int = doc("refuse configs whose controller would be too large for CMA-ES", 20000)

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.action_low = tuple(float(v) for v in self.action_low)
        self.action_high = tuple(float(v) for v in self.action_high)
        problems = []
        if self.image_size <= 0 or self.latent_grid <= 0 or self.image_size % self.latent_grid:
            problems.append(f"image_size ({self.image_size}) must be a positive multiple of latent_grid ({self.latent_grid})")
        else:
            factor = self.image_size // self.latent_grid
            if factor & (factor - 1) or 2 ** len(self.channels) != factor:
                problems.append(
                    f"image_size/latent_grid = {factor} must equal 2**len(channels) = {2 ** len(self.channels)}"
                )
        for name in ("latent_dim", "num_embeddings", "hidden_size", "num_mixtures", "action_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.action_low and len(self.action_low) != self.action_dim or len(self.action_low) != len(self.action_high):
            problems.append("action_low/action_high must both be empty or both have action_dim entries")
        if self.kernel_size not in (2, 4):
            problems.append(f"kernel_size must be 2 or 4, got {self.kernel_size}")
        if not self.min_log_sigma < self.max_log_sigma:
            problems.append("min_log_sigma must be below max_log_sigma")
        if self.controller not in ("linear", "keypoint"):
            problems.append(f"controller must be 'linear' or 'keypoint', got {self.controller!r}")
        if self.controller_keypoints < 1 or self.controller_hidden < 0:
            problems.append("controller_keypoints must be >= 1 and controller_hidden >= 0")
        if not problems and self.controller_params > self.max_controller_params:
            problems.append(
                f"the controller would have {self.controller_params} parameters (z={self.z_size}, h={self.hidden_size}, "
                f"actions={self.action_dim}), over max_controller_params={self.max_controller_params}: "
                f"CMA-ES cannot search that many; shrink latent_grid/latent_dim/hidden_size"
            )
        if problems:
            raise ValueError("invalid WorldModelConfig: " + "; ".join(problems))

    @property
    def z_size(self) -> int:
        """Length of the flattened quantised latent the MDN-RNN models."""
        return self.latent_grid * self.latent_grid * self.latent_dim

    @property
    def controller_features(self) -> int:
        """Inputs of the controller's readout: concat(z, h), or the keypoint features."""
        if self.controller == "linear":
            return self.z_size + self.hidden_size
        return sum(self.keypoint_feature_sizes.values())

    @property
    def keypoint_feature_sizes(self) -> dict[str, int]:
        """The keypoint controller's features, in the order they sit in its readout's input."""
        k = self.controller_keypoints
        return {
            "where": 2 * k,  # each keypoint's expected (row, col)
            # the 3x3 cells around each keypoint: code memberships plus an "inside the grid" channel
            "glimpse": k * 9 * (self.num_embeddings + 1),
            "pairs": 4 * (k * (k - 1) // 2),  # per pair of keypoints their offset and its squashed sign
        }

    def controller_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the controller's parameters, in the order they sit in its flat vector."""
        shapes: list[tuple[int, ...]] = []
        if self.controller == "keypoint":
            shapes.append((self.controller_keypoints, self.num_embeddings))  # keypoint score weight per code
        inputs, out = self.controller_features, self.action_dim
        if self.controller_hidden:
            shapes += [(inputs, self.controller_hidden), (self.controller_hidden,)]
            inputs = self.controller_hidden
        shapes += [(inputs, out), (out,)]
        if self.controller == "keypoint":
            shapes.append((1,))  # log gain of the logits, see Controller.batched
        return shapes

    @property
    def controller_params(self) -> int:
        return sum(math.prod(shape) for shape in self.controller_shapes())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("channels", "action_low", "action_high"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WorldModelConfig fields {sorted(unknown)} (checkpoint from another version?)")
        return cls(**d)

    @classmethod
    def gridworld(cls, **overrides) -> "WorldModelConfig":
        """Preset for WM-GridWorld-v0: one code per 8x8-pixel cell, 4 actions, the keypoint controller."""
        return cls(**{"controller": "keypoint", **overrides})

    @classmethod
    def car_racing(cls, **overrides) -> "WorldModelConfig":
        """Preset for WM-CarRacing-v0: overlapping convs, a larger codebook, 3 continuous actions."""
        base = dict(
            latent_dim=4, latent_grid=8, num_embeddings=64, hidden_size=256, channels=(32, 64, 128),
            kernel_size=4, action_dim=3, discrete_actions=False, learning_rate=3e-4,
            action_low=(-1.0, 0.0, 0.0), action_high=(1.0, 1.0, 1.0),
        )
        base.update(overrides)
        return cls(**base)


PRESETS = {"WM-GridWorld-v0": WorldModelConfig.gridworld, "WM-CarRacing-v0": WorldModelConfig.car_racing}
