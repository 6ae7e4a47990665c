"""Worker processes: why one died, as the user reads it (signals, errors, the script without a main guard),
and the modes of the one worker pool, WorkerPool."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pool_tasks
import pytest

from wm_agent.workers import (WorkerDied, WorkerPool, WorkerTimeout, children_ignore_sigint, death_reason,
                              unguarded_main_script)

REPO = Path(__file__).resolve().parents[1]


def ends(*codes):
    return [SimpleNamespace(exitcode=code) for code in codes]


def test_a_sigkill_reads_as_killed_and_maybe_out_of_memory():
    assert death_reason(ends(-signal.SIGKILL, None)) == "killed by SIGKILL (out of memory?)"


def test_the_pools_own_sigterms_do_not_hide_the_first_death():
    # A broken pool SIGTERMs the survivors; the worker that broke it exited with an error.
    reason = death_reason(ends(-signal.SIGTERM, 1, -signal.SIGTERM))
    assert reason.startswith("exited with status 1: its error is printed above")
    assert death_reason(ends(-signal.SIGTERM, -signal.SIGKILL)) == "killed by SIGKILL (out of memory?)"
    assert death_reason(ends(-signal.SIGTERM)) == "killed by SIGTERM"


def test_a_status_the_forkserver_could_not_read_does_not_hide_a_signal():
    assert death_reason(ends(255, -signal.SIGKILL)) == "killed by SIGKILL (out of memory?)"
    assert death_reason(ends(255)) == "killed, or out of memory?"


def test_no_exit_status_yet_says_so_plainly():
    assert death_reason(ends(None, 0)) == "killed, or out of memory?"


def test_an_unguarded_script_is_named_even_when_the_workers_status_was_lost(monkeypatch):
    """The pool's thread and death_reason can read a forkserver worker's status at the same moment; the
    loser stores 255. A worker that re-ran an unguarded script must still get the advice (a full-suite
    run once said "killed, or out of memory?" there)."""
    import wm_agent.workers as workers

    monkeypatch.setattr(workers, "unguarded_main_script", lambda: "job.py")
    advice = "; job.py starts workers outside `if __name__ == \"__main__\":`"
    assert death_reason(ends(255)).startswith("ended, its exit status lost (an error it printed is above)" + advice)
    assert death_reason(ends(None)).startswith("ended, its exit status lost")
    assert death_reason(ends(1, 255)).startswith("exited with status 1: its error is printed above" + advice)
    # a signal is no script's doing
    assert death_reason(ends(255, -signal.SIGKILL)) == "killed by SIGKILL (out of memory?)"


@pytest.mark.parametrize("source, guarded", [
    ("print('hi')\n", False),
    ("if __name__ == '__main__':\n    print('hi')\n", True),
    ('if "__main__" == __name__:\n    print("hi")\n', True),
    ("def main():\n    if __name__ == '__main__':\n        pass\n", False),  # not at the top level
])
def test_unguarded_main_script_reads_the_main_file(tmp_path, monkeypatch, source, guarded):
    script = tmp_path / "job.py"
    script.write_text(source)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(script), raising=False)
    assert unguarded_main_script() == (None if guarded else str(script))


def test_no_main_file_is_not_blamed(monkeypatch):
    monkeypatch.delattr(sys.modules["__main__"], "__file__", raising=False)
    assert unguarded_main_script() is None


SCRIPT = """
import sys
from wm_agent.data.collect import DataCollector
DataCollector("WM-GridWorld-v0", sys.argv[1], workers=2, episodes_per_shard=1).collect(2, progress=False)
print("collected")
"""


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_main_guard_is_told_what_to_change(tmp_path, guarded):
    """Workers import the main script; unguarded, each of them would start workers again. Python refuses
    that in the worker, and the collector's error must say so instead of blaming memory."""
    body = SCRIPT if not guarded else "if __name__ == '__main__':\n" + textwrap.indent(SCRIPT, "    ")
    script = tmp_path / "collect_job.py"
    script.write_text(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], capture_output=True, text=True,
                          check=False, timeout=120, env=env, cwd=tmp_path)
    if guarded:
        assert proc.returncode == 0, proc.stderr
        assert "collected" in proc.stdout
    else:
        assert proc.returncode != 0
        # The error's line (resource_tracker warnings about the dead workers' semaphores may follow it).
        error = "wm_agent.data.shard_writer.CollectionError"
        [last] = [line for line in proc.stderr.splitlines() if line.startswith(error)]
        assert "a worker process died while collecting shard_0000" in last
        assert f"{script} starts workers outside `if __name__ == \"__main__\":`" in last
        assert "out of memory" not in last


def _sigint_disposition() -> str:
    return repr(signal.getsignal(signal.SIGINT))


def test_workers_started_in_the_block_ignore_ctrl_c_and_the_parent_gets_its_handler_back():
    import concurrent.futures as cf
    import multiprocessing as mp

    before = signal.getsignal(signal.SIGINT)
    with children_ignore_sigint():
        pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
        future = pool.submit(_sigint_disposition)
    try:
        assert future.result(timeout=120) == repr(signal.SIG_IGN)
    finally:
        pool.shutdown()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_exits_when_its_parent_is_killed(tmp_path):
    """A SIGKILLed parent cannot stop its pool: workers with ``watch_parent`` go by themselves."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import concurrent.futures as cf, multiprocessing as mp, os, sys, time
        from wm_agent.workers import watch_parent
        if __name__ == "__main__":
            pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=watch_parent)
            print(pool.submit(os.getpid).result(), flush=True)
            time.sleep(600)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        for _ in range(300):
            try:  # gone, or a zombie waiting for whoever adopted it to reap it
                if Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the worker outlived its killed parent by 30 s")
    finally:
        parent.kill()


# -- WorkerPool: the modes its users need, with trivial tasks ----------------------------------------------
def _no_children_left(deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while mp.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    return not mp.active_children()


def test_a_pool_returns_results_in_order_and_as_they_finish_with_progress_through_shared_memory():
    """RolloutWorkers' mode (every result in submission order, a callback as each finishes) and the
    collector's (a few tasks in flight, the next submitted as one finishes, running totals read from a
    shared array between waits)."""
    context = mp.get_context("spawn")
    progress = context.RawArray("q", 4)
    start_method = mp.get_start_method(allow_none=True)
    pool = WorkerPool(2, context, initializer=pool_tasks.share_progress, initargs=(progress,))
    try:
        tasks = pool.submit_all(pool_tasks.sleep_then_return, [(0.3, "slow"), (0.0, "fast"), (0.0, "third")])
        finished = []
        assert pool.results(tasks, timeout=120, on_result=lambda task, result: finished.append(result)) == [
            "slow", "fast", "third"]
        assert sorted(finished) == ["fast", "slow", "third"]
        assert mp.get_start_method(allow_none=True) == start_method  # starting workers chose none

        backlog = iter(range(4))
        pending = set(pool.submit_all(pool_tasks.count_up, [(next(backlog), 5, 0.02) for _ in range(2)]))
        done_indices, totals = [], []
        while pending:
            done, pending = pool.wait(pending, timeout=0.05)
            for task in done:
                done_indices.append(pool.result(task))
                index = next(backlog, None)
                if index is not None:
                    pending.add(pool.submit(pool_tasks.count_up, index, 5, 0.02))
            totals.append(sum(progress))
        assert sorted(done_indices) == [0, 1, 2, 3]
        assert list(progress) == [5] * 4 and totals == sorted(totals)
    finally:
        pool.close()
    assert _no_children_left()


def test_a_failing_task_stops_the_wait_and_kill_stops_workers_that_ignore_sigint_and_sigterm():
    pool = WorkerPool(2)
    try:
        [disposition] = pool.results([pool.submit(pool_tasks.sigint_disposition)], timeout=120)
        assert disposition == repr(signal.SIG_IGN)  # a terminal's Ctrl-C stops the parent, which kills them
        stuck = pool.submit(pool_tasks.sleep_ignoring_sigterm, 600)
        with pytest.raises(ValueError, match="boom"):
            pool.results([stuck, pool.submit(pool_tasks.fail, "boom")], timeout=120)
    except BaseException:
        pool.kill()
        raise
    t0 = time.monotonic()
    pool.kill(grace=0.5)  # SIGTERM, then SIGKILL for the worker that ignores it
    assert time.monotonic() - t0 < 10
    assert _no_children_left()


def test_a_wait_that_runs_out_and_a_worker_that_dies_are_told_apart():
    pool = WorkerPool(1)
    try:
        task = pool.submit(pool_tasks.sleep_then_return, 600, None)
        with pytest.raises(WorkerTimeout):
            list(pool.as_completed([task], timeout=0.5))
        for process in mp.active_children():  # the pool's worker
            process.kill()
        with pytest.raises(WorkerDied, match=r"^a worker process died \(killed by SIGKILL \(out of memory\?\)\)$"):
            pool.result(task)
        with pytest.raises(WorkerDied) as died:  # a broken pool takes no more tasks
            pool.submit(pool_tasks.die)
        assert died.value.reason == "killed by SIGKILL (out of memory?)"
    finally:
        pool.kill()
    assert _no_children_left()
