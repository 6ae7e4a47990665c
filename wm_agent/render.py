"""Pictures of a world model: PNG figures, episode videos, and a dream a person can drive.

Everything is drawn with numpy and pygame (no matplotlib): ``pygame.font`` and off-screen
``pygame.Surface``s work without a display, so figures and videos need no X server. Only
``--human`` (``run_render``) and ``run_play`` open a window, through ``envs.rendering.show_frame``;
from the command line they need a display (they refuse SDL's dummy driver, where no window or key
would ever show up); from Python, ``run_play(cfg, events=[...])`` plays scripted keys headless.

- ``Visualizer(out_dir)``: ``reconstruction``, ``dream_sequence``, ``real_vs_dream``, ``training_curves``.
- ``write_video(frames, path, fps)``: ``.mp4`` (imageio-ffmpeg, libx264) or ``.gif`` (pillow), atomically.
- ``compose_frame(real, dream=None, step=..., reward=...)``: one annotated video frame.
- ``record_real_episode`` / ``record_dream_episode`` / ``record_side_by_side``: the controller at work.
- ``RenderConfig`` + ``run_render`` (``wm-agent render``), ``PlayConfig`` + ``run_play`` (``wm-agent play``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from wm_agent.config import check_settings, doc
from wm_agent.io import atomic_path, make_parent
from wm_agent.progress import progress_bar

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

__all__ = [
    "PlayConfig", "RenderConfig", "Visualizer", "compose_frame", "continuous_action", "frame_mse",
    "record_dream_episode", "record_real_episode", "record_side_by_side", "run_play", "run_render", "show_frames",
    "write_video",
]

VIDEO_EXTENSIONS = (".mp4", ".gif")

# Colours (RGB)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
PAPER = (250, 250, 250)
INK = (30, 30, 30)
GRID = (215, 215, 215)
AXIS = (90, 90, 90)
BAND = (24, 24, 28)
SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


# ----------------------------------------------------------------------------------------------
# pygame helpers (imported lazily: importing this module never loads pygame)
# ----------------------------------------------------------------------------------------------
_FONTS: dict[int, Any] = {}


def _pygame():
    import pygame

    return pygame


def require_screen(command: str, instead: str) -> None:
    """Refuse to open a window that nobody can see: SDL's dummy/offscreen drivers (headless machines,
    ``SDL_VIDEODRIVER=dummy``) accept it silently, so frames or key presses would go nowhere."""
    pygame = _pygame()
    pygame.display.init()
    driver = pygame.display.get_driver()
    if driver in ("offscreen", "dummy"):
        raise ValueError(f"wm-agent {command} needs a display, but SDL's video driver is {driver!r} (no screen); "
                         f"{instead}")


def _font(size: int):
    """pygame's bundled default font at ``size`` px; ``pygame.font`` is initialised on first use."""
    pygame = _pygame()
    if not pygame.font.get_init():
        pygame.font.init()
        _FONTS.clear()
    font = _FONTS.get(size)
    if font is not None:
        try:
            font.size("")
        except pygame.error:  # made before another part of the program quit and re-initialised pygame
            font = None
    if font is None:
        font = _FONTS[size] = pygame.font.Font(None, size)
    return font


def _text(surface, text: str, pos: tuple[int, int], size: int = 18, colour=INK, anchor: str = "topleft",
          background=None) -> Any:
    """Draw ``text`` with its ``anchor`` point (a pygame.Rect attribute name) at ``pos``; returns its rect."""
    img = _font(size).render(str(text), True, colour, background)
    rect = img.get_rect(**{anchor: pos})
    surface.blit(img, rect)
    return rect


def _text_width(text: str, size: int) -> int:
    return _font(size).size(str(text))[0]


def _check_frames(frames, what: str, ndim: int = 4) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != ndim or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
        raise ValueError(f"{what} must be uint8 RGB frames of shape {shape}, got {arr.dtype} {arr.shape}")
    return arr


def _frame_surface(frame: np.ndarray, scale: int):
    """uint8 (H, W, 3) -> pygame Surface upscaled ``scale`` x by nearest neighbour (crisp cells)."""
    pygame = _pygame()
    big = np.repeat(np.repeat(np.asarray(frame, np.uint8), scale, 0), scale, 1) if scale > 1 else frame
    return pygame.surfarray.make_surface(np.ascontiguousarray(big.transpose(1, 0, 2)))


def _surface_array(surface) -> np.ndarray:
    """pygame Surface -> uint8 (H, W, 3)."""
    return np.ascontiguousarray(_pygame().surfarray.array3d(surface).transpose(1, 0, 2))


def _canvas(width: int, height: int, colour=PAPER):
    surface = _pygame().Surface((int(width), int(height)))
    surface.fill(colour)
    return surface


def _save_png(surface, path: str | os.PathLike) -> Path:
    import imageio.v3 as iio

    if Path(path).suffix.lower() != ".png":  # the bytes are PNG whatever the name says
        raise ValueError(f"figures are written as PNG: give a name ending in .png, got {str(path)!r}")
    array = _surface_array(surface)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=".png")
    return Path(path)


def frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean squared error on [0, 1] pixels of two uint8 stacks (N, H, W, 3) -> (N,)."""
    a = np.asarray(a, np.float32) / 255.0
    b = np.asarray(b, np.float32) / 255.0
    return ((a - b) ** 2).reshape(len(a), -1).mean(1)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
def _load_metrics(metrics) -> list[dict]:
    """A ``<checkpoint>.metrics.jsonl`` path or a list of dicts -> list of dicts."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, os.PathLike)):
        path = Path(metrics)
        if not path.is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        rows, lines = [], path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    if n == len(lines):
                        break  # a run killed mid-write leaves a truncated last line
                    raise ValueError(f"{path}:{n} is not JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{n} is not a metrics row (a JSON object), got {line[:60]!r}")
                rows.append(row)
        return rows
    if isinstance(metrics, dict):
        raise TypeError("training_curves wants a metrics.jsonl path or a list of per-epoch dicts, got a dict")
    return [dict(row) for row in metrics]


def _number(value) -> float | None:
    """A metric as a float; None where it is absent or not a number (a hand-made row may hold None or
    text). NaN and infinity stay: the legend counts them rather than dropping them unseen."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _series(rows: list[dict], stage: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key`` for ``stage``; a resumed run's repeated epoch keeps its last value."""
    by_epoch: dict[int, float] = {}
    for i, row in enumerate(r for r in rows if r.get("stage") == stage):
        value = _number(row.get(key))
        if value is None:
            continue  # absent, or not a number (a hand-made row): nothing to draw
        by_epoch[int(row.get("epoch", i + 1))] = value
    xs = np.array(sorted(by_epoch), dtype=np.float64)
    ys = np.array([by_epoch[int(x)] for x in xs], dtype=np.float64)
    return xs, ys


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def _points(xs: np.ndarray, values: list[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """The (x, value) pairs whose value is a number (NaN and infinity included)."""
    keep = [i for i, v in enumerate(values) if v is not None]
    return xs[keep], np.array([values[i] for i in keep], dtype=np.float64)


def _legend(name: str, ys: np.ndarray) -> str:
    """``name: last finite value``, plus how many values were NaN or infinite (they are not drawn)."""
    finite = ys[np.isfinite(ys)]
    text = f"{name}: {_fmt(float(finite[-1])) if len(finite) else '-'}"
    lost = len(ys) - len(finite)
    return text + (f" ({lost} not finite)" if lost else "")


def _line_panel(surface, rect, title: str, series: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str) -> None:
    """A line chart inside ``rect`` (x, y, w, h): title, axes, min/max tick labels, legend."""
    pygame = _pygame()
    x0, y0, w, h = rect
    pygame.draw.rect(surface, WHITE, rect)
    pygame.draw.rect(surface, GRID, rect, 1)
    finite = [np.isfinite(ys) for _, _, ys in series]
    series = [(_legend(name, ys), xs[ok], ys[ok]) for (name, xs, ys), ok in zip(series, finite) if len(ys)]
    all_y = np.concatenate([s[2] for s in series]) if series else np.zeros(0)
    drawn = [s for s in series if len(s[1])]
    log = bool(len(all_y) and all_y.min() > 0 and all_y.max() / all_y.min() > 50)
    _text(surface, title + ("  (log scale)" if log else ""), (x0 + w // 2, y0 + 8), 20, INK, "midtop")
    left, right, top, bottom = x0 + 64, x0 + w - 14, y0 + 32, y0 + h - 40
    if not drawn:
        words = "no data" if not series else "; ".join(label for label, _, _ in series)  # only non-finite values
        _text(surface, words, ((left + right) // 2, (top + bottom) // 2), 20, AXIS, "center")
        return
    all_x = np.concatenate([s[1] for s in drawn])
    tf = np.log10 if log else (lambda v: v)
    ymin, ymax = float(tf(all_y).min()), float(tf(all_y).max())
    if ymax - ymin < 1e-12:
        ymin, ymax = ymin - 0.5 * (abs(ymin) or 1), ymax + 0.5 * (abs(ymax) or 1)
    xmin, xmax = float(all_x.min()), float(all_x.max())
    if xmax == xmin:
        xmin, xmax = xmin - 1, xmax + 1

    def px(x, y):
        return (left + (x - xmin) / (xmax - xmin) * (right - left),
                bottom - (tf(y) - ymin) / (ymax - ymin) * (bottom - top))

    # grid at the min and max, then the axes
    for yv in (ymin, ymax):
        yy = bottom - (yv - ymin) / (ymax - ymin) * (bottom - top)
        pygame.draw.line(surface, GRID, (left, yy), (right, yy))
        _text(surface, _fmt(10 ** yv if log else yv), (left - 6, yy), 16, AXIS, "midright")
    pygame.draw.line(surface, AXIS, (left, top), (left, bottom), 2)
    pygame.draw.line(surface, AXIS, (left, bottom), (right, bottom), 2)
    for xv, anchor in ((xmin, "midtop"), (xmax, "midtop")):
        xx = left + (xv - xmin) / (xmax - xmin) * (right - left)
        pygame.draw.line(surface, AXIS, (xx, bottom), (xx, bottom + 4), 2)
        _text(surface, f"{xv:g}", (xx, bottom + 6), 16, AXIS, anchor)
    _text(surface, xlabel, ((left + right) // 2, bottom + 22), 16, AXIS, "midtop")

    for k, (_, xs, ys) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        points = [px(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            pygame.draw.lines(surface, colour, False, points, 2)
        if len(points) <= 40:
            for p in points:
                pygame.draw.circle(surface, colour, (int(p[0]), int(p[1])), 3)
    # Legends after every curve, on a white box: a curve drawn across "best: 0.9491" read as "0.0491".
    legend_y = top + 4
    for k, (label, _, _) in enumerate(series):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        lw = _text_width(label, 16)
        pygame.draw.rect(surface, WHITE, (right - lw - 30, legend_y - 1, lw + 28, 18))
        pygame.draw.line(surface, colour, (right - lw - 26, legend_y + 6), (right - lw - 8, legend_y + 6), 3)
        _text(surface, label, (right - 4, legend_y), 16, INK, "topright", WHITE)
        legend_y += 18


class Visualizer:
    """PNG figures of a world model (the original design's ``Visualizer``), drawn without matplotlib.

    ``tag`` names the default files (``reconstruction_<tag>.png`` ...); frames are upscaled ``scale``x
    by nearest neighbour so 64x64 images stay readable. Every method returns the written path.
    """

    def __init__(self, out_dir: str | os.PathLike = "world_model_results", tag: str = "gridworld", scale: int = 3,
                 columns: int = 10):
        if scale < 1 or columns < 1:
            raise ValueError(f"scale and columns must be >= 1, got scale={scale}, columns={columns}")
        self.out_dir = Path(out_dir)
        self.tag, self.scale, self.columns = tag, scale, columns

    def _path(self, name: str | None, kind: str) -> Path:
        return self.out_dir / (name or f"{kind}_{self.tag}.png")

    def _rows_figure(self, title: str, rows: list[tuple[str, np.ndarray]], captions: list[str] | None,
                     caption_title: str = "", index_prefix: str = "t=") -> Any:
        """Labelled rows of frames, wrapped every ``columns`` frames into blocks; optional caption per column."""
        n = len(rows[0][1])
        fh, fw = rows[0][1].shape[1:3]
        s, pad = self.scale, 6
        cell_w, cell_h = fw * s, fh * s
        cols = min(n, self.columns)
        blocks = math.ceil(n / cols)
        label_w = max(_text_width(label, 20) for label, _ in rows) + 16
        if captions is not None and caption_title:
            label_w = max(label_w, _text_width(caption_title, 18) + 16)
        cap_h = 22 if captions is not None else 0
        block_h = 20 + len(rows) * (cell_h + pad) + cap_h + pad
        # At least as wide as the title (it carries the figure's figure, e.g. the mean MSE).
        width = max(label_w + cols * (cell_w + pad) + pad, _text_width(title, 24) + 2 * pad)
        height = 40 + blocks * block_h
        surface = _canvas(width, height)
        _text(surface, title, (width // 2, 10), 24, INK, "midtop")
        for b in range(blocks):
            y = 40 + b * block_h
            for c in range(cols):
                i = b * cols + c
                if i < n:
                    x = label_w + c * (cell_w + pad) + cell_w // 2
                    _text(surface, f"{index_prefix}{i}", (x, y + 2), 16, AXIS, "midtop")
            y += 20
            for label, frames in rows:
                _text(surface, label, (label_w - 10, y + cell_h // 2), 20, INK, "midright")
                for c in range(cols):
                    i = b * cols + c
                    if i < n:
                        surface.blit(_frame_surface(frames[i], s), (label_w + c * (cell_w + pad), y))
                y += cell_h + pad
            if captions is not None:
                if caption_title:
                    _text(surface, caption_title, (label_w - 10, y + 2), 18, AXIS, "topright")
                for c in range(cols):
                    i = b * cols + c
                    if i < n:
                        _text(surface, captions[i], (label_w + c * (cell_w + pad) + cell_w // 2, y + 2), 18, INK,
                              "midtop")
        return surface

    def reconstruction(self, real, recon, name: str | None = None, title: str = "VQ-VAE reconstruction") -> Path:
        """Two labelled rows: real frames above their reconstructions, with the mean MSE in the title."""
        real, recon = _check_frames(real, "real"), _check_frames(recon, "recon")
        if real.shape != recon.shape or len(real) == 0:
            raise ValueError(f"real and recon must have the same non-empty shape, got {real.shape} and {recon.shape}")
        mse = float(frame_mse(real, recon).mean())
        surface = self._rows_figure(f"{title}  (mean MSE {_fmt(mse)})", [("real", real), ("reconstruction", recon)],
                                    None, index_prefix="#")
        return _save_png(surface, self._path(name, "reconstruction"))

    def dream_sequence(self, frames, name: str | None = None, title: str = "Dream sequence") -> Path:
        """A strip of dreamed frames with their step numbers (wrapped every ``columns`` frames)."""
        frames = _check_frames(frames, "frames")
        if len(frames) == 0:
            raise ValueError("dream_sequence needs at least one frame")
        return _save_png(self._rows_figure(title, [("dream", frames)], None), self._path(name, "dream_sequence"))

    def real_vs_dream(self, real, dream, name: str | None = None, title: str = "Real env vs dream") -> Path:
        """Real frames above the dreamed ones (same actions), per-frame MSE under each column."""
        real, dream = _check_frames(real, "real"), _check_frames(dream, "dream")
        if real.shape != dream.shape or len(real) == 0:
            raise ValueError(f"real and dream must have the same non-empty shape, got {real.shape} and {dream.shape}")
        captions = [f"{m:.4f}" for m in frame_mse(real, dream)]
        surface = self._rows_figure(title, [("real", real), ("dream", dream)], captions, "MSE")
        return _save_png(surface, self._path(name, "real_vs_dream"))

    def training_curves(self, metrics, cmaes_log: Sequence[dict] | None = None, name: str | None = None,
                        title: str = "World model training") -> Path:
        """Four line charts: VAE recon MSE per epoch, MDN-RNN training loss and mixture NLL per epoch (apart:
        their scales differ by orders of magnitude), CMA-ES best/mean per generation.

        ``metrics``: a ``<checkpoint>.metrics.jsonl`` path or its rows as dicts (``{"stage": "vae"|"rnn",
        "epoch", ...}``); ``cmaes_log``: ``wm.train_state["cmaes"]["log"]``. A panel without data says so.
        """
        rows = _load_metrics(metrics)
        log = list(cmaes_log or [])
        gens = np.array([float(r.get("generation", i + 1)) for i, r in enumerate(log)])

        panels = [
            ("VQ-VAE reconstruction MSE", [("recon_mse", *_series(rows, "vae", "recon_mse"))], "epoch"),
            ("MDN-RNN training loss", [("loss", *_series(rows, "rnn", "loss"))], "epoch"),
            ("MDN-RNN mixture NLL", [("nll", *_series(rows, "rnn", "nll"))], "epoch"),
            ("Controller (CMA-ES) fitness",
             [(k, *_points(gens, [_number(r.get(k)) for r in log])) for k in ("best", "mean")], "generation"),
        ]
        pw, ph, pad = 420, 300, 12
        surface = _canvas(pad + len(panels) * (pw + pad), 44 + ph + pad)
        _text(surface, title, (surface.get_width() // 2, 10), 26, INK, "midtop")
        for k, (panel_title, series, xlabel) in enumerate(panels):
            _line_panel(surface, (pad + k * (pw + pad), 44, pw, ph), panel_title, series, xlabel)
        return _save_png(surface, self._path(name, "training_curves"))


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------
def _check_video_suffix(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise ValueError(f"video file must end in .mp4 or .gif, got {str(path)!r}")
    return path


def _check_video_path(path: str | os.PathLike) -> Path:
    """The video path, its folder made and shown writable (a read-only folder would otherwise only show
    once the whole video has been played)."""
    path = _check_video_suffix(path)
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
        frame = _check_frames(frame, f"frame {i}", ndim=3)
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
    path = _check_video_path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if Path(path).suffix.lower() == ".gif" and fps > 50:
        # GIF delays are whole hundredths of a second, and browsers slow delays under 20 ms down to 100 ms.
        warnings.warn(f"a GIF plays at most 50 frames per second (browsers often slow faster ones to 10); "
                      f"--fps {fps:g} will not play as asked: use .mp4", stacklevel=2)
    if isinstance(frames, np.ndarray):
        _check_frames(frames, "frames")
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
    pygame = _pygame()
    real = _check_frames(real, "real", ndim=3)
    panels = [real]
    if dream is not None:
        dream = _check_frames(dream, "dream", ndim=3)
        if dream.shape != real.shape:
            raise ValueError(f"dream frame {dream.shape} differs from real frame {real.shape}")
        panels.append(dream)
    h, w = real.shape[0] * scale, real.shape[1] * scale
    band = 28
    surface = _canvas(w * len(panels), band + h, BAND)
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
    size = next((sz for sz in (20, 18, 16, 14) if _text_width(line, sz) <= surface.get_width() - 12), 12)
    _text(surface, line, (6, band // 2), size, WHITE, "midleft")
    for k, panel in enumerate(panels):
        surface.blit(_frame_surface(panel, scale), (k * w, band))
        if len(panels) > 1:
            _text(surface, f" {labels[k]} ", (k * w + 4, band + h - 4), 18, WHITE, "bottomleft", BLACK)
    if len(panels) > 1:
        pygame.draw.line(surface, WHITE, (w, band), (w, band + h), 2)
    return _surface_array(surface)


# ----------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------
def _env_action(out: torch.Tensor, wm, greedy: bool, gen: torch.Generator):
    from wm_agent.controller import env_action

    return env_action(out, wm.config.discrete_actions, greedy, gen)


@torch.no_grad()
def record_real_episode(wm, env_id: str | None = None, seed: int = 0, greedy: bool = False,
                        max_steps: int = 0) -> dict[str, Any]:
    """The controller plays one episode of the REAL env (reset with ``seed``): the same episode that
    ``wm-agent evaluate`` scores for that seed.

    Returns ``frames`` uint8 (T+1, H, W, 3), ``rewards`` (T,), ``actions`` (T[, A]), ``return``, ``steps``,
    ``success``. ``max_steps`` = 0: until the env ends the episode.
    """
    from wm_agent.rollouts import make_latent_env, run_episode

    env = make_latent_env(wm.real_env_id(env_id), wm)
    try:
        return run_episode(env, wm, seed, greedy, max_steps, record=True)
    finally:
        env.close()


@torch.no_grad()
def record_dream_episode(wm, seed: int = 0, temperature: float = 1.0, greedy: bool = False,
                         max_steps: int | None = None, start_frame: np.ndarray | None = None) -> dict[str, Any]:
    """The controller plays one episode INSIDE the dream (``WM-Dream-v0``, decoded frames).

    Starts from a banked start frame (chosen by ``seed``) or ``start_frame``. Returns ``frames`` uint8
    (T+1, H, W, 3), ``rewards`` (T,), ``actions``, ``done_probabilities`` (T,), ``return``, ``steps``.
    """
    import gymnasium as gym

    env = gym.make("WM-Dream-v0", world_model=wm, temperature=temperature, render_mode="rgb_array",
                   max_episode_steps=max_steps or None)
    gen = torch.Generator().manual_seed(seed)
    try:
        options = {"frame": np.asarray(start_frame, np.uint8)} if start_frame is not None else None
        obs, _ = env.reset(seed=seed, options=options)
        frames, rewards, actions, dones = [env.render()], [], [], []
        while True:
            action = _env_action(wm.controller.from_obs(torch.as_tensor(obs)[None]), wm, greedy, gen)
            obs, reward, terminated, truncated, info = env.step(action)
            frames.append(env.render())
            rewards.append(float(reward))
            actions.append(action)
            dones.append(float(info.get("done_probability", float(terminated))))
            if terminated or truncated:
                break
    finally:
        env.close()
    rewards = np.array(rewards, np.float32)
    return {"frames": np.stack(frames), "rewards": rewards, "actions": np.array(actions),
            "done_probabilities": np.array(dones, np.float32), "return": float(rewards.sum()),
            "steps": len(rewards)}


def record_side_by_side(wm, env_id: str | None = None, seed: int = 0, greedy: bool = False,
                        temperature: float = 0.0, max_steps: int = 0, scale: int = 4,
                        compose: bool = True) -> dict[str, Any]:
    """The controller acts in the REAL env; the dream replays the SAME actions from the same first frame.

    Returns ``frames`` (composed side-by-side video frames, T+1; only with ``compose``), ``real`` and
    ``dream`` (T+1, H, W, 3), ``rewards`` (real, T), ``dream_rewards`` (T), ``mse`` (per frame, on [0, 1]
    pixels), ``actions``, ``return``, ``steps``, ``success``.
    """
    real = record_real_episode(wm, env_id, seed, greedy, max_steps)
    dream = wm.dream(real["frames"][0], real["actions"], temperature=temperature, seed=seed)
    ep = {"real": real["frames"], "dream": dream["frames"], "rewards": real["rewards"],
          "dream_rewards": dream["rewards"], "actions": real["actions"],
          "mse": frame_mse(real["frames"], dream["frames"]), "return": real["return"], "steps": real["steps"],
          "success": real["success"]}
    if compose:
        ep["frames"] = np.stack(list(_side_by_side_frames(ep, scale)))
    return ep


def _side_by_side_frames(ep: dict, scale: int) -> Iterator[np.ndarray]:
    total = 0.0
    for t in range(len(ep["real"])):
        r = float(ep["rewards"][t - 1]) if t else None
        total += r or 0.0
        yield compose_frame(ep["real"][t], ep["dream"][t], step=t, reward=r, scale=scale, total=total,
                            dream_reward=float(ep["dream_rewards"][t - 1]) if t else None)


def _annotate(frames: np.ndarray, rewards: np.ndarray, scale: int) -> Iterator[np.ndarray]:
    total = 0.0
    for t, frame in enumerate(frames):
        r = float(rewards[t - 1]) if t else None
        total += r or 0.0
        yield compose_frame(frame, step=t, reward=r, total=total, scale=scale)


# ----------------------------------------------------------------------------------------------
# wm-agent render
# ----------------------------------------------------------------------------------------------
@dataclass
class RenderConfig:
    """wm-agent render: film the checkpoint's controller in the real env, in the dream, or both side by side."""

    checkpoint: str = doc("world-model checkpoint with a controller")
    env: str = doc("real env id (empty: the env the checkpoint was trained on)", "")
    out: str = doc("video file to write: .mp4 or .gif (ignored with --human)", "episode.mp4")
    dream: bool = doc("film the controller inside the dream instead of the real env", False)
    side_by_side: bool = doc("real env and the dream of the same actions, side by side", False)
    human: bool = doc("show the frames in a pygame window instead of writing a file", False)
    seed: int = doc("reset seed of the first episode (episode i uses seed + i)", 0)
    episodes: int = doc("episodes to film, one after another", 1)
    temperature: float | None = doc("dream temperature (default: 1.0 with --dream, 0 with --side-by-side)", None)
    greedy: bool = doc("argmax actions instead of sampling from the controller's softmax", False)
    max_steps: int = doc("stop each episode after this many steps (0 = the env's own limit)", 0)
    fps: int = doc("frames per second of the video / window (0: the env's own render_fps, 8 for GridWorld and 50 "
                   "for CarRacing, as Gymnasium's RecordVideo uses; a dream plays at its real env's)", 0)
    scale: int = doc("upscaling of the 64x64 frames in the video", 4)
    progress: bool = doc("show a progress bar (frames written; a CarRacing episode takes tens of seconds)", True)


DEFAULT_FPS = 8


def render_fps(env) -> int:
    """An env's ``metadata["render_fps"]``, as Gymnasium's RecordVideo takes it; ``DEFAULT_FPS`` if it says none."""
    fps = env.metadata.get("render_fps")
    return int(fps) if isinstance(fps, (int, float)) and fps > 0 else DEFAULT_FPS


def env_fps(wm, env_id: str | None = None) -> int:
    """``render_fps`` of ``env_id`` (default: the env ``wm`` was trained on, whose pace its dreams share);
    ``DEFAULT_FPS`` when the env cannot be made here."""
    try:
        env = wm.make_env(wm.real_env_id(env_id or None))
    except Exception:  # the video does not need the env: a missing one only loses its pace  # noqa: BLE001
        return DEFAULT_FPS
    try:
        return render_fps(env)
    finally:
        env.close()


def _validate_render(cfg: RenderConfig) -> None:
    if cfg.dream and cfg.side_by_side:
        raise ValueError("choose one of --dream and --side-by-side")
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.fps < 0 or cfg.scale < 1:
        raise ValueError(f"--fps must be >= 0 (0: the env's) and --scale >= 1, got fps={cfg.fps}, scale={cfg.scale}")
    if cfg.max_steps < 0:
        raise ValueError(f"--max-steps must be >= 0, got {cfg.max_steps}")
    if cfg.temperature is not None and not cfg.temperature >= 0:
        raise ValueError(f"--temperature must be >= 0, got {cfg.temperature}")
    if cfg.temperature is not None and not (cfg.dream or cfg.side_by_side):
        raise ValueError("--temperature is the dream's: add --dream or --side-by-side (the real env has none)")
    if cfg.env and cfg.dream:
        raise ValueError("--env names the real env: drop it with --dream (a dream is the checkpoint's own)")
    if not cfg.human:
        _check_video_suffix(cfg.out)  # its folder is made only once the checkpoint has loaded


def show_frames(frames: Iterable[np.ndarray], fps: int, caption: str = "wm-agent") -> int:
    """Play frames in a pygame window (closing it, Esc or Q stops early); returns how many were shown."""
    from envs.rendering import show_frame

    pygame = _pygame()
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


def run_render(cfg: RenderConfig, wm=None) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes and write them as one video (or show them with ``cfg.human``).

    Frames are composed and written one at a time into an mp4, so long episodes do not pile up in
    memory (a GIF is assembled in memory, one byte per pixel: prefer mp4 for long or many episodes).
    Returns ``{"out": path or None, "frames": n, "episodes": episodes played (fewer when the window was
    closed early), "returns", "mode"}``.
    """
    from wm_agent.world_model import WorldModel

    _validate_render(cfg)
    if cfg.human:
        require_screen("render --human", "leave out --human to write a video file")
    wm = wm or WorldModel.load(cfg.checkpoint)
    mode = "dream" if cfg.dream else "side-by-side" if cfg.side_by_side else "real"
    env_id = None if mode == "dream" else wm.real_env_id(cfg.env)
    wm.require_trained("vae", cfg.checkpoint)
    if mode != "real":  # a dream is M's
        wm.require_trained("rnn", cfg.checkpoint)
    if not cfg.human:
        _check_video_path(cfg.out)  # before any episode is played
    fps = cfg.fps or env_fps(wm, env_id)
    wm.warn_if_untrained(cfg.checkpoint)
    returns: list[float] = []
    count = 0
    bar = progress_bar(desc=f"render ({mode})", unit="frame", disable=not cfg.progress or cfg.human,
                       dynamic_ncols=True)

    def frames() -> Iterator[np.ndarray]:
        nonlocal count
        for i in range(cfg.episodes):
            seed = cfg.seed + i
            bar.set_postfix_str(f"playing episode {i + 1}/{cfg.episodes}")
            if mode == "dream":
                temperature = 1.0 if cfg.temperature is None else cfg.temperature
                ep = record_dream_episode(wm, seed, temperature, cfg.greedy, cfg.max_steps or None)
                stream = _annotate(ep["frames"], ep["rewards"], cfg.scale)
            elif mode == "side-by-side":
                temperature = 0.0 if cfg.temperature is None else cfg.temperature
                ep = record_side_by_side(wm, env_id, seed, cfg.greedy, temperature, cfg.max_steps, cfg.scale,
                                         compose=False)
                stream = _side_by_side_frames(ep, cfg.scale)
            else:
                ep = record_real_episode(wm, env_id, seed, cfg.greedy, cfg.max_steps)
                stream = _annotate(ep["frames"], ep["rewards"], cfg.scale)
            returns.append(ep["return"])
            bar.set_postfix_str(f"writing episode {i + 1}/{cfg.episodes}")
            for frame in stream:
                count += 1
                bar.update()
                yield frame

    result = {"out": None, "frames": 0, "episodes": cfg.episodes, "returns": returns, "mode": mode}
    try:
        if cfg.human:
            result["frames"] = show_frames(frames(), fps, caption=f"wm-agent render ({mode})")
            result["episodes"] = len(returns)  # Esc or a closed window ends early
        else:
            result["out"] = str(write_video(frames(), cfg.out, fps))
            result["frames"] = count
    finally:
        bar.close()
    return result


# ----------------------------------------------------------------------------------------------
# wm-agent play: a person drives inside the dream
# ----------------------------------------------------------------------------------------------
@dataclass
class PlayConfig:
    """wm-agent play: drive the agent yourself with the arrow keys inside the world model's dream."""

    checkpoint: str = doc("world-model checkpoint")
    dream: bool = doc("play inside the dream (--no-dream plays the real env, for comparison)", True)
    env: str = doc("real env id for --no-dream (empty: the checkpoint's env)", "")
    temperature: float | None = doc("dream temperature (0 = the most likely component's mean; default: 1.0)", None)
    done_threshold: float = doc("the dream ends when its done head's probability exceeds this (above 1: never)", 0.5)
    seed: int = doc("seed of the first start frame / layout (each R reset moves on by one)", 0)
    max_steps: int = doc("end an episode after this many steps at most (0 = the env's own limit, which it never "
                         "runs past, as in render and evaluate)", 0)
    fps: int = doc("frames per second of the window, where real-time envs step once per frame (0: the env's own "
                   "render_fps, 8 for GridWorld and 50 for CarRacing; a dream plays at its real env's)", 0)
    scale: int = doc("upscaling of the 64x64 frames in the window", 6)


# Key names (as pygame.key.name gives them, plus aliases for scripted play) -> commands
KEY_ALIASES = {"up": "up", "right": "right", "down": "down", "left": "left", "r": "reset", "reset": "reset",
               "escape": "quit", "esc": "quit", "q": "quit", "quit": "quit", "noop": "noop", "none": "noop",
               "space": "noop", "": "noop"}
DISCRETE_KEYS = {"up": 0, "right": 1, "down": 2, "left": 3}  # GridWorld: 0 up, 1 right, 2 down, 3 left
# Envs whose discrete actions mean other things: the arrows keep the continuous layout (up gas, down brake).
# They run in real time, so play steps them every frame, with "noop" (CarRacing's 0, do nothing) when no arrow is held.
KEY_MAPS = {
    "WM-CarRacing-v0": {"up": 3, "right": 1, "down": 4, "left": 2, "noop": 0},  # 1 right, 2 left, 3 gas, 4 brake
}


def continuous_action(held: Iterable[str], low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Arrow keys held -> [steer, gas, brake, ...] (CarRacing layout): left/right steer, up gas, down brake."""
    held = set(held)
    action = np.zeros(len(low), np.float32)
    steer = (1.0 if "right" in held else 0.0) - (1.0 if "left" in held else 0.0)
    action[0] = steer
    if len(action) > 1:
        action[1] = 1.0 if "up" in held else 0.0
    if len(action) > 2:
        action[2] = 0.8 if "down" in held else 0.0
    return np.clip(action, low, high).astype(np.float32)


def _live_commands(pygame, per_press: bool, fps: int, clock):
    """Commands from the real keyboard: ``per_press`` (a turn-based discrete env like GridWorld) -> one
    per arrow press; otherwise one per frame with the arrows held."""
    while True:
        pressed = []
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                yield ["quit"]
                return
            if event.type == pygame.KEYDOWN:
                pressed.append(KEY_ALIASES.get(pygame.key.name(event.key), None))
        for cmd in pressed:
            if cmd in ("quit", "reset") or (per_press and cmd in DISCRETE_KEYS):
                yield [cmd]
        if not per_press:
            keys = pygame.key.get_pressed()
            held = [name for name, code in (("up", pygame.K_UP), ("down", pygame.K_DOWN),
                                            ("left", pygame.K_LEFT), ("right", pygame.K_RIGHT)) if keys[code]]
            yield held or ["noop"]
        clock.tick(fps)


def _scripted_commands(events: Iterable[str | Sequence[str]]):
    """Scripted key names: a string is one key press (one step), a list is the keys held for one frame."""
    for item in events:
        keys = [item] if isinstance(item, str) else list(item)
        cmds = []
        for key in keys:
            cmd = KEY_ALIASES.get(str(key).lower())
            if cmd is None:
                raise ValueError(f"unknown key {key!r}: use up/down/left/right, r (reset), q/escape (quit) or noop")
            cmds.append(cmd)
        yield cmds


def run_play(cfg: PlayConfig, events: Iterable[str | Sequence[str]] | None = None, wm=None) -> dict[str, Any]:
    """Open a pygame window and let the arrow keys drive the agent (R resets, Esc/Q quits).

    Discrete action spaces step once per arrow press (GridWorld: up 0, right 1, down 2, left 3);
    continuous ones step every frame with the keys held (left/right steer, up gas, down brake).
    ``events``: scripted key names used instead of the keyboard (e.g. ``["right", "down", "quit"]``;
    for continuous actions an item may be a list of keys held together); the window still opens (use
    ``SDL_VIDEODRIVER=dummy`` headless). Returns ``{"steps", "total_reward", "episodes", "frames",
    "episode_returns", "quit"}``.
    """
    import gymnasium as gym

    from envs.rendering import show_frame
    from wm_agent.world_model import WorldModel, registered_id

    check_settings((cfg.fps >= 0, f"--fps must be >= 0 (0: the env's), got {cfg.fps}"),
                   (cfg.scale >= 1, f"--scale must be >= 1, got {cfg.scale}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.temperature is None or cfg.temperature >= 0,
                    f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.dream or cfg.temperature is None,
                    "--temperature is the dream's: drop it with --no-dream (the real env has none)"))
    if events is None:  # no screen, no key would ever arrive: say so instead of waiting forever
        require_screen("play", "`wm-agent render` writes a video instead")
    wm = wm or WorldModel.load(cfg.checkpoint)
    discrete = wm.config.discrete_actions
    # --max-steps ends episodes in the loop below, never past the env's own limit (in both modes alike).
    if cfg.dream:
        temperature = 1.0 if cfg.temperature is None else cfg.temperature
        env = gym.make("WM-Dream-v0", world_model=wm, temperature=temperature, render_mode="rgb_array",
                       done_threshold=cfg.done_threshold)
    else:
        env = wm.make_env(wm.real_env_id(cfg.env))
    # The real env is at hand; a dream (whose own metadata says 8) plays at its real env's pace.
    fps = cfg.fps or (env_fps(wm) if cfg.dream else render_fps(env))
    space = env.action_space
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    played = cfg.env if cfg.env and not cfg.dream else wm.env_id
    keys = KEY_MAPS.get(registered_id(played) if played else "", DISCRETE_KEYS)
    per_press = discrete and "noop" not in keys  # turn-based: a step per arrow press
    pygame = _pygame()
    caption = "wm-agent play: arrows move, R resets, Esc/Q quits" + (" (dream)" if cfg.dream else "")
    window = clock = None
    summary = {"steps": 0, "total_reward": 0.0, "episodes": 0, "frames": 0, "episode_returns": [], "quit": False}
    seed = cfg.seed

    def frame_of(obs):
        return env.render() if cfg.dream else np.asarray(obs)

    def show(frame, step, reward, total, done):
        nonlocal window, clock
        panel = compose_frame(frame, step=step, reward=reward, total=total, scale=cfg.scale)
        if done:
            surf = pygame.surfarray.make_surface(np.ascontiguousarray(panel.transpose(1, 0, 2)))
            _text(surf, " episode over: R resets ", (surf.get_width() // 2, surf.get_height() - 8), 20, WHITE,
                  "midbottom", BLACK)
            panel = _surface_array(surf)
        window, clock = show_frame(panel, window, clock, fps if events is not None else 1000, scale=1,
                                   caption=caption)
        summary["frames"] += 1

    try:
        obs, _ = env.reset(seed=seed)
        step, total, done = 0, 0.0, False
        summary["episodes"] = 1
        show(frame_of(obs), step, None, total, done)
        commands = _scripted_commands(events) if events is not None else _live_commands(pygame, per_press, fps, clock)
        for cmds in commands:
            if "quit" in cmds:
                summary["quit"] = True
                break
            if "reset" in cmds:
                summary["episode_returns"].append(total)
                seed += 1
                obs, _ = env.reset(seed=seed)
                step, total, done = 0, 0.0, False
                summary["episodes"] += 1
                show(frame_of(obs), step, None, total, done)
                continue
            if done:
                continue
            if discrete:
                moves = [c for c in cmds if c in DISCRETE_KEYS]
                if not moves and per_press:
                    continue
                action = keys[moves[-1]] if moves else keys["noop"]
                if action >= space.n:
                    continue
            else:
                action = continuous_action([c for c in cmds if c in DISCRETE_KEYS], low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            step += 1
            total += float(reward)
            summary["steps"] += 1
            summary["total_reward"] += float(reward)
            done = bool(terminated or truncated) or step == cfg.max_steps
            show(frame_of(obs), step, float(reward), total, done)
    finally:
        summary["episode_returns"].append(total if summary["episodes"] else 0.0)
        env.close()
        if window is not None:
            pygame.display.quit()
    return summary
