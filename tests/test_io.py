"""Atomic writes and safe loads (wm_agent.io): refused files are named with the reason, never with advice to load them anyway."""

from __future__ import annotations

import fractions

import pytest
import torch

from wm_agent.io import load_torch


def test_a_refused_checkpoint_names_the_reason_without_the_unsafe_advice(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2), "ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError) as exc:
        load_torch(path)
    message = str(exc.value)
    assert str(path) in message and "fractions.Fraction" in message  # the actual cause survives
    for advice in ("trust", "Alternatively", "weights_only` set to `False`", "\x1b["):
        assert advice not in message
