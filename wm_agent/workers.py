"""Worker processes: how they start and stop with their parent, and why one ended, in words for the
error a user reads.

A pool only says that a worker is gone. Its exit code tells more: a signal (the OOM killer's
SIGKILL, a SIGTERM) or an error of its own, and the commonest error of all is a script that starts
workers outside ``if __name__ == "__main__":``. Workers start with ``spawn``/``forkserver``, so each
one imports the main script; unguarded, that import starts workers again and Python refuses.
"""

from __future__ import annotations

import ast
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["children_ignore_sigint", "death_reason", "starting_workers", "unguarded_main_script", "watch_parent"]


def watch_parent() -> None:
    """In a worker process (a pool's initializer): exit at once when the parent process is gone. A
    SIGKILLed parent cannot stop its workers, and idle ones would wait on their queue forever."""
    parent = mp.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()


def _exit_with_parent(sentinel) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


@contextmanager
def children_ignore_sigint() -> Iterator[None]:
    """Start worker processes inside this block and they keep SIGINT ignored for life (a spawned or
    forkserver Python keeps an ignored SIGINT ignored). A terminal's Ctrl-C reaches the whole process
    group: this way it stops only the parent, which then stops its workers, instead of every worker
    printing a KeyboardInterrupt traceback (torch's import in a fresh worker takes seconds). A Ctrl-C
    that lands inside the block itself, while processes start, is dropped."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def starting_workers() -> Iterator[None]:
    """Where every pool or vector env of wm-agent starts its processes: inside ``children_ignore_sigint``,
    and leaving a start method the program had not chosen unchosen. Starting a spawn or forkserver process
    fixes the default, even for a pool of an explicit context (CPython asks for the start method while it
    prepares the child), and a user's later ``set_start_method`` would raise "context has already been set"."""
    unset = mp.get_start_method(allow_none=True) is None
    try:
        with children_ignore_sigint():
            yield
    finally:
        if unset and mp.get_start_method(allow_none=True) is not None:
            mp.set_start_method(None, force=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def unguarded_main_script() -> str | None:
    """The main script's path when it has no top-level ``if __name__ == "__main__":`` (so every
    worker that imports it runs it all again); None when it has one or is not a readable file."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
                and {ast.unparse(test.left), ast.unparse(test.comparators[0])} == {"__name__", "'__main__'"}):
            return None
    return str(path)


def _reap_ended(processes: list, timeout: float = 2.0) -> None:
    """Wait for the exit status of the processes that have ended. The pipe that told their pool closes
    while a process exits, a moment before its status can be read; and a pool's own thread may be
    reaping it at the same time, which leaves ``exitcode`` None here until that thread has stored it."""
    deadline = time.monotonic() + timeout
    sentinels = {p.sentinel: p for p in processes if getattr(p, "sentinel", None) is not None}
    for sentinel in multiprocessing.connection.wait(list(sentinels), timeout=timeout):
        process = sentinels[sentinel]
        while process.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.01)


def death_reason(processes: Iterable) -> str:
    """A phrase for why the worker ``processes`` (``multiprocessing.Process``es) stopped, e.g.
    ``"killed by SIGKILL (out of memory?)"``; used after a pool broke."""
    processes = list(processes)
    _reap_ended(processes)
    codes = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
    # A broken pool SIGTERMs the workers still running: their ends say nothing about the first one's.
    codes = [code for code in codes if code != -signal.SIGTERM] or codes
    # 255 is what a forkserver worker's Popen reports when the status can no longer be read (the pool
    # dropped the process and its pipe closed first, or the pool's thread read it at the same moment),
    # not an error of the worker's. The signal, if any was read, says more.
    errors = [code for code in codes if code > 0 and code != 255]
    signals = sorted({-code for code in codes if code < 0})
    if signals and not errors:  # a signal is no script's doing: no need to read the main script
        hint = " (out of memory?)" if signal.SIGKILL in signals else ""
        return f"killed by {', '.join(_signal_name(s) for s in signals)}{hint}"
    script = unguarded_main_script()
    advice = "" if script is None else (
        f"; {script} starts workers outside `if __name__ == \"__main__\":`, and each worker imports the main "
        "script: put the script's work under that line")
    if errors:
        return f"exited with status {errors[0]}: its error is printed above{advice}"
    if script is not None:  # the status was lost, and an unguarded script is what ends workers unsignalled
        return f"ended, its exit status lost (an error it printed is above){advice}"
    return "killed, or out of memory?"
