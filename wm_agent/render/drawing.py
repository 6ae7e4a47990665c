"""Drawing with pygame off screen: lazy pygame access, fonts and text, canvases, surfaces <-> arrays, PNG files.

``pygame.font`` and off-screen ``pygame.Surface``s work without a display, so figures and videos need no X
server. pygame is imported lazily: importing this module never loads it. Only ``require_screen`` asks for a
display, for the commands that open a window (through ``envs.rendering.show_frame``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from wm_agent.io import atomic_path

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

__all__ = [
    "AXIS", "BAND", "BLACK", "GRID", "INK", "PAPER", "WHITE", "canvas", "check_frames", "draw_text", "font",
    "frame_mse", "frame_surface", "pygame_module", "require_screen", "save_png", "surface_array", "text_width",
]

# Colours (RGB)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
PAPER = (250, 250, 250)
INK = (30, 30, 30)
GRID = (215, 215, 215)
AXIS = (90, 90, 90)
BAND = (24, 24, 28)

_FONTS: dict[int, Any] = {}


def pygame_module():
    """pygame, imported on first use (importing the render modules never loads it).

    Returns:
        The ``pygame`` module.
    """
    import pygame

    return pygame


def require_screen(command: str, instead: str) -> None:
    """Refuse to open a window that nobody can see: SDL's dummy/offscreen drivers (headless machines,
    ``SDL_VIDEODRIVER=dummy``) accept it silently, so frames or key presses would go nowhere."""
    pygame = pygame_module()
    pygame.display.init()
    driver = pygame.display.get_driver()
    if driver in ("offscreen", "dummy"):
        raise ValueError(f"wm-agent {command} needs a display, but SDL's video driver is {driver!r} (no screen); "
                         f"{instead}")


def font(size: int):
    """pygame's bundled default font at ``size`` px; ``pygame.font`` is initialised on first use."""
    pygame = pygame_module()
    if not pygame.font.get_init():
        pygame.font.init()
        _FONTS.clear()
    found = _FONTS.get(size)
    if found is not None:
        try:
            found.size("")
        except pygame.error:  # made before another part of the program quit and re-initialised pygame
            found = None
    if found is None:
        found = _FONTS[size] = pygame.font.Font(None, size)
    return found


def draw_text(surface, text: str, pos: tuple[int, int], size: int = 18, colour=INK, anchor: str = "topleft",
              background=None) -> Any:
    """Draw ``text`` with its ``anchor`` point (a pygame.Rect attribute name) at ``pos``; returns its rect."""
    img = font(size).render(str(text), True, colour, background)
    rect = img.get_rect(**{anchor: pos})
    surface.blit(img, rect)
    return rect


def text_width(text: str, size: int) -> int:
    """Width of ``text`` in pixels.

    Args:
        text: the text (anything ``str`` takes).
        size: the font size in px.

    Returns:
        How many pixels wide ``draw_text`` draws it.
    """
    return font(size).size(str(text))[0]


def check_frames(frames, what: str, ndim: int = 4) -> np.ndarray:
    """``frames`` as an array, checked to be uint8 RGB frames.

    Args:
        frames: a stack (N, H, W, 3) with ``ndim`` 4, one frame (H, W, 3) with ``ndim`` 3.
        what: the name the error message gives them.
        ndim: 4 for a stack, 3 for one frame.

    Returns:
        ``np.asarray(frames)``.

    Raises:
        ValueError: not uint8 RGB frames of that shape.
    """
    arr = np.asarray(frames)
    if arr.ndim != ndim or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
        raise ValueError(f"{what} must be uint8 RGB frames of shape {shape}, got {arr.dtype} {arr.shape}")
    return arr


def frame_surface(frame: np.ndarray, scale: int):
    """uint8 (H, W, 3) -> pygame Surface upscaled ``scale`` x by nearest neighbour (crisp cells)."""
    pygame = pygame_module()
    big = np.repeat(np.repeat(np.asarray(frame, np.uint8), scale, 0), scale, 1) if scale > 1 else frame
    return pygame.surfarray.make_surface(np.ascontiguousarray(big.transpose(1, 0, 2)))


def surface_array(surface) -> np.ndarray:
    """pygame Surface -> uint8 (H, W, 3)."""
    return np.ascontiguousarray(pygame_module().surfarray.array3d(surface).transpose(1, 0, 2))


def canvas(width: int, height: int, colour=PAPER):
    """A blank off-screen surface to draw on.

    Args:
        width: its width in px.
        height: its height in px.
        colour: the RGB colour it is filled with.

    Returns:
        A ``pygame.Surface`` of that size.
    """
    surface = pygame_module().Surface((int(width), int(height)))
    surface.fill(colour)
    return surface


def save_png(surface, path: str | os.PathLike) -> Path:
    """Write ``surface`` as a PNG file, atomically (``io.atomic_path``).

    Args:
        surface: the ``pygame.Surface`` to save.
        path: the file to write; its name must end in ``.png``.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``path`` does not end in ``.png``.
    """
    import imageio.v3 as iio

    if Path(path).suffix.lower() != ".png":  # the bytes are PNG whatever the name says
        raise ValueError(f"figures are written as PNG: give a name ending in .png, got {str(path)!r}")
    array = surface_array(surface)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=".png")
    return Path(path)


def frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean squared error on [0, 1] pixels of two uint8 stacks (N, H, W, 3) -> (N,)."""
    a = np.asarray(a, np.float32) / 255.0
    b = np.asarray(b, np.float32) / 255.0
    return ((a - b) ** 2).reshape(len(a), -1).mean(1)
