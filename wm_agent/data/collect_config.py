"""``wm-agent collect``'s settings (the CLI's options are generated from ``CollectConfig``), apart from the
collector itself so that its choices can be read without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from wm_agent.backends import BACKEND_HELP, RAY_ADDRESS_HELP, Backend
from wm_agent.data.policies import Policy

__all__ = ["VECTORIZATIONS", "CollectConfig", "Vectorization"]

# The choices, once: the config's Literal type (and so the CLI's choices) and the checks both read these.
Vectorization = Literal["processes", "async", "sync"]
VECTORIZATIONS: tuple[str, ...] = get_args(Vectorization)


# ----------------------------------------------------------------------------------------------
# Typed configuration (the CLI's `wm-agent collect` is generated from it)
# ----------------------------------------------------------------------------------------------
@dataclass
class CollectConfig:
    out: str = field(metadata={"help": "output folder (re-running the same command resumes into it)"})
    env: str | None = field(default=None, metadata={"help": "Gymnasium env id with 64x64x3 uint8 frames (any env "
                                                            "that renders rgb_array with --pixels); unset: "
                                                            "WM-GridWorld-v0, or with --policy controller the "
                                                            "checkpoint's env and --env-kwargs"})
    episodes: int = field(default=100, metadata={"help": "episodes the folder should hold"})
    workers: int = field(default=1, metadata={"help": "parallel envs: worker processes (1 = collect in this "
                                                        "process), or sub-envs with --vectorization async|sync"})
    vectorization: Vectorization = field(
        default="processes",
        metadata={"help": "processes: workers roll out whole shards on their own (fastest); async|sync: one "
                          "Gymnasium vector env (gym.make_vec) stepped in lockstep. Same shards either way"})
    policy: Policy = field(
        default="random", metadata={"help": "data policy: uniform random, brownian (correlated) actions, or "
                                            "controller: the --world-model checkpoint's controller drives"})
    world_model: str | None = field(
        default=None, metadata={"help": "with --policy controller: the checkpoint (trained V, M and C) whose "
                                        "controller acts on (z, h) as in wm-agent evaluate"})
    policy_noise: float | None = field(
        default=None, metadata={"help": "with --policy controller: exploration noise S in [0, 1]; Box actions get "
                                        "Gaussian noise of std S*(high-low)/2, clipped; a discrete action is random "
                                        "with probability S (unset: 0.1)"})
    greedy: bool = field(default=False, metadata={"help": "with --policy controller: argmax discrete actions "
                                                          "instead of sampling from the controller's softmax"})
    seed: int = field(default=0, metadata={"help": "base seed; shard i is seeded from (seed, i)"})
    episodes_per_shard: int | None = field(
        default=None, metadata={"help": "episodes per shard file set (0 or unset: at least 10, more for short "
                                        "episodes: about 5,000 frames' worth at the env's episode limit, 98 for "
                                        "GridWorld; a folder being resumed keeps its own)"})
    max_steps: int | None = field(
        default=None, metadata={"help": "optional cap on the collected episodes' length (0 or unset: the env's own "
                                              "limit); dreams and evaluation keep the env's own limit: to change "
                                              "that, pass max_episode_steps in --env-kwargs"})
    env_kwargs: dict = field(default_factory=dict, metadata={"help": "JSON object of gym.make keyword arguments"})
    pixels: bool = field(
        default=False, metadata={"help": "collect the env's rgb_array render as 64x64 frames, for envs whose "
                                         "observations are not images (CartPole-v1); the data then names env "
                                         "WM-Pixels-v0 with env_id ENV in its env_kwargs: the env later stages "
                                         "rebuild"})
    backend: Backend = field(default="local", metadata={"help": BACKEND_HELP + " (ray: shards are sent back to "
                                                                               "this machine's --out)"})
    ray_address: str | None = field(default=None, metadata={"help": RAY_ADDRESS_HELP})
