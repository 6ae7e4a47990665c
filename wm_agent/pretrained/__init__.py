"""Checkpoints that ship with wm-agent, for ``--pretrained NAME`` (package data: nothing is downloaded).

Each was made by the package's own commands; docs/benchmarks.md ("Pretrained checkpoints") gives the recipe
and the figures it scores.
"""

from __future__ import annotations

from pathlib import Path

# name -> file beside this module
CHECKPOINTS = {"carracing": "carracing.pt", "gridworld": "gridworld.pt"}


def checkpoint_path(checkpoint: str | None, pretrained: str | None) -> str:
    """The checkpoint a command runs on: its ``--checkpoint`` path, or the file of ``--pretrained NAME``.

    Args:
        checkpoint: a checkpoint path, or None.
        pretrained: the name of a checkpoint that ships with wm-agent, or None.

    Returns:
        The path of the checkpoint to load.

    Raises:
        ValueError: when both or neither are given, or for an unknown name (the message lists the names).
    """
    if (checkpoint is None) == (pretrained is None):
        raise ValueError("give either --checkpoint PATH or --pretrained NAME "
                         f"(NAME one of: {', '.join(sorted(CHECKPOINTS))})")
    if checkpoint is not None:
        return checkpoint
    if pretrained not in CHECKPOINTS:
        raise ValueError(f"no pretrained checkpoint named {pretrained!r}; the names are: "
                         f"{', '.join(sorted(CHECKPOINTS))}")
    return str(Path(__file__).resolve().parent / CHECKPOINTS[pretrained])
