"""Bring any image (or ``rgb_array``-rendering) Gymnasium env down to the world model's 64x64x3 uint8."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

Crop = tuple[int, int] | tuple[int, int, int, int]


def _is_image_shaped(space: gym.Space) -> bool:
    return (
        isinstance(space, spaces.Box)
        and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[-1] in (1, 3, 4)))
        and min(space.shape[:2]) >= 8
    )


def _float_max(space: spaces.Box) -> float:
    """The upper bound of a float Box; its dtype's largest value or inf (no bound given) counts as 1."""
    high = float(np.max(space.high))
    return 1.0 if high >= np.finfo(space.dtype).max else high


def _why_not_pixels(space: spaces.Box) -> str | None:
    """Why an image-shaped Box's bounds do not say it holds pixels, or None when they do.

    Only bounds that to_image maps onto [0, 255] without clipping away part of the range count: a feature
    matrix (say Box(-inf, inf)) or a [-1, 1] image would otherwise be clipped and drawn without a word."""
    low = float(np.min(space.low))
    if np.issubdtype(space.dtype, np.integer):
        high = float(np.max(space.high))
        if 0 <= low and high <= 255:
            return None
        return f"integer pixels must lie in [0, 255], the bounds are [{low:g}, {high:g}]"
    if not np.issubdtype(space.dtype, np.floating):
        return f"dtype {space.dtype} holds no pixels"
    if not (np.isfinite(low) and low >= 0):
        return f"float pixels must lie in [0, 1] or [0, 255], the lower bound is {low:g}"
    if _float_max(space) not in (1.0, 255.0):
        return f"float pixels must lie in [0, 1] or [0, 255], the upper bound is {float(np.max(space.high)):g}"
    return None


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

    Works on envs whose observation space is an image ``Box`` of shape ``(H, W)``, ``(H, W, 1|3|4)`` whose
    bounds say it holds pixels: any integer dtype within [0, 255] (values are taken as they are, so uint8,
    int64 or uint16 frames of 0..255 all convert exactly), or float in [0, 1] or [0, 255] as the space's
    upper bound says (an unbounded upper bound, up to the dtype's largest value, counts as [0, 1]; the lower
    bound must be finite and >= 0). Any other env, image-shaped ones with other bounds included (a feature
    matrix, a [-1, 1] image, a 16-bit one in [0, 65535]), must be created with ``render_mode="rgb_array"``:
    the rendered frame then becomes the observation (e.g. ``CartPole-v1``). Otherwise the wrapper refuses at
    construction rather than clip the values; rescale them to [0, 1] with an observation wrapper first to
    keep them. Resizing uses Pillow's area filter (Pillow arrives with imageio), so no OpenCV is needed.

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
        shaped = _is_image_shaped(space)
        why_not = _why_not_pixels(space) if shaped else "the shape is not (H, W[, 1|3|4]) with sides >= 8"
        self._from_render = why_not is not None
        if self._from_render and env.render_mode != "rgb_array":
            rescale = "wrap the env to rescale them to [0, 1] or " if shaped else ""
            raise ValueError(
                f"ImageObservation needs image observations or an env made with render_mode='rgb_array': these "
                f"observations are not images ({why_not}); {rescale}make the env with render_mode='rgb_array'; "
                f"got observation_space={space} and render_mode={env.render_mode!r}"
            )
        crop = _checked_crop(crop, None if self._from_render else space.shape[:2])
        # Float pixels lie in [0, _float_max]: 1 for a rendered frame, else the space's (checked) bound.
        # None: the space holds integer pixels, taken as they are.
        self._float_max = 1.0
        if not self._from_render:
            self._float_max = _float_max(space) if np.issubdtype(space.dtype, np.floating) else None
        # Other integer frames than uint8 only from a space of that dtype, whose bounds were checked above.
        self._int_dtype = None if self._from_render or self._float_max is not None else np.dtype(space.dtype)
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
            elif frame.dtype == self._int_dtype:
                frame = np.clip(frame, 0, 255).astype(np.uint8)  # exact for frames within their space's bounds
            else:
                other = self._int_dtype if self._float_max is None else f"float in [0, {self._float_max:g}]"
                expected = "uint8" if other is None else f"uint8 or {other}"
                raise ValueError(f"expected {expected} pixels, got dtype {frame.dtype}")
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


PIXELS_ID = "WM-Pixels-v0"


def make_pixel_env(env_id: str, image_size: int = 64, image_crop: Crop | None = None,
                   render_mode: str | None = "rgb_array", **kwargs) -> gym.Env:
    """``WM-Pixels-v0``: any env seen through its ``rgb_array`` render, as ``image_size x image_size x 3``
    uint8 frames.

    ``gym.make("WM-Pixels-v0", env_id="CartPole-v1")`` is ``ImageObservation(gym.make("CartPole-v1",
    render_mode="rgb_array"), size=64)`` under an id of its own, so a collection of such frames records
    (as env id and keyword arguments) the very env every later stage rebuilds: ``collect --pixels``.
    The inner env keeps its own time limit.

    Args:
        env_id: the env whose renders become the observations (``"module:Id"`` imports its module first).
        image_size: output side length (not ``size``: that name is left to the inner env, GridWorld's say).
        image_crop: rows ``(top, bottom)`` or ``(top, bottom, left, right)`` of the render kept before resizing.
        render_mode: ``"rgb_array"`` (the default, and what None means here): the observations are that
            render, so no other mode can be had.
        **kwargs: the inner env's own ``gym.make`` arguments.
    """
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"{PIXELS_ID} observes the rgb_array render of {env_id}, so its render_mode is "
                         f"'rgb_array', got {render_mode!r}")
    env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    modes = env.metadata.get("render_modes") or []
    if "rgb_array" not in modes:  # Gymnasium only warns, and render() would then give no frame
        env.close()
        raise ValueError(f"{env_id} cannot render rgb_array frames (its render_modes are {modes}), so "
                         f"{PIXELS_ID} has no pixels to observe")
    return ImageObservation(env, size=image_size, crop=image_crop)
