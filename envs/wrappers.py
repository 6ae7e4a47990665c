"""Bring any image (or ``rgb_array``-rendering) Gymnasium env down to the world model's 64x64x3 uint8."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

Crop = tuple[int, int] | tuple[int, int, int, int]


def _is_image_space(space: gym.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3, 4)))
        and min(space.shape[:2]) >= 8
    )


MAX_SIZE = 1024  # output side: a 64x64 world model needs nothing near it, and a typo must not allocate GiBs


def _checked_crop(crop, shape: tuple[int, int] | None) -> tuple[int, ...] | None:
    """``crop`` as a tuple of ints, refused at construction (not at the first frame) when it is not
    ``(top, bottom)`` / ``(top, bottom, left, right)`` with 0 <= top < bottom (<= height when known)."""
    if crop is None:
        return None
    try:
        values = tuple(crop)
    except TypeError:
        values = ()
    if len(values) not in (2, 4) or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        raise ValueError(f"crop must be (top, bottom) or (top, bottom, left, right) in whole pixels, got {crop!r}")
    values = tuple(int(v) for v in values)
    limits = (None, None) if shape is None else tuple(int(n) for n in shape)
    pairs = [values[:2]] + ([values[2:]] if len(values) == 4 else [])
    for (low, high), limit, what in zip(pairs, limits, ("rows", "columns")):
        if not 0 <= low < high or (limit is not None and high > limit):
            bound = f" <= {limit}" if limit is not None else ""
            raise ValueError(f"crop {values}: {what} must satisfy 0 <= start < end{bound}, got {low}:{high}")
    return values


class ImageObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Observations become ``size x size x 3`` uint8 frames, optionally cropped first.

    Works on envs whose observation space is an image ``Box`` of shape ``(H, W)``, ``(H, W, 1|3|4)``
    (uint8 in [0, 255], or float in [0, 1] or [0, 255] as the space's upper bound says; an unbounded float
    space, up to the dtype's largest value, counts as [0, 1]); for any other env created with ``render_mode="rgb_array"``
    the rendered frame becomes the observation (e.g. ``CartPole-v1``). Resizing uses Pillow's
    area filter (Pillow arrives with imageio), so no OpenCV is needed.

    Args:
        env: the env to wrap.
        size: output side length in pixels.
        crop: rows ``(top, bottom)`` or ``(top, bottom, left, right)`` kept before resizing, e.g.
            ``(0, 84)`` drops CarRacing's dashboard as the paper did.
    """

    def __init__(self, env: gym.Env, size: int = 64, crop: Crop | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, size=size, crop=crop)
        gym.ObservationWrapper.__init__(self, env)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= MAX_SIZE:
            raise ValueError(f"size must be an int in [8, {MAX_SIZE}], got {size!r}")
        size = int(size)
        space = env.observation_space
        self._from_render = not _is_image_space(space)
        if self._from_render and env.render_mode != "rgb_array":
            raise ValueError(
                f"ImageObservation needs image observations of shape (H, W[, 1|3|4]) or an env made with "
                f"render_mode='rgb_array'; got observation_space={space} and render_mode={env.render_mode!r}"
            )
        crop = _checked_crop(crop, None if self._from_render else space.shape[:2])
        # Float pixels lie in [0, _float_max]: 1 for a rendered frame or an unbounded space (its dtype's
        # largest value counts as unbounded), else the space's bound, 1 or 255. None: only uint8 is taken.
        self._float_max = 1.0 if self._from_render else None
        if not self._from_render and np.issubdtype(space.dtype, np.floating):
            high = float(np.max(space.high))
            self._float_max = 1.0 if high >= np.finfo(space.dtype).max else high
            if self._float_max not in (1.0, 255.0):
                raise ValueError(f"float image observations must lie in [0, 1] or [0, 255] (the space's upper "
                                 f"bound says which), got observation_space={space}")
        if self._from_render:  # only the rgb_array render gives it frames, so that is the mode it supports
            self.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
        self.size = size
        self.crop = crop
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, observation):
        frame = self.env.render() if self._from_render else observation
        return self.to_image(frame)

    def to_image(self, frame) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = frame[..., None]
        if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4) or 0 in frame.shape[:2]:
            raise ValueError(f"expected a non-empty image of shape (H, W, 1|3|4), got shape {frame.shape}")
        if frame.dtype != np.uint8:
            if np.issubdtype(frame.dtype, np.floating) and self._float_max is not None:
                frame = (np.clip(frame, 0.0, self._float_max) * (255.0 / self._float_max) + 0.5).astype(np.uint8)
            else:
                raise ValueError(f"expected uint8 (or float in [0, 1] or [0, 255]) pixels, got dtype {frame.dtype}")
        if self.crop is not None:
            top, bottom, *cols = self.crop
            left, right = cols if cols else (0, frame.shape[1])
            frame = frame[top:bottom, left:right]
            if frame.shape[0] == 0 or frame.shape[1] == 0:
                raise ValueError(f"crop {self.crop} leaves an empty image")
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        elif frame.shape[-1] == 4:
            frame = frame[..., :3]
        if frame.shape[:2] != (self.size, self.size):
            image = Image.fromarray(np.ascontiguousarray(frame))
            frame = np.asarray(image.resize((self.size, self.size), Image.Resampling.BOX))
        return np.ascontiguousarray(frame, dtype=np.uint8)
