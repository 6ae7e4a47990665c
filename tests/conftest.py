"""Shared test setup: headless pygame, and the list of WM-* envs the generic env tests cover."""

from __future__ import annotations

import os

# Before anything imports pygame (CarRacing, rendering): no display, no sound card needed.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

# A suite started in the background of a non-interactive shell (`cmd &`, nohup) inherits SIGINT ignored, and
# so would every command the tests start; wm-agent rightly leaves an ignored SIGINT ignored, which the
# Ctrl-C tests would then read as a failure. The tests stand in for a terminal: give SIGINT its default.
import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from typing import Callable

import gymnasium as gym
import pytest

import wm_agent  # noqa: F401  (registers the WM-* envs)

# ---- HOOK for envs that need constructor arguments -------------------------------------------
# WM-Dream-v0 needs a world model. To put it under the generic env tests (check_env, seeded
# determinism), add a factory returning its gym.make kwargs, e.g.
#     ENV_KWARGS_FACTORIES["WM-Dream-v0"] = lambda: {"world_model": tiny_untrained_world_model()}
# and it is picked up automatically; until then it is left out.
ENV_KWARGS_FACTORIES: dict[str, Callable[[], dict]] = {}
NEEDS_KWARGS = {"WM-Dream-v0"}

# WM-Dream-v0 runs a tiny untrained world model (built from a fixed seed, so rollouts repeat) with
# pixel observations, so the generic tests' 64x64x3 checks apply to it as to the real envs.
from helpers import dream_env_kwargs  # noqa: E402

ENV_KWARGS_FACTORIES["WM-Dream-v0"] = dream_env_kwargs
# WM-Pixels-v0 observes another env's render: CartPole's, the state-vector env it was made for.
ENV_KWARGS_FACTORIES["WM-Pixels-v0"] = lambda: {"env_id": "CartPole-v1"}


def wm_env_ids() -> list[str]:
    """Every registered WM-* id the generic env tests can make."""
    return sorted(
        env_id
        for env_id in gym.registry
        if env_id.startswith("WM-") and (env_id not in NEEDS_KWARGS or env_id in ENV_KWARGS_FACTORIES)
    )


def make_wm_env(env_id: str, **kwargs) -> gym.Env:
    factory = ENV_KWARGS_FACTORIES.get(env_id)
    return gym.make(env_id, **{**(factory() if factory else {}), **kwargs})


def pytest_configure(config):
    # Box2D's SWIG bindings (CarRacing) warn about themselves on import; nothing we can act on.
    config.addinivalue_line("filterwarnings", "ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


@pytest.fixture
def ckpt(tmp_path):
    """A tiny trained world model saved to a file (the controller trainers' tests start from it)."""
    from helpers import tiny_world_model

    path = tmp_path / "wm.pt"
    tiny_world_model().save(path)
    return path
