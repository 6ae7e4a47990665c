"""The one place that opens a pygame window (imported lazily, so headless users never load pygame)."""

from __future__ import annotations

import numpy as np


def show_frame(frame: np.ndarray, window=None, clock=None, fps: int = 30, scale: int = 8, caption: str = "wm-agent"):
    """Blit an HxWx3 uint8 frame into a (created on first use) pygame window; returns (window, clock)."""
    import pygame

    h, w = frame.shape[:2]
    if window is None:
        pygame.init()
        pygame.display.init()
        window = pygame.display.set_mode((w * scale, h * scale))
        pygame.display.set_caption(caption)
        clock = pygame.time.Clock()
    surface = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
    window.blit(pygame.transform.scale(surface, window.get_size()), (0, 0))
    pygame.event.pump()
    pygame.display.flip()
    clock.tick(fps)
    return window, clock
