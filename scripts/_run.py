"""Shared by the scripts: run a ``wm-agent`` subcommand from a clone, without installing the package."""

import sys
from pathlib import Path

# The repository root holds wm_agent/ and envs/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(command: str) -> None:
    from wm_agent.cli import main

    sys.exit(main([command, *sys.argv[1:]]))
