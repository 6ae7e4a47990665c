"""``wm-agent play``: a person drives the agent with the arrow keys inside the world model's dream (or, with
``--no-dream``, the real env): ``PlayConfig`` + ``run_play``.

From the command line it needs a display (it refuses SDL's dummy driver, where no window or key would ever
show up); from Python, ``run_play(cfg, events=[...])`` plays scripted keys headless.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from wm_agent.pretrained import checkpoint_path
from wm_agent.config import check_settings, doc
from wm_agent.render.drawing import BLACK, WHITE, draw_text, pygame_module, require_screen, surface_array
from wm_agent.render.episodes import env_fps, render_fps
from wm_agent.render.video import compose_frame

__all__ = ["PlayConfig", "continuous_action", "run_play"]


@dataclass
class PlayConfig:
    """wm-agent play: drive the agent yourself with the arrow keys inside the world model's dream."""

    checkpoint: str | None = doc("world-model checkpoint", None)
    pretrained: str | None = doc("instead of --checkpoint: a checkpoint that ships with wm-agent, by name "
                                 "(carracing, gridworld)", None)
    dream: bool = doc("play inside the dream (--no-dream plays the real env, for comparison)", True)
    env: str | None = doc("real env id for --no-dream (default: the checkpoint's env)", None)
    temperature: float | None = doc("dream temperature (0 = the most likely component's mean; default: 1.0)", None)
    done_threshold: float = doc("the dream ends when its done head's probability exceeds this (above 1: never)", 0.5)
    seed: int = doc("seed of the first start frame / layout (each R reset moves on by one)", 0)
    max_steps: int = doc("end an episode after this many steps at most (0 = the env's own limit, which it never "
                         "runs past, as in render and evaluate)", 0)
    fps: int = doc("frames per second of the window, where real-time envs step once per frame (0: the env's own "
                   "render_fps, 8 for GridWorld and 50 for CarRacing, 50/k with its action_repeat=k; "
                   "a dream plays at its real env's)", 0)
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


def _validate_play(cfg: PlayConfig) -> None:
    check_settings((cfg.fps >= 0, f"--fps must be >= 0 (0: the env's), got {cfg.fps}"),
                   (cfg.scale >= 1, f"--scale must be >= 1, got {cfg.scale}"),
                   (cfg.max_steps >= 0, f"--max-steps must be >= 0 (0: the env's own limit), got {cfg.max_steps}"),
                   (cfg.temperature is None or cfg.temperature >= 0,
                    f"--temperature must be >= 0, got {cfg.temperature}"),
                   (cfg.dream or cfg.temperature is None,
                    "--temperature is the dream's: drop it with --no-dream (the real env has none)"))


def _play_env(cfg: PlayConfig, wm):
    """The env a person drives: ``wm``'s dream (``WM-Dream-v0``, decoded frames) or, with --no-dream, the real env."""
    import gymnasium as gym

    # --max-steps ends episodes in run_play's loop, never past the env's own limit (in both modes alike).
    if cfg.dream:
        temperature = 1.0 if cfg.temperature is None else cfg.temperature
        return gym.make("WM-Dream-v0", world_model=wm, temperature=temperature, render_mode="rgb_array",
                        done_threshold=cfg.done_threshold)
    return wm.make_env(wm.real_env_id(cfg.env))


def _key_map(cfg: PlayConfig, wm) -> dict[str, int]:
    """Arrows (and "noop") -> the discrete actions of the env played: its ``KEY_MAPS`` entry, else GridWorld's."""
    from wm_agent.env_ids import registered_id

    played = cfg.env if cfg.env and not cfg.dream else wm.env_id
    return KEY_MAPS.get(registered_id(played) if played else "", DISCRETE_KEYS)


def _action(cmds: list[str], discrete: bool, keys: dict[str, int], per_press: bool, space):
    """The action one frame's commands ask for; None where they take no step (no arrow pressed in a turn-based
    env, or a key the action space has no action for)."""
    if discrete:
        moves = [c for c in cmds if c in DISCRETE_KEYS]
        if not moves and per_press:
            return None
        action = keys[moves[-1]] if moves else keys["noop"]
        return None if action >= space.n else action
    return continuous_action([c for c in cmds if c in DISCRETE_KEYS], getattr(space, "low", None),
                             getattr(space, "high", None))


class _Screen:
    """The play window: each observation shown as a composed frame (step, reward, return, and "episode over:
    R resets" once the episode has ended), the frames shown counted."""

    def __init__(self, env, dream: bool, scale: int, fps: int):
        self.env, self.dream, self.scale, self.fps = env, dream, scale, fps
        self.caption = "wm-agent play: arrows move, R resets, Esc/Q quits" + (" (dream)" if dream else "")
        self.window = self.clock = None
        self.frames = 0

    def show(self, obs, step: int, reward: float | None, total: float, done: bool) -> None:
        from envs.rendering import show_frame

        frame = self.env.render() if self.dream else np.asarray(obs)
        panel = compose_frame(frame, step=step, reward=reward, total=total, scale=self.scale)
        if done:
            surf = pygame_module().surfarray.make_surface(np.ascontiguousarray(panel.transpose(1, 0, 2)))
            draw_text(surf, " episode over: R resets ", (surf.get_width() // 2, surf.get_height() - 8), 20, WHITE,
                      "midbottom", BLACK)
            panel = surface_array(surf)
        self.window, self.clock = show_frame(panel, self.window, self.clock, self.fps, scale=1,
                                             caption=self.caption)
        self.frames += 1

    def close(self) -> None:
        if self.window is not None:
            pygame_module().display.quit()


def _start_episode(env, seed: int, screen: _Screen, summary: dict[str, Any]) -> None:
    """Reset ``env`` with ``seed``, count the episode and show its first frame."""
    obs, _ = env.reset(seed=seed)
    summary["episodes"] += 1
    screen.show(obs, 0, None, 0.0, False)


def run_play(cfg: PlayConfig, events: Iterable[str | Sequence[str]] | None = None, wm=None) -> dict[str, Any]:
    """Open a pygame window and let the arrow keys drive the agent (R resets, Esc/Q quits).

    Discrete action spaces step once per arrow press (GridWorld: up 0, right 1, down 2, left 3);
    continuous ones step every frame with the keys held (left/right steer, up gas, down brake).
    ``events``: scripted key names used instead of the keyboard (e.g. ``["right", "down", "quit"]``;
    for continuous actions an item may be a list of keys held together); the window still opens (use
    ``SDL_VIDEODRIVER=dummy`` headless). Returns ``{"steps", "total_reward", "episodes", "frames",
    "episode_returns", "quit"}``.
    """
    from wm_agent.world_model import WorldModel

    if wm is None:
        cfg = dataclasses.replace(cfg, checkpoint=checkpoint_path(cfg.checkpoint, cfg.pretrained))
    _validate_play(cfg)
    if events is None:  # no screen, no key would ever arrive: say so instead of waiting forever
        require_screen("play", "`wm-agent render` writes a video instead")
    wm = wm or WorldModel.load(cfg.checkpoint)
    discrete = wm.config.discrete_actions
    env = _play_env(cfg, wm)
    # The real env is at hand; a dream (whose own metadata says 8) plays at its real env's pace.
    fps = cfg.fps or (env_fps(wm) if cfg.dream else render_fps(env))
    keys = _key_map(cfg, wm)
    per_press = discrete and "noop" not in keys  # turn-based: a step per arrow press
    # Live keys keep the pace themselves (_live_commands ticks the clock at fps): then the window does not wait.
    screen = _Screen(env, cfg.dream, cfg.scale, fps if events is not None else 1000)
    summary = {"steps": 0, "total_reward": 0.0, "episodes": 0, "frames": 0, "episode_returns": [], "quit": False}
    seed, step, total, done = cfg.seed, 0, 0.0, False
    try:
        _start_episode(env, seed, screen, summary)
        commands = (_scripted_commands(events) if events is not None
                    else _live_commands(pygame_module(), per_press, fps, screen.clock))
        for cmds in commands:
            if "quit" in cmds:
                summary["quit"] = True
                break
            if "reset" in cmds:
                summary["episode_returns"].append(total)
                seed, step, total, done = seed + 1, 0, 0.0, False
                _start_episode(env, seed, screen, summary)
                continue
            if done:  # until R resets
                continue
            action = _action(cmds, discrete, keys, per_press, env.action_space)
            if action is None:
                continue
            obs, reward, terminated, truncated, _ = env.step(action)
            step += 1
            total += float(reward)
            summary["steps"] += 1
            summary["total_reward"] += float(reward)
            done = bool(terminated or truncated) or step == cfg.max_steps
            screen.show(obs, step, float(reward), total, done)
    finally:
        summary["frames"] = screen.frames
        summary["episode_returns"].append(total if summary["episodes"] else 0.0)
        env.close()
        screen.close()
    return summary
