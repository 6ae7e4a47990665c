"""Input validation of WorldModelConfig: every field by its annotated type and range, when built and when loaded."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing

import numpy as np
import pytest
import torch

from wm_agent.config import PRESETS, Bounds, WorldModelConfig

FIELDS = {f.name: f for f in dataclasses.fields(WorldModelConfig)}
HINTS = typing.get_type_hints(WorldModelConfig)
CONTINUOUS = dict(discrete_actions=False, action_dim=2, action_low=(-1.0, 0.0), action_high=(1.0, 1.0))


def _refused(error: type[Exception], name: str, **kwargs) -> str:
    """Build a config from ``kwargs``; assert it raises ``error`` whose message names field ``name``."""
    with pytest.raises(error) as exc:
        WorldModelConfig(**kwargs)
    assert type(exc.value) is error, f"{type(exc.value).__name__}: {exc.value}"
    message = str(exc.value)
    assert re.search(rf"\b{name}\b", message), message
    return message


def _outside(name: str) -> list:
    """Values just outside field ``name``'s Bounds (of the field's own type)."""
    bounds: Bounds = FIELDS[name].metadata["bounds"]
    step = 1 if HINTS[name] is int or typing.get_args(HINTS[name]) == (int, ...) else 1e-3
    values = []
    if math.isfinite(bounds.low):
        values.append(bounds.low if bounds.low_open else bounds.low - step)
    if math.isfinite(bounds.high):
        values.append(bounds.high if bounds.high_open else bounds.high + step)
    return [type(step)(v) for v in values]


def _with(name: str, value) -> dict:
    """kwargs that set field ``name`` to ``value`` (a tuple field: as one of its entries)."""
    if name == "channels":
        return {"channels": (16, value, 32)}
    if name in ("action_low", "action_high"):
        return {**CONTINUOUS, name: (value, 0.5)}
    return {name: value}


BOUNDED = [name for name, f in FIELDS.items() if "bounds" in f.metadata]
FLOATS = [name for name, hint in HINTS.items() if hint is float or typing.get_args(hint) == (float, ...)]


def test_every_preset_validates():
    for make in (WorldModelConfig, *PRESETS.values()):
        cfg = make()
        assert WorldModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        # the per-field rules must leave every preset's value alone, not only let it through
        assert dataclasses.replace(cfg) == cfg


def test_every_field_has_a_checked_type_and_range():
    """A new numeric field must say its range (or be listed here with where it is checked instead)."""
    checked_elsewhere = {"kernel_size", "min_log_sigma", "max_log_sigma", "action_low", "action_high"}
    for name, hint in HINTS.items():
        scalar = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
        assert scalar in (int, float, bool, str), (name, hint)
        if scalar in (int, float):
            assert (name in BOUNDED) != (name in checked_elsewhere), name


@pytest.mark.parametrize(
    "name, value",
    [
        ("latent_dim", 4.0), ("image_size", 64.0), ("hidden_size", "128"), ("head_hidden", True),
        ("num_embeddings", np.float64(8)), ("max_controller_params", None), ("learning_rate", "3e-3"),
        ("learning_rate", True), ("ema_decay", np.bool_(True)), ("ema", 1), ("ema", "False"),
        ("rnn_reads_codes", None), ("controller", 3), ("controller", None), ("channels", "163232"),
        ("channels", 16), ("channels", (16, 32.0, 32)), ("channels", (16, False, 32)), ("kernel_size", 2.0),
        ("action_low", ("-1", 0.0)), ("action_high", (True, 1.0)), ("action_low", None), ("action_high", "1, 1"),
    ],
)
def test_wrong_type_is_a_type_error(name, value):
    base = CONTINUOUS if name in ("action_low", "action_high") else {}
    message = _refused(TypeError, name, **{**base, name: value})
    assert repr(value) in message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", FLOATS)
def test_nan_or_infinite_float_is_refused(name, value):
    message = _refused(ValueError, name, **_with(name, value))
    assert "finite" in message


@pytest.mark.parametrize(
    "name, value", [(name, value) for name in BOUNDED for value in _outside(name)]
    + [("ema_decay", 5.0), ("learning_rate", -3e-3), ("context_channels", -1)],  # the reviewer's cases
)
def test_out_of_range_is_refused(name, value):
    message = _refused(ValueError, name, **_with(name, value))
    assert repr(value) in message or str(value) in message


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("channels", dict(channels=(), latent_grid=64)),
        ("action_low", {**CONTINUOUS, "action_low": (-1.0, 2.0)}),
        ("min_log_sigma", dict(min_log_sigma=2.0, max_log_sigma=1.0)),
        ("kernel_size", dict(kernel_size=3)),
        ("controller", dict(controller="transformer")),
    ],
)
def test_inconsistent_fields_are_refused(name, kwargs):
    _refused(ValueError, name, **kwargs)


def test_numpy_scalars_and_lists_are_taken_as_plain_python():
    cfg = WorldModelConfig(
        latent_dim=np.int64(4), hidden_size=np.int32(64), learning_rate=np.float32(0.5), beta=1, ema=np.bool_(False),
        channels=np.array([8, 8, 8]), discrete_actions=False, action_dim=np.uint8(2), action_low=[-1, 0],
        action_high=np.array([1.0, 1.0], np.float32),
    )
    assert cfg.channels == (8, 8, 8) and cfg.action_low == (-1.0, 0.0) and cfg.action_high == (1.0, 1.0)
    for name, hint in HINTS.items():
        value = getattr(cfg, name)
        if typing.get_origin(hint) is tuple:
            assert type(value) is tuple and all(type(v) is typing.get_args(hint)[0] for v in value), name
        else:
            assert type(value) is hint, name
    assert WorldModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "name, value, error",
    [("latent_dim", 4.0, TypeError), ("ema_decay", 5.0, ValueError), ("head_hidden", 0, ValueError)],
)
def test_a_stored_config_is_checked_when_loaded(tmp_path, name, value, error):
    from wm_agent.world_model import FORMAT, VERSION, WorldModel

    stored = {**WorldModelConfig.gridworld().to_dict(), name: value}
    with pytest.raises(error, match=rf"\b{name}\b"):
        WorldModelConfig.from_dict(stored)
    path = tmp_path / "bad.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": stored}, path)
    with pytest.raises(ValueError, match=rf"bad\.pt carries an unusable config: .*\b{name}\b"):
        WorldModel.load(path)


def test_a_stored_config_must_be_a_dict():
    with pytest.raises(TypeError, match="dict"):
        WorldModelConfig.from_dict([("latent_dim", 4)])
