"""Gymnasium's CarRacing-v3 seen the way the paper's agent saw it: 64x64 RGB, dashboard cropped.

An optional action repeat steps the physics several times per decision and draws only the last frame:
CarRacing's step is almost all drawing, so a decision gets several times cheaper (measured in
docs/benchmarks.md), while every frame's reward still counts and an episode still lasts 1000 frames.
"""

from __future__ import annotations

import gymnasium as gym

from envs.wrappers import ImageObservation

DASHBOARD_FREE_ROWS = (0, 84)  # CarRacing draws its 96x96 frame with a 12-row dashboard at the bottom
EPISODE_FRAMES = 1000  # CarRacing-v3's own episode length (its registered max_episode_steps)


def _repeating_car_racing(action_repeat: int, max_frames: int, **kwargs):
    """A CarRacing whose ``step`` applies one action for ``action_repeat`` frames and draws only the last."""
    from gymnasium.envs.box2d.car_racing import CarRacing

    class RepeatingCarRacing(CarRacing):
        # One observed frame per decision: a video of them plays in real time at 1/k of CarRacing's rate.
        metadata = {**CarRacing.metadata, "render_fps": CarRacing.metadata["render_fps"] / action_repeat}

        def reset(self, *, seed=None, options=None):
            self._frames = 0
            self._draw = True
            return super().reset(seed=seed, options=options)

        def _render(self, mode: str, *args, **kwargs):
            if mode == "state_pixels" and not self._draw:
                return self.state  # a frame nobody sees: keep the last one instead of drawing the track
            return super()._render(mode, *args, **kwargs)

        def step(self, action):
            if action is None:  # reset's own first call, which moves nothing
                return super().step(action)
            total, info = 0.0, {}
            terminated = False
            for repeat in range(action_repeat):
                last = repeat == action_repeat - 1 or self._frames + 1 >= max_frames
                self._draw = last
                _, reward, terminated, _, info = super().step(action)
                self._frames += 1
                total += reward
                if terminated or last:
                    break
            if not self._draw:  # the episode ended on a frame that was not drawn
                self._draw = True
                self.state = self._render("state_pixels")
            self._draw = True
            info["frames"] = self._frames
            truncated = not terminated and self._frames >= max_frames
            return self.state, total, terminated, truncated, info

    return RepeatingCarRacing(**kwargs)


def make_car_racing(
    render_mode: str | None = None,
    continuous: bool = True,
    crop_dashboard: bool = True,
    size: int = 64,
    action_repeat: int = 1,
    **kwargs,
) -> gym.Env:
    """``WM-CarRacing-v0``: CarRacing-v3 with ``size x size x 3`` uint8 observations.

    Args:
        render_mode: passed to CarRacing (``"human"``, ``"rgb_array"``, ``"state_pixels"``).
        continuous: ``False`` gives the 5-action discrete variant.
        crop_dashboard: keep rows 0:84 before resizing (the paper's preprocessing).
        size: output side length.
        action_repeat: frames each action is held for; only the last one is drawn and observed, the
            reward is the sum over the frames, and an episode still ends (truncated) after 1000 frames,
            so the return is CarRacing's own. 1 is CarRacing unchanged.
        **kwargs: any other CarRacing argument (``domain_randomize``, ``lap_complete_percent``).
    """
    from gymnasium.envs.box2d.car_racing import CarRacing

    # Checked here, as every env of ours does: CarRacing itself only asserts it at the first reset.
    if render_mode is not None and render_mode not in CarRacing.metadata["render_modes"]:
        raise ValueError(f"render_mode must be one of {CarRacing.metadata['render_modes']}, got {render_mode!r}")
    if isinstance(action_repeat, bool) or not isinstance(action_repeat, int) or not 1 <= action_repeat <= 100:
        raise ValueError(f"action_repeat must be a whole number from 1 to 100, got {action_repeat!r}")
    if action_repeat == 1:
        env = CarRacing(render_mode=render_mode, continuous=continuous, **kwargs)
    else:
        env = _repeating_car_racing(action_repeat, EPISODE_FRAMES, render_mode=render_mode, continuous=continuous,
                                    **kwargs)
        # The registered limit (1000) counts decisions, which never binds first here: this one says how
        # many decisions an episode has (the episode still ends on its 1000th frame), for whoever asks the
        # env rather than the registry (a world model's dreams end there too).
        env = gym.wrappers.TimeLimit(env, max_episode_steps=-(-EPISODE_FRAMES // action_repeat))
    return ImageObservation(env, size=size, crop=DASHBOARD_FREE_ROWS if crop_dashboard else None)
