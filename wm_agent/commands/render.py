"""``wm-agent render``: film the checkpoint's controller in the real env, in the dream, or both side by side,
into an ``.mp4``/``.gif`` (or a window with ``--human``): ``RenderConfig`` + ``run_render``.

Frames are composed and written one at a time. ``--human`` needs a display: it refuses SDL's dummy driver,
where frames shown to no one would be a silent success.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from wm_agent.pretrained import checkpoint_path
from wm_agent.config import doc
from wm_agent.progress import progress_bar
from wm_agent.render.drawing import require_screen
from wm_agent.render.episodes import (
    annotate,
    env_fps,
    record_dream_episode,
    record_real_episode,
    record_side_by_side,
    side_by_side_frames,
)
from wm_agent.render.video import check_video_path, check_video_suffix, show_frames, write_video

__all__ = ["RenderConfig", "run_render"]


@dataclass
class RenderConfig:
    """wm-agent render: film the checkpoint's controller in the real env, in the dream, or both side by side."""

    checkpoint: str | None = doc("world-model checkpoint with a controller", None)
    pretrained: str | None = doc("instead of --checkpoint: a checkpoint that ships with wm-agent, by name "
                                 "(carracing, gridworld)", None)
    env: str | None = doc("real env id (default: the env the checkpoint was trained on)", None)
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
                   "for CarRacing, 50/k with its action_repeat=k, as Gymnasium's RecordVideo uses; a dream plays at "
                   "its real env's)", 0)
    scale: int = doc("upscaling of the 64x64 frames in the video", 4)
    progress: bool = doc("show a progress bar (frames written; a CarRacing episode takes tens of seconds)", True)


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
        check_video_suffix(cfg.out)  # its folder is made only once the checkpoint has loaded


def run_render(cfg: RenderConfig, wm=None) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes and write them as one video (or show them with ``cfg.human``).

    Frames are composed and written one at a time into an mp4, so long episodes do not pile up in
    memory (a GIF is assembled in memory, one byte per pixel: prefer mp4 for long or many episodes).
    Returns ``{"out": path or None, "frames": n, "episodes": episodes played (fewer when the window was
    closed early), "returns", "mode"}``.
    """
    from wm_agent.world_model import WorldModel

    if wm is None:
        cfg = dataclasses.replace(cfg, checkpoint=checkpoint_path(cfg.checkpoint, cfg.pretrained))
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
        check_video_path(cfg.out)  # before any episode is played
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
                stream = annotate(ep["frames"], ep["rewards"], cfg.scale)
            elif mode == "side-by-side":
                temperature = 0.0 if cfg.temperature is None else cfg.temperature
                ep = record_side_by_side(wm, env_id, seed, cfg.greedy, temperature, cfg.max_steps, cfg.scale,
                                         compose=False)
                stream = side_by_side_frames(ep, cfg.scale)
            else:
                ep = record_real_episode(wm, env_id, seed, cfg.greedy, cfg.max_steps)
                stream = annotate(ep["frames"], ep["rewards"], cfg.scale)
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
