"""wm-agent: World Models (VQ-VAE + MDN-RNN + CMA-ES controller) for Gymnasium.

Importing the package registers the ``WM-*`` environments: those of ``envs`` and its own dream,
``WM-Dream-v0``. The main classes are reachable from the top level (``wm_agent.WorldModel.load(path)``,
``from wm_agent import DataCollector``); each is imported on first use, so ``import wm_agent`` (and the
``wm-agent`` command's start-up) does not pay for importing torch until a class that needs it is asked for.
"""

import importlib as _importlib
from pathlib import Path as _Path

from gymnasium.envs.registration import register as _register
from gymnasium.envs.registration import registry as _registry

import envs as _envs  # registers WM-GridWorld-v0, WM-CarRacing-v0, WM-Pixels-v0

# A project's own envs/ package (a common folder name in RL code) found first on sys.path would take the
# place of ours: nothing would be registered, and gym.make("WM-GridWorld-v0") would fail far from the cause.
if _Path(getattr(_envs, "__file__", None) or "").resolve().parent.parent != _Path(__file__).resolve().parent.parent:
    raise ImportError(
        f"'import envs' found {_envs.__file__ or next(iter(_envs.__path__), '?')}, "
        "not wm-agent's environments (next to "
        f"{_Path(__file__).resolve().parent}): a package named 'envs' earlier on sys.path, often in the current "
        "folder, hides it. Rename that package, or run from another folder"
    )


def _register_dream() -> None:
    """Register WM-Dream-v0, the world model's dream (idempotent, as ``envs.register_envs`` is)."""
    if "WM-Dream-v0" not in _registry:
        _register(
            id="WM-Dream-v0",
            entry_point="wm_agent.dream_env:DreamEnv",
            vector_entry_point="wm_agent.dream_env:DreamVectorEnv",
        )


_register_dream()

__version__ = "0.1.0"

# name -> the module (under wm_agent) that defines it
_EXPORTS = {
    "WorldModelConfig": "config",
    "VectorQuantizer": "models.vqvae",
    "VQVAE": "models.vqvae",
    "MDNRNN": "models.mdnrnn",
    "Controller": "models.controller",
    "WorldModel": "world_model",
    "DreamEnv": "dream_env",
    "DreamVectorEnv": "dream_env",
    "LatentObservation": "latent_env",
    "DataCollector": "data.collect",
    "EpisodeDataset": "data.dataset",
    "Visualizer": "render.figures",
    "ControllerTrainConfig": "commands.train_controller",
    "train_controller": "commands.train_controller",
}

__all__ = [  # in the order of _EXPORTS, not sorted
    "__version__", "WorldModelConfig", "VectorQuantizer", "VQVAE", "MDNRNN", "Controller", "WorldModel", "DreamEnv",
    "DreamVectorEnv", "LatentObservation", "DataCollector", "EpisodeDataset", "Visualizer", "ControllerTrainConfig",
    "train_controller",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(f"wm_agent.{module}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if not name.startswith("_"):  # a submodule not imported yet: wm_agent.world_model.WorldModel
        try:
            return _importlib.import_module(f"wm_agent.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"wm_agent.{name}":
                raise
    raise AttributeError(f"module 'wm_agent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
