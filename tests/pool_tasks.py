"""Trivial tasks for the WorkerPool tests, in a module of their own: a worker imports it (by name, to unpickle
a task) and nothing more."""

from __future__ import annotations

import os
import signal
import time

_PROGRESS = None  # in a worker: the shared array its tasks report to


def share_progress(progress) -> None:
    """The pool's initializer: keep the shared array, as the collector's workers do."""
    global _PROGRESS
    _PROGRESS = progress


def count_up(index: int, steps: int, pause: float) -> int:
    """Report steps 1..steps into slot ``index`` of the shared array, one per ``pause`` seconds."""
    for step in range(1, steps + 1):
        time.sleep(pause)
        _PROGRESS[index] = step
    return index


def sleep_then_return(seconds: float, value):
    time.sleep(seconds)
    return value


def fail(message: str):
    raise ValueError(message)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sigint_disposition() -> str:
    return repr(signal.getsignal(signal.SIGINT))


def sleep_ignoring_sigterm(seconds: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def die_once(marker: str, value):
    """Kill this worker process the first time (``marker`` does not exist yet: made first), return ``value``
    on a later attempt: a worker lost mid-run, for a pool that runs the task again."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def report_then_spin(slot: int, values: list[int], marker: str, seconds: float = 600) -> None:
    """Write ``values`` into the pool's counters from ``slot`` on, then keep the CPU busy for ``seconds``; an
    interrupt (KeyboardInterrupt) on the way leaves ``marker`` behind."""
    from wm_agent.workers import set_counters

    set_counters(slot, values)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            pass
    except KeyboardInterrupt:
        open(marker, "w").close()
        raise


def make_temporary_folders(root: str, count: int) -> int:
    """``count`` of wm_agent.io's temporary folders in ``root``, made, written and removed one after the other
    (while other processes do the same, and sweep them); returns how many failed (a folder swept while in use)."""
    import tempfile

    from wm_agent.io import temporary_folder

    tempfile.tempdir = root
    failures = 0
    for _ in range(count):
        try:
            with temporary_folder("wm-agent-race-") as name:
                for k in range(3):
                    with open(os.path.join(name, f"file{k}"), "wb") as f:
                        f.write(b"x" * 1000)
        except OSError:
            failures += 1
    return failures
