"""Imported first by the measurement scripts: this clone's root goes first on sys.path, so the wm_agent and
envs measured are the ones beside the script, installed or not."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
