"""Typed configs: one line of doc per field, which also feeds the CLI's --help."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Bounds:
    """The range a numeric config field (each entry, for a tuple field) must lie in; ``why`` says what needs it."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


SIZE = Bounds(1)  # a count of units, channels, cells, ...
POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
SQUASHES = ("tanh", "relu")  # how a continuous action's tanh output maps onto its bounds (action_squash)


def doc(text: str, default: Any = dataclasses.MISSING, flag: str | None = None, bounds: Bounds | None = None,
        **kw) -> Any:
    """A dataclass field carrying its one-line help text (and, optionally, its CLI flag and the ``Bounds`` its
    value must lie in, which ``field_problems`` checks)."""
    metadata = {"help": text, **({"flag": flag} if flag else {}), **({"bounds": bounds} if bounds else {})}
    return field(default=default, metadata=metadata, **kw)


def is_int(value) -> bool:
    """An int or a numpy integer (a count read from an array), never a bool: ``True`` as a count, size or
    index is a mistake. The one test of "is this a whole number" for every argument check here."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


_BAD = object()
_KIND = {int: ("an int", "ints"), float: ("a number", "numbers"), bool: ("a bool", "bools"), str: ("a str", "strs")}


def _scalar(tp: type, value) -> Any:
    """``value`` as a plain Python ``tp`` (numpy scalars included), or ``_BAD`` where it is not one. Bools are not
    numbers here (``True`` as a size is a mistake), and floats are not ints (``4.0`` would reach torch as a float)."""
    if tp is bool:
        return bool(value) if isinstance(value, (bool, np.bool_)) else _BAD
    if tp is int:
        return int(value) if is_int(value) else _BAD
    if tp is float:
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            return _BAD
        try:
            return float(value)
        except OverflowError:  # an int too large for a float: a range problem, reported as such
            return math.inf if value > 0 else -math.inf
    if tp is str:
        return str(value) if isinstance(value, str) else _BAD
    return value  # a type this check does not know: taken as it is


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_problems(config) -> list[str]:
    """Check every field of dataclass ``config`` against its annotated type and, normalising in place (numpy
    scalars to Python ones, lists to tuples), raise a TypeError naming each field of the wrong type. Else
    return a problem (for a ValueError) per field that is NaN or infinite (a float field) or outside its
    ``Bounds``. Annotations understood: int, float, bool, str and ``tuple[X, ...]`` of those."""
    name_of = type(config).__name__
    wrong, problems = [], []
    for f in dataclasses.fields(config):
        tp, value = _field_types(type(config))[f.name], getattr(config, f.name)
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            ok = isinstance(value, (list, tuple)) or isinstance(value, np.ndarray) and value.ndim == 1
            items = [_scalar(elem, v) for v in value] if ok else [_BAD]
            if any(v is _BAD for v in items):
                wrong.append(f"{f.name} must be a tuple of {_KIND.get(elem, ('', str(elem)))[1]}, "
                             f"got {value!r} ({type(value).__name__})")
                continue
            value = tuple(items)
        else:
            converted = _scalar(tp, value)
            if converted is _BAD:
                wrong.append(f"{f.name} must be {_KIND[tp][0]}, got {value!r} ({type(value).__name__})")
                continue
            value = converted
        setattr(config, f.name, value)
        entries = value if isinstance(value, tuple) else (value,)
        bounds = f.metadata.get("bounds")
        if any(isinstance(v, float) and not math.isfinite(v) for v in entries):
            problems.append(f"{f.name} must be finite, got {value!r}")
        elif bounds is not None and not all(v in bounds for v in entries):
            what = f"every entry of {f.name}" if isinstance(value, tuple) else f.name
            problems.append(f"{what} must be {bounds}, got {value!r}" + (f" ({bounds.why})" if bounds.why else ""))
    if wrong:
        raise TypeError(f"invalid {name_of}: " + "; ".join(wrong))
    return problems


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
        return (f"{self.what} {flag_text(flag, self.saved)}, not {flag_text(flag, self.now)}" if self.flag
                else self.found)


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

    image_size: int = doc("side of the square RGB frames the VQ-VAE sees", 64, bounds=SIZE)
    latent_dim: int = doc("dimension of one codebook vector", 4, bounds=SIZE)
    latent_grid: int = doc("side of the quantised latent grid (image_size / latent_grid must be a power of 2)", 8,
                           bounds=SIZE)
    num_embeddings: int = doc("codebook size", 8, bounds=Bounds(
        2, 2 ** 15, why="one code tells frames nothing and gives the code memberships no spacing to measure; "
        "encode_dataset stores codes as int16"))
    hidden_size: int = doc("LSTM hidden units of the MDN-RNN", 128, bounds=SIZE)
    head_hidden: int = doc("channels of the MDN-RNN's conv head over the latent grid", 32, bounds=SIZE)
    context_channels: int = doc("channels through which the LSTM state enters the conv head", 16,
                                bounds=SIZE)
    rnn_reads_codes: bool = doc("M's conv heads read each latent cell as its code (one-hot over the codebook) "
                                "instead of its raw latent vector; only an M built with V's codebook can (WorldModel's "
                                "M always is; a bare MDNRNN(config) reads raw latents)", True)
    num_mixtures: int = doc("Gaussian components of the MDN head", 5, bounds=SIZE)
    learning_rate: float = doc("Adam learning rate for V and M", 3e-3, bounds=POSITIVE)
    channels: tuple[int, ...] = doc("conv channels of the VQ-VAE encoder, one per stride-2 stage", (16, 32, 32),
                                    bounds=SIZE)
    kernel_size: int = doc("VQ-VAE conv kernel: 2 gives non-overlapping patches (one code per patch), 4 overlaps", 2)
    beta: float = doc("commitment loss weight of the vector quantiser", 0.25, bounds=NON_NEGATIVE)
    ema: bool = doc("update the codebook by exponential moving averages instead of its loss", True)
    ema_decay: float = doc("decay of the EMA codebook updates", 0.99,
                           bounds=Bounds(0, 1, high_open=True, why="at 1 the codebook would never move"))
    dead_code_restart: bool = doc("move unused codes onto random encoder outputs during training", True)
    action_dim: int = doc("number of discrete actions, or the size of a continuous action vector", 4,
                          bounds=SIZE)
    discrete_actions: bool = doc("actions are integers in [0, action_dim) rather than vectors", True)
    action_low: tuple[float, ...] = doc("lower bounds of continuous actions (empty: -1)", ())
    action_high: tuple[float, ...] = doc("upper bounds of continuous actions (empty: +1)", ())
    action_squash: tuple[str, ...] = doc("per continuous action, how the controller's tanh output t maps onto [low, "
                                         "high]: 'tanh' (affinely, the midpoint at t = 0) or 'relu' (low for every "
                                         "t <= 0, then up to high: an action that rests at its low bound, as the "
                                         "paper's CarRacing brake); empty: all 'tanh'", ())
    min_log_sigma: float = doc("lower bound of the MDN's log std (keeps the NLL bounded on deterministic data)", -4.0)
    max_log_sigma: float = doc("upper bound of the MDN's log std", 1.0)
    nll_beta: float = doc("beta-NLL weight sg[sigma^(2 beta)] on the mixture NLL while training (0 = plain NLL)", 1.0,
                          bounds=Bounds(0, 1, why="beta-NLL runs from plain NLL (0) to MSE-like gradients (1)"))
    reward_weight: float = doc("weight of the reward MSE in the MDN-RNN loss", 0.1, bounds=NON_NEGATIVE)
    done_weight: float = doc("weight of the done BCE in the MDN-RNN loss", 0.1, bounds=NON_NEGATIVE)
    controller: str = doc("controller architecture: 'linear' on concat(z, h) as in the paper, or 'keypoint' "
                          "(spatial-softmax keypoints on the latent grid z; it ignores h, see controller.py)", "linear")
    controller_hidden: int = doc("hidden units of the controller (0 = linear readout, as in the paper)", 0,
                                 bounds=NON_NEGATIVE)
    controller_keypoints: int = doc("keypoints of the 'keypoint' controller (>= 1)", 2, bounds=SIZE)
    controller_pca: int = doc("'linear' only: read the first K principal directions of the standardised input, "
                              "whitened, fitted with the normaliser (0 = all of concat(z, h), as in the paper)", 0,
                              bounds=NON_NEGATIVE)
    max_controller_params: int = doc("refuse configs whose controller would be too large for CMA-ES", 20000,
                                     bounds=SIZE)

    def __post_init__(self):
        # Every field by its annotated type and Bounds (a TypeError or ValueError naming it), then the rules
        # that tie fields together. from_dict comes through here too, so a checkpoint's config is checked alike.
        problems = field_problems(self)
        if not self.channels:
            problems.append("channels must name at least one conv stage, got ()")
        if self.kernel_size not in (2, 4):
            problems.append(f"kernel_size must be 2 or 4, got {self.kernel_size}")
        if self.controller not in ("linear", "keypoint"):
            problems.append(f"controller must be 'linear' or 'keypoint', got {self.controller!r}")
        if problems:
            raise ValueError("invalid WorldModelConfig: " + "; ".join(problems))
        if self.image_size % self.latent_grid:
            problems.append(f"image_size ({self.image_size}) must be a positive multiple of latent_grid "
                            f"({self.latent_grid})")
        else:
            factor = self.image_size // self.latent_grid
            if factor & (factor - 1) or 2 ** len(self.channels) != factor:
                problems.append(
                    f"image_size/latent_grid = {factor} must equal 2**len(channels) = {2 ** len(self.channels)}"
                )
        if self.action_low and len(self.action_low) != self.action_dim or len(self.action_low) != len(self.action_high):
            problems.append("action_low/action_high must both be empty or both have action_dim entries")
        elif any(lo > hi for lo, hi in zip(self.action_low, self.action_high)):
            problems.append(
                f"action_low {self.action_low} must not exceed action_high {self.action_high} anywhere"
            )
        if self.action_squash and (self.discrete_actions or len(self.action_squash) != self.action_dim):
            problems.append(f"action_squash {self.action_squash} must be empty or name one squash for each of the "
                            f"{self.action_dim} continuous actions")
        elif set(self.action_squash) - set(SQUASHES):
            problems.append(f"action_squash entries must be one of {SQUASHES}, got {self.action_squash}")
        if not self.min_log_sigma < self.max_log_sigma:
            problems.append(
                f"min_log_sigma ({self.min_log_sigma:g}) must be below max_log_sigma ({self.max_log_sigma:g})"
            )
        if self.controller_pca and self.controller != "linear":
            problems.append(f"controller_pca ({self.controller_pca}) is for the 'linear' controller, not "
                            f"'{self.controller}'")
        elif self.controller_pca > self.z_size + self.hidden_size:
            problems.append(f"controller_pca ({self.controller_pca}) must not exceed the input's size "
                            f"z + h = {self.z_size + self.hidden_size}")
        if not problems and self.controller_params > self.max_controller_params:
            problems.append(
                f"the controller would have {self.controller_params} parameters "
                f"(z={self.z_size}, h={self.hidden_size}, "
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
        """Inputs of the controller's readout: concat(z, h) (or its first principal directions), or the keypoint
        features."""
        if self.controller == "linear":
            return self.controller_pca or self.z_size + self.hidden_size
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
    def squashes(self) -> tuple[str, ...]:
        """Each continuous action's squash (action_squash, its empty default spelt out); () for discrete actions."""
        return () if self.discrete_actions else self.action_squash or ("tanh",) * self.action_dim

    @property
    def controller_params(self) -> int:
        return sum(math.prod(shape) for shape in self.controller_shapes())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in ("channels", "action_low", "action_high", "action_squash"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldModelConfig":
        if not isinstance(d, dict):
            raise TypeError(f"a WorldModelConfig is stored as a dict of its fields, got {type(d).__name__}")
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
            # Brake off for every negative output, as in the paper: with a midpoint squash it is half on at 0
            # and off only when saturated, which pushes the search towards a saturated controller.
            action_squash=("tanh", "tanh", "relu"),
        )
        base.update(overrides)
        return cls(**base)


PRESETS = {"WM-GridWorld-v0": WorldModelConfig.gridworld, "WM-CarRacing-v0": WorldModelConfig.car_racing}
