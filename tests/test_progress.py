"""Progress bars leave the program's multiprocessing start method for the program to choose."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_script(folder: Path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (pytest's own process may have chosen a start method already)."""
    path = folder / "user_script.py"
    path.write_text(textwrap.dedent(script))
    out = subprocess.run([sys.executable, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_collecting_with_workers_and_bars_leaves_the_start_method_unset(tmp_path):
    """Plain tqdm fixes the default start method when its first bar (even a disabled one) is made, and so
    does starting a forkserver or spawn worker; a later set_start_method("spawn") then raised "context
    has already been set". tqdm's own process pool must still work after the switch."""
    out = _run_script(tmp_path, f"""
        import multiprocessing as mp
        from tqdm.contrib.concurrent import process_map
        from tqdm.std import TqdmDefaultWriteLock
        from wm_agent import DataCollector
        from wm_agent.progress import progress_bar

        if __name__ == "__main__":
            for vectorization in ("processes", "async"):  # 3 shards: two worker processes (or sub-envs) run
                DataCollector("WM-GridWorld-v0", {str(tmp_path)!r} + "/" + vectorization, workers=2,
                              episodes_per_shard=2, max_steps=5, vectorization=vectorization).collect(6, progress=True)
                assert mp.get_start_method(allow_none=True) is None, (vectorization, mp.get_start_method())
            assert TqdmDefaultWriteLock.mp_lock is not None  # tqdm still has its cross-process lock
            mp.set_start_method("spawn")
            with progress_bar(total=2, disable=False) as bar:  # bars still work after the choice
                bar.update(2)
            print("start method", mp.get_start_method(), process_map(abs, [-1, -2, -3], max_workers=2))
    """)
    assert "start method spawn [1, 2, 3]" in out.stdout


def test_killed_rollout_workers_leave_no_semaphore_behind(tmp_path):
    """Rollout workers make a (disabled) bar per batch; a semaphore made for it there stayed registered when
    the workers were killed (Ctrl-C, SIGTERM, --timeout), and Python warned of leaked semaphores at exit."""
    out = _run_script(tmp_path, f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import numpy as np
        from helpers import tiny_world_model
        from wm_agent.rollouts import RolloutWorkers

        if __name__ == "__main__":
            wm = tiny_world_model()
            workers = RolloutWorkers(wm, "WM-GridWorld-v0", workers=2)
            params = np.repeat(wm.controller.params.detach().numpy()[None], 2, axis=0)
            out = workers.run(params, seeds=[0, 1], greedy=True, max_steps=5)
            workers.close(kill=True)  # as a Ctrl-C or a timeout does
            import multiprocessing as mp
            assert mp.get_start_method(allow_none=True) is None, mp.get_start_method()  # starting them fixed none
            print("rollouts", out["return"].shape)
    """)
    assert "rollouts (2, 2)" in out.stdout
    assert "leaked" not in out.stderr, out.stderr
