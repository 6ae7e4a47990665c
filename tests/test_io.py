"""Atomic writes and safe loads (wm_agent.io): refused files are named with the reason, never with advice to
load them anyway."""

from __future__ import annotations

import fractions
import os
import subprocess
import sys
import tempfile
import time

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


def test_temporary_folders_whose_owner_is_gone_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid names a process that no longer runs (as after a SIGKILL)
    names = {"dead": f"{child.pid}-a", "held": f"{os.getppid()}-b", "young": f"{child.pid}-c",
             "old": f"{child.pid}-d", "odd": "\u00b2-e", "huge": "99999999999999999999-f"}
    folders = {key: tmp_path / f"wm-agent-cmaes-{name}" for key, name in names.items()}
    other = tmp_path / f"wm-agent-bench-{child.pid}-x"  # another prefix is not ours to judge
    for folder in (*folders.values(), other):
        folder.mkdir()
        (folder / "model.pt").write_bytes(b"x")
    for key in ("dead", "held"):  # a lock file nobody holds, and one a live owner holds
        (folders[key] / ".lock").touch()
    held = os.open(folders["held"] / ".lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # the owner may live in another PID namespace: the lock says it is alive
    hours_ago = time.time() - 2 * 3600
    os.utime(folders["old"], (hours_ago, hours_ago))  # no lock file: an older version's, long gone
    try:
        with temporary_folder("wm-agent-cmaes-") as name:
            assert os.path.basename(name).startswith(f"wm-agent-cmaes-{os.getpid()}-")
            assert {key for key, folder in folders.items() if folder.exists()} == {"held", "young", "odd", "huge"}
            assert other.exists()
            # Another process's sweep leaves this live folder alone.
            sweep = (f"import tempfile; tempfile.tempdir = {str(tmp_path)!r}; "
                     "from wm_agent.io import temporary_folder; temporary_folder('wm-agent-cmaes-').cleanup()")
            subprocess.run([sys.executable, "-c", sweep], check=True)
            assert os.path.exists(os.path.join(name, ".lock"))
    finally:
        os.close(held)
    assert not os.path.exists(name)


def test_processes_making_temporary_folders_at_once_never_sweep_a_live_one(tmp_path):
    # Each folder's sweep met the others' folders between their creation and their lock (1 in ~200 here, when
    # collection on Ray made one per shard); three processes x 400 folders found it every time before the fix.
    pytest.importorskip("fcntl")
    import multiprocessing as mp

    import pool_tasks

    with mp.get_context("spawn").Pool(3) as pool:
        assert pool.starmap(pool_tasks.make_temporary_folders, [(str(tmp_path), 400)] * 3) == [0, 0, 0]
