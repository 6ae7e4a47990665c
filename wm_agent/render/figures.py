"""PNG figures of a world model: ``Visualizer`` and its parts (rows of frames, line charts of training curves
read from a ``<checkpoint>.metrics.jsonl`` or the CMA-ES log, their legends and number formats).

- ``Visualizer(out_dir)``: ``reconstruction``, ``dream_sequence``, ``real_vs_dream``, ``training_curves``,
  ``line_chart``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wm_agent.render.drawing import (
    AXIS,
    GRID,
    INK,
    WHITE,
    canvas,
    check_frames,
    draw_text,
    frame_mse,
    frame_surface,
    pygame_module,
    save_png,
    text_width,
)

__all__ = ["Visualizer"]

SERIES_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


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


def _line_panel(surface, rect, title: str, series: list[tuple[str, np.ndarray, np.ndarray]], xlabel: str,
                log_scale: bool | None = None) -> None:
    """A line chart inside ``rect`` (x, y, w, h): title, axes, min/max tick labels, legend. ``log_scale``
    None: a log y axis when every value is positive and they span more than 50x."""
    pygame = pygame_module()
    x0, y0, w, h = rect
    pygame.draw.rect(surface, WHITE, rect)
    pygame.draw.rect(surface, GRID, rect, 1)
    finite = [np.isfinite(ys) for _, _, ys in series]
    series = [(_legend(name, ys), xs[ok], ys[ok]) for (name, xs, ys), ok in zip(series, finite) if len(ys)]
    all_y = np.concatenate([s[2] for s in series]) if series else np.zeros(0)
    drawn = [s for s in series if len(s[1])]
    log = bool(len(all_y) and all_y.min() > 0 and all_y.max() / all_y.min() > 50)
    if log_scale is not None:
        log = log_scale and bool(len(all_y) and all_y.min() > 0)
    draw_text(surface, title + ("  (log scale)" if log else ""), (x0 + w // 2, y0 + 8), 20, INK, "midtop")
    left, right, top, bottom = x0 + 64, x0 + w - 14, y0 + 32, y0 + h - 40
    if not drawn:
        words = "no data" if not series else "; ".join(label for label, _, _ in series)  # only non-finite values
        draw_text(surface, words, ((left + right) // 2, (top + bottom) // 2), 20, AXIS, "center")
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
        draw_text(surface, _fmt(10 ** yv if log else yv), (left - 6, yy), 16, AXIS, "midright")
    pygame.draw.line(surface, AXIS, (left, top), (left, bottom), 2)
    pygame.draw.line(surface, AXIS, (left, bottom), (right, bottom), 2)
    for xv, anchor in ((xmin, "midtop"), (xmax, "midtop")):
        xx = left + (xv - xmin) / (xmax - xmin) * (right - left)
        pygame.draw.line(surface, AXIS, (xx, bottom), (xx, bottom + 4), 2)
        draw_text(surface, f"{xv:g}" if abs(xv) < 1e5 else f"{xv:.3g}", (xx, bottom + 6), 16, AXIS, anchor)
    draw_text(surface, xlabel, ((left + right) // 2, bottom + 22), 16, AXIS, "midtop")

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
        lw = text_width(label, 16)
        pygame.draw.rect(surface, WHITE, (right - lw - 30, legend_y - 1, lw + 28, 18))
        pygame.draw.line(surface, colour, (right - lw - 26, legend_y + 6), (right - lw - 8, legend_y + 6), 3)
        draw_text(surface, label, (right - 4, legend_y), 16, INK, "topright", WHITE)
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
        label_w = max(text_width(label, 20) for label, _ in rows) + 16
        if captions is not None and caption_title:
            label_w = max(label_w, text_width(caption_title, 18) + 16)
        cap_h = 22 if captions is not None else 0
        block_h = 20 + len(rows) * (cell_h + pad) + cap_h + pad
        # At least as wide as the title (it carries the figure's figure, e.g. the mean MSE).
        width = max(label_w + cols * (cell_w + pad) + pad, text_width(title, 24) + 2 * pad)
        height = 40 + blocks * block_h
        surface = canvas(width, height)
        draw_text(surface, title, (width // 2, 10), 24, INK, "midtop")
        for b in range(blocks):
            y = 40 + b * block_h
            for c in range(cols):
                i = b * cols + c
                if i < n:
                    x = label_w + c * (cell_w + pad) + cell_w // 2
                    draw_text(surface, f"{index_prefix}{i}", (x, y + 2), 16, AXIS, "midtop")
            y += 20
            for label, frames in rows:
                draw_text(surface, label, (label_w - 10, y + cell_h // 2), 20, INK, "midright")
                for c in range(cols):
                    i = b * cols + c
                    if i < n:
                        surface.blit(frame_surface(frames[i], s), (label_w + c * (cell_w + pad), y))
                y += cell_h + pad
            if captions is not None:
                if caption_title:
                    draw_text(surface, caption_title, (label_w - 10, y + 2), 18, AXIS, "topright")
                for c in range(cols):
                    i = b * cols + c
                    if i < n:
                        draw_text(surface, captions[i], (label_w + c * (cell_w + pad) + cell_w // 2, y + 2), 18, INK,
                              "midtop")
        return surface

    def reconstruction(self, real, recon, name: str | None = None, title: str = "VQ-VAE reconstruction") -> Path:
        """Two labelled rows: real frames above their reconstructions, with the mean MSE in the title."""
        real, recon = check_frames(real, "real"), check_frames(recon, "recon")
        if real.shape != recon.shape or len(real) == 0:
            raise ValueError(f"real and recon must have the same non-empty shape, got {real.shape} and {recon.shape}")
        mse = float(frame_mse(real, recon).mean())
        surface = self._rows_figure(f"{title}  (mean MSE {_fmt(mse)})", [("real", real), ("reconstruction", recon)],
                                    None, index_prefix="#")
        return save_png(surface, self._path(name, "reconstruction"))

    def dream_sequence(self, frames, name: str | None = None, title: str = "Dream sequence") -> Path:
        """A strip of dreamed frames with their step numbers (wrapped every ``columns`` frames)."""
        frames = check_frames(frames, "frames")
        if len(frames) == 0:
            raise ValueError("dream_sequence needs at least one frame")
        return save_png(self._rows_figure(title, [("dream", frames)], None), self._path(name, "dream_sequence"))

    def real_vs_dream(self, real, dream, name: str | None = None, title: str = "Real env vs dream") -> Path:
        """Real frames above the dreamed ones (same actions), per-frame MSE under each column."""
        real, dream = check_frames(real, "real"), check_frames(dream, "dream")
        if real.shape != dream.shape or len(real) == 0:
            raise ValueError(f"real and dream must have the same non-empty shape, got {real.shape} and {dream.shape}")
        captions = [f"{m:.4f}" for m in frame_mse(real, dream)]
        surface = self._rows_figure(title, [("real", real), ("dream", dream)], captions, "MSE")
        return save_png(surface, self._path(name, "real_vs_dream"))

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
        surface = canvas(pad + len(panels) * (pw + pad), 44 + ph + pad)
        draw_text(surface, title, (surface.get_width() // 2, 10), 26, INK, "midtop")
        for k, (panel_title, series, xlabel) in enumerate(panels):
            _line_panel(surface, (pad + k * (pw + pad), 44, pw, ph), panel_title, series, xlabel)
        return save_png(surface, self._path(name, "training_curves"))

    def line_chart(self, series: Sequence[tuple[str, Sequence[float], Sequence[float]]], xlabel: str, title: str,
                   name: str | None = None) -> Path:
        """One line chart of named ``(name, xs, ys)`` series sharing an x axis (a learning curve: return
        against real frames), on a linear y axis; a series of 40 points or fewer is drawn with its points marked."""
        series = [(label, np.asarray(xs, np.float64), np.asarray(ys, np.float64)) for label, xs, ys in series]
        for label, xs, ys in series:
            if xs.shape != ys.shape or xs.ndim != 1:
                raise ValueError(f"series {label!r}: xs and ys must be 1-D and of one length, got {xs.shape} and "
                                 f"{ys.shape}")
        width, height, pad = 760, 420, 12
        surface = canvas(width + 2 * pad, height + 2 * pad)
        _line_panel(surface, (pad, pad, width, height), title, series, xlabel, log_scale=False)
        return save_png(surface, self._path(name, "line_chart"))
