"""Gymnasium environments of wm-agent; importing this module registers their ``WM-*`` ids (the dream,
``WM-Dream-v0``, is ``wm_agent``'s own: importing ``wm_agent`` registers it)."""

from gymnasium.envs.registration import register, registry

from envs.gridworld import GridWorldEnv
from envs.wrappers import PIXELS_ID, ImageObservation

__all__ = ["GridWorldEnv", "ImageObservation", "PIXELS_ID", "register_envs"]


def register_envs() -> None:
    """Register the WM-* ids of the envs here (idempotent, so importing ``envs`` more than once is fine;
    ``wm_agent`` registers its own ``WM-Dream-v0``)."""
    if "WM-GridWorld-v0" not in registry:
        register(id="WM-GridWorld-v0", entry_point="envs.gridworld:GridWorldEnv", max_episode_steps=50)
    if "WM-CarRacing-v0" not in registry:
        register(id="WM-CarRacing-v0", entry_point="envs.car_racing:make_car_racing", max_episode_steps=1000)
    if PIXELS_ID not in registry:
        # No time limit of its own: the env it renders keeps its own (collect --pixels records it).
        register(id=PIXELS_ID, entry_point="envs.wrappers:make_pixel_env")


register_envs()
