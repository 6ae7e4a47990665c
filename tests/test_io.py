"""Atomic writes and safe loads (wm_agent.io): refused files are named with the reason, never with advice to load them anyway."""

from __future__ import annotations

import fractions
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from wm_agent.io import load_torch, temporary_folder


def test_a_refused_checkpoint_names_the_reason_without_the_unsafe_advice(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2), "ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError) as exc:
        load_torch(path)
    message = str(exc.value)
    assert str(path) in message and "fractions.Fraction" in message  # the actual cause survives
    for advice in ("trust", "Alternatively", "weights_only` set to `False`", "\x1b["):
        assert advice not in message


def test_temporary_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid names a process that no longer runs (as after a SIGKILL)
    dead = tmp_path / f"wm-agent-cmaes-{child.pid}-abc"
    live = tmp_path / f"wm-agent-cmaes-{os.getppid()}-def"
    other = tmp_path / f"wm-agent-bench-{child.pid}-ghi"  # another prefix is not ours to judge
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"x")
    with temporary_folder("wm-agent-cmaes-") as name:
        assert os.path.basename(name).startswith(f"wm-agent-cmaes-{os.getpid()}-")
        assert not dead.exists() and live.exists() and other.exists()
    assert not os.path.exists(name)
