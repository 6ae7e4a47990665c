"""wm-agent: World Models (VQ-VAE + MDN-RNN + CMA-ES controller) for Gymnasium.

Importing the package registers the ``WM-*`` environments.
"""

import envs as _envs  # noqa: F401  (registers WM-GridWorld-v0, WM-CarRacing-v0, WM-Dream-v0)

__version__ = "0.1.0"
