"""What the CarRacing measurement scripts share: a checkpoint's controller in its real CarRacing env."""

import torch

from wm_agent.latent_env import LatentObservation
from wm_agent.rollouts import make_latent_env
from wm_agent.world_model import WorldModel


def open_carracing(checkpoint: str, seed: int) -> tuple[WorldModel, LatentObservation]:
    """The checkpoint's world model and its real env, reset once with ``seed``; exits for a non-CarRacing env."""
    torch.set_num_threads(1)
    wm = WorldModel.load(checkpoint)
    env = make_latent_env(wm.real_env_id(), wm)
    env.reset(seed=seed)
    if not hasattr(env.unwrapped, "tile_visited_count"):
        env.close()
        raise SystemExit(f"{checkpoint}: a CarRacing checkpoint is needed (its env is {wm.real_env_id()})")
    return wm, env
