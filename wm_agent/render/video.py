"""Videos of frames: write them to a file, compose one annotated frame, or show them in a window.

- ``write_video(frames, path, fps)``: ``.mp4`` (imageio-ffmpeg, libx264) or ``.gif`` (pillow), atomically.
- ``compose_frame(real, dream=None, step=..., reward=...)``: one annotated video frame.
- ``show_frames(frames, fps)``: play frames in a pygame window (``wm-agent render --human``).
- ``check_video_suffix`` / ``check_video_path``: a video path's checks, before any episode is played.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from wm_agent.io import atomic_path, make_parent
from wm_agent.render.drawing import (
    BAND,
    BLACK,
    WHITE,
    canvas,
    check_frames,
    draw_text,
    frame_surface,
    pygame_module,
    surface_array,
    text_width,
)

__all__ = ["VIDEO_EXTENSIONS", "check_video_path", "check_video_suffix", "compose_frame", "show_frames",
           "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".gif")


def check_video_suffix(path: str | os.PathLike) -> Path:
    """A video file's name, checked to end in one of ``VIDEO_EXTENSIONS``.

    Args:
        path: the video file to write.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: it ends in neither .mp4 nor .gif.
    """
    path = Path(path)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"video file must end in .mp4 or .gif, got {str(path)!r}")
    return path


def check_video_path(path: str | os.PathLike) -> Path:
    """The video path, its folder made and shown writable (a read-only folder would otherwise only show
    once the whole video has been played)."""
    path = check_video_suffix(path)
    make_parent(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a video file path")
    try:  # before any episode is played: a read-only folder would only show once the video is written
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write a video into {path.parent}: {exc.strerror or exc}") from None
    return path


def _frame_stream(frames) -> Iterator[np.ndarray]:
    """Frames of one size from an array (T, H, W, 3) or any iterable of (H, W, 3) uint8 frames."""
    shape = None
    for i, frame in enumerate(frames):
        frame = check_frames(frame, f"frame {i}", ndim=3)
        if shape is None:
            shape = frame.shape
        elif frame.shape != shape:
            raise ValueError(f"frame {i} has shape {frame.shape}, the first had {shape}: a video needs one size")
        yield frame


def write_video(frames, path: str | os.PathLike, fps: float = 8) -> Path:
    """Write uint8 frames as ``.mp4`` (libx264 via imageio-ffmpeg) or ``.gif`` (pillow); returns the path.

    ``frames``: an array (T, H, W, 3) or any iterable of (H, W, 3) frames; an mp4 is streamed frame by
    frame (long episodes never sit in memory), a GIF is assembled in memory at one byte per pixel.
    Atomic: the file appears complete or not at all. Odd-sized mp4 frames are padded with black to even
    sides (yuv420p needs them), never rescaled. A GIF merges identical consecutive frames (pillow does;
    playing time is kept).
    """
    path = check_video_path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if Path(path).suffix.lower() == ".gif" and fps > 50:
        # GIF delays are whole hundredths of a second, and browsers slow delays under 20 ms down to 100 ms.
        warnings.warn(f"a GIF plays at most 50 frames per second (browsers often slow faster ones to 10); "
                      f"--fps {fps:g} will not play as asked: use .mp4", stacklevel=2)
    if isinstance(frames, np.ndarray):
        check_frames(frames, "frames")
    stream = _frame_stream(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    if path.suffix.lower() == ".mp4":
        pad = ((0, first.shape[0] % 2), (0, first.shape[1] % 2), (0, 0))

        def write(tmp):
            import imageio.v2 as imageio

            writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                        pixelformat="yuv420p", macro_block_size=1)
            try:  # not `with`: imageio's __exit__ skips close() on errors and leaves ffmpeg running
                for frame in itertools.chain([first], stream):
                    writer.append_data(np.pad(frame, pad) if any(p[1] for p in pad) else frame)
            finally:
                writer.close()
    else:
        def write(tmp):
            from PIL import Image

            # Pillow straight, frames as a generator: it keeps each one as 8-bit palette indices until
            # the file is written, a third of an RGB frame, where imageio stacked all frames in RGB and
            # then held an RGB image of each as well (the file is byte for byte the same).
            images = (Image.fromarray(frame) for frame in itertools.chain([first], stream))
            next(images).save(tmp, format="GIF", save_all=True, append_images=images, duration=1000.0 / fps, loop=0)
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def compose_frame(real, dream=None, step: int | None = None, reward: float | None = None, scale: int = 4,
                  total: float | None = None, dream_reward: float | None = None,
                  labels: tuple[str, str] = ("real", "dream")) -> np.ndarray:
    """One annotated video frame: ``real`` (and ``dream`` beside it), upscaled ``scale`` x, under a text band
    "step N  reward R" (plus "return G" and the dream's reward when given). Returns uint8 (H, W, 3)."""
    pygame = pygame_module()
    real = check_frames(real, "real", ndim=3)
    panels = [real]
    if dream is not None:
        dream = check_frames(dream, "dream", ndim=3)
        if dream.shape != real.shape:
            raise ValueError(f"dream frame {dream.shape} differs from real frame {real.shape}")
        panels.append(dream)
    h, w = real.shape[0] * scale, real.shape[1] * scale
    band = 28
    surface = canvas(w * len(panels), band + h, BAND)
    parts = []
    if step is not None:
        parts.append(f"step {step}")
    if reward is not None:
        parts.append(f"reward {reward:+.2f}")
    if total is not None:
        parts.append(f"return {total:+.2f}")
    if dream_reward is not None:
        parts.append(f"dream reward {dream_reward:+.2f}")
    line = "  ".join(parts)
    size = next((sz for sz in (20, 18, 16, 14) if text_width(line, sz) <= surface.get_width() - 12), 12)
    draw_text(surface, line, (6, band // 2), size, WHITE, "midleft")
    for k, panel in enumerate(panels):
        surface.blit(frame_surface(panel, scale), (k * w, band))
        if len(panels) > 1:
            draw_text(surface, f" {labels[k]} ", (k * w + 4, band + h - 4), 18, WHITE, "bottomleft", BLACK)
    if len(panels) > 1:
        pygame.draw.line(surface, WHITE, (w, band), (w, band + h), 2)
    return surface_array(surface)


def show_frames(frames: Iterable[np.ndarray], fps: int, caption: str = "wm-agent") -> int:
    """Play frames in a pygame window (closing it, Esc or Q stops early); returns how many were shown."""
    from envs.rendering import show_frame

    pygame = pygame_module()
    window = clock = None
    shown = 0
    try:
        for frame in frames:
            window, clock = show_frame(frame, window, clock, fps, scale=1, caption=caption)
            shown += 1
            if any(e.type == pygame.QUIT or (e.type == pygame.KEYDOWN and e.key in (pygame.K_ESCAPE, pygame.K_q))
                   for e in pygame.event.get()):
                break
    finally:
        if window is not None:
            pygame.display.quit()
    return shown
