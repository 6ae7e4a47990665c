"""``dying_env:DieOnceGridWorld-v0``: WM-GridWorld-v0 whose process kills itself mid-episode the first time
any process steps it (a file, ``marker``, says that it happened), for the tests of a lost worker's retry.
The env is made by id, in the worker that imports this module, so it needs no pickling."""

from __future__ import annotations

import os
import signal

import gymnasium as gym

import envs  # noqa: F401  (registers WM-GridWorld-v0)

DIE_AT_STEP = 5


class DieOnceGridWorld(gym.Wrapper):
    def __init__(self, marker: str):
        super().__init__(gym.make("WM-GridWorld-v0").unwrapped)
        self.marker, self.steps = marker, 0

    def step(self, action):
        self.steps += 1
        if self.steps == DIE_AT_STEP and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)


if "DieOnceGridWorld-v0" not in gym.registry:
    gym.register(id="DieOnceGridWorld-v0", entry_point="dying_env:DieOnceGridWorld", max_episode_steps=50)
