"""Gymnasium's CarRacing-v3 seen the way the paper's agent saw it: 64x64 RGB, dashboard cropped."""

from __future__ import annotations

import gymnasium as gym

from envs.wrappers import ImageObservation

DASHBOARD_FREE_ROWS = (0, 84)  # CarRacing draws its 96x96 frame with a 12-row dashboard at the bottom


def make_car_racing(
    render_mode: str | None = None,
    continuous: bool = True,
    crop_dashboard: bool = True,
    size: int = 64,
    **kwargs,
) -> gym.Env:
    """``WM-CarRacing-v0``: CarRacing-v3 with ``size x size x 3`` uint8 observations.

    Args:
        render_mode: passed to CarRacing (``"human"``, ``"rgb_array"``, ``"state_pixels"``).
        continuous: ``False`` gives the 5-action discrete variant.
        crop_dashboard: keep rows 0:84 before resizing (the paper's preprocessing).
        size: output side length.
        **kwargs: any other CarRacing argument (``domain_randomize``, ``lap_complete_percent``).
    """
    from gymnasium.envs.box2d.car_racing import CarRacing

    # Checked here, as every env of ours does: CarRacing itself only asserts it at the first reset.
    if render_mode is not None and render_mode not in CarRacing.metadata["render_modes"]:
        raise ValueError(f"render_mode must be one of {CarRacing.metadata['render_modes']}, got {render_mode!r}")
    env = CarRacing(render_mode=render_mode, continuous=continuous, **kwargs)
    return ImageObservation(env, size=size, crop=DASHBOARD_FREE_ROWS if crop_dashboard else None)
