"""A small navigation task drawn as 64x64 RGB frames: the world model's home turf."""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# (row, col) offsets for actions 0..3: up, right, down, left
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)
MOVES_PY = [tuple(int(v) for v in m) for m in MOVES]  # plain ints: the step loop is the hot path
# Integer dtypes that cast safely to int64 (so not uint64), as Discrete.contains requires.
_INT_DTYPES = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32))

BACKGROUND = np.array([16, 16, 16], dtype=np.uint8)
OBSTACLE = np.array([128, 128, 128], dtype=np.uint8)
GOAL = np.array([40, 200, 60], dtype=np.uint8)
AGENT = np.array([230, 50, 40], dtype=np.uint8)

GOAL_REWARD = 1.0
STEP_COST = 0.01


class GridWorldEnv(gym.Env):
    """
    ## Description
    An agent (red) must reach a goal (green) on a ``size`` x ``size`` grid with grey obstacles. Every
    ``reset(seed=...)`` draws a fresh layout from ``self.np_random``: agent, goal and between
    ``min_obstacles`` and ``max_obstacles`` obstacles on distinct cells, redrawn until the goal is
    reachable. The shortest path length is known (``info["oracle_steps"]``), so success and optimality
    of any policy can be measured exactly.

    ## Action Space
    ``Discrete(4)``: 0 up, 1 right, 2 down, 3 left. A move into an obstacle or off the grid leaves the
    agent where it is (the step still costs).

    ## Observation Space
    ``Box(0, 255, (64, 64, 3), uint8)``: the grid drawn with numpy, each cell a block of
    ``64 // size`` pixels (background dark, obstacles grey, goal green, agent red).

    ## Rewards
    ``-0.01`` for every step, plus ``+1.0`` on the step that reaches the goal. Following the shortest
    path of ``L`` steps therefore returns ``1 - 0.01 * L`` (``info["oracle_return"]``).

    ## Episode End
    Terminated when the agent reaches the goal. Truncation is left to ``max_episode_steps``
    (50 for ``WM-GridWorld-v0``).

    ## Info
    ``oracle_steps`` (shortest path from the current cell), ``oracle_return`` (return of the shortest
    path from the start, fixed for the episode), ``agent`` and ``goal`` cells, ``success``.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 8}

    def __init__(
        self,
        render_mode: str | None = None,
        size: int = 8,
        min_obstacles: int = 3,
        max_obstacles: int = 6,
        image_size: int = 64,
    ):
        for name, value in (("size", size), ("image_size", image_size), ("min_obstacles", min_obstacles),
                            ("max_obstacles", max_obstacles)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an int, got {value!r}")  # noqa: TRY004 (one kind of error for every bad setting)
        size, image_size, min_obstacles, max_obstacles = (int(size), int(image_size),
                                                          int(min_obstacles), int(max_obstacles))
        if image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size}")
        if size < 2 or image_size % size != 0:
            raise ValueError(f"size must be >= 2 and divide image_size={image_size}, got size={size}")
        if not 0 <= min_obstacles <= max_obstacles <= size * size - 2:
            raise ValueError(
                f"need 0 <= min_obstacles <= max_obstacles <= {size * size - 2}, "
                f"got {min_obstacles}, {max_obstacles}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.size = size
        self.min_obstacles = min_obstacles
        self.max_obstacles = max_obstacles
        self.cell = image_size // size
        self.observation_space = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = spaces.Discrete(4)

        # The step loop reads these as Python ints and lists: numpy scalars cost ~100 ns per operation,
        # and a step is a few dozen of them.
        self._blocked: list[list[bool]] = [[False] * size for _ in range(size)]  # obstacle cells
        self._dist_rows: list[list[int]] = [[0] * size for _ in range(size)]  # BFS steps to the goal, -1: cut off
        self._agent = (0, 0)
        self._goal = (0, 0)
        self._base = np.zeros(self.observation_space.shape, dtype=np.uint8)
        self._agent_tile = np.broadcast_to(AGENT, (self.cell, self.cell, 3)).copy()
        self._oracle_return = 0.0
        self._window = None
        self._clock = None

    # -- layout -----------------------------------------------------------------------------------
    def _distances_to_goal(self) -> list[list[int]]:
        """BFS from the goal; -1 marks unreachable cells."""
        n, blocked = self.size, self._blocked
        dist = [[-1] * n for _ in range(n)]
        dist[self._goal[0]][self._goal[1]] = 0
        queue = deque([self._goal])
        while queue:
            r, c = queue.popleft()
            for dr, dc in MOVES_PY:
                rr, cc = r + dr, c + dc
                if 0 <= rr < n and 0 <= cc < n and dist[rr][cc] < 0 and not blocked[rr][cc]:
                    dist[rr][cc] = dist[r][c] + 1
                    queue.append((rr, cc))
        return dist

    def _paint(self, frame: np.ndarray, cell: tuple[int, int], color: np.ndarray) -> None:
        k = self.cell
        r, c = cell[0] * k, cell[1] * k
        frame[r : r + k, c : c + k] = color

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        n = self.size
        while True:
            count = int(self.np_random.integers(self.min_obstacles, self.max_obstacles + 1))
            cells = self.np_random.choice(n * n, size=count + 2, replace=False)
            self._agent = divmod(int(cells[0]), n)
            self._goal = divmod(int(cells[1]), n)
            obstacles = np.zeros((n, n), dtype=bool)
            obstacles.flat[cells[2:]] = True
            self._blocked = obstacles.tolist()
            self._dist_rows = self._distances_to_goal()
            if self._dist_rows[self._agent[0]][self._agent[1]] > 0:
                break

        self._base = np.empty(self.observation_space.shape, dtype=np.uint8)
        self._base[:] = BACKGROUND
        for cell in np.argwhere(obstacles).tolist():
            self._paint(self._base, cell, OBSTACLE)
        self._paint(self._base, self._goal, GOAL)
        self._oracle_return = GOAL_REWARD - STEP_COST * self.oracle_steps

        if self.render_mode == "human":
            self.render()
        return self._frame(), self._info(success=False)

    # -- dynamics ---------------------------------------------------------------------------------
    @property
    def oracle_steps(self) -> int:
        """Length of the shortest path from the agent's cell to the goal."""
        return self._dist_rows[self._agent[0]][self._agent[1]]

    def step(self, action):
        # What Discrete(4).contains accepts (Python ints, numpy integers and 0-d integer arrays that cast
        # to int64), at a fraction of its ~5 us: the dream checks actions with contains itself.
        if isinstance(action, int):
            move = action
        elif isinstance(action, (np.generic, np.ndarray)) and action.dtype in _INT_DTYPES and action.shape == ():
            move = int(action)
        else:
            move = -1
        if not 0 <= move < 4:
            raise ValueError(f"action must be an int in [0, 4) for {self.action_space}, got {action!r}")
        dr, dc = MOVES_PY[move]
        r, c = self._agent[0] + dr, self._agent[1] + dc
        n = self.size
        if 0 <= r < n and 0 <= c < n and not self._blocked[r][c]:
            self._agent = (r, c)
        success = (r, c) == self._goal  # the goal cell is never blocked
        reward = -STEP_COST + (GOAL_REWARD if success else 0.0)
        if self.render_mode == "human":
            self.render()
        return self._frame(), reward, success, False, self._info(success)

    def _frame(self) -> np.ndarray:
        frame = self._base.copy()
        self._paint(frame, self._agent, self._agent_tile)  # a whole tile: no broadcasting of the colour
        return frame

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "oracle_steps": self.oracle_steps,
            "oracle_return": self._oracle_return,
            "agent": self._agent,
            "goal": self._goal,
            "success": success,
        }

    # -- rendering --------------------------------------------------------------------------------
    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; use gym.make(..., render_mode='rgb_array')")
            return None
        frame = self._frame()
        if self.render_mode == "rgb_array":
            return frame
        from envs.rendering import show_frame  # pygame is imported lazily there

        self._window, self._clock = show_frame(
            frame, self._window, self._clock, fps=self.metadata["render_fps"], caption="WM-GridWorld"
        )
        return None

    def close(self):
        if self._window is not None:
            import pygame

            pygame.display.quit()
            self._window = None
