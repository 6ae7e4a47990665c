"""Worker processes: ``WorkerPool``, the one process pool of wm-agent (data collection, real-env
rollouts for CMA-ES and evaluation), and the helpers it starts and stops its workers with: how they start
and stop with their parent, and why one ended, in words for the error a user reads.

A pool only says that a worker is gone. Its exit code tells more: a signal (the OOM killer's
SIGKILL, a SIGTERM) or an error of its own, and the commonest error of all is a script that starts
workers outside ``if __name__ == "__main__":``. Workers start with ``spawn``/``forkserver``, so each
one imports the main script; unguarded, that import starts workers again and Python refuses.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Pool", "WorkerDied", "WorkerPool", "WorkerTimeout", "children_ignore_sigint", "death_reason",
           "set_counters", "starting_workers", "unguarded_main_script", "watch_parent", "worker_file"]


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


# -- the pool ------------------------------------------------------------------------------------------
class WorkerDied(RuntimeError):
    """A worker process of a ``WorkerPool`` ended before its task did; ``reason`` says why in words
    (``death_reason``), e.g. ``"killed by SIGKILL (out of memory?)"``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"a worker process died ({self.reason})"


class WorkerTimeout(TimeoutError):
    """Tasks of a ``WorkerPool`` were still unfinished when the ``timeout`` of the wait for them ran out."""


# -- what tasks see in a worker, whatever the pool ----------------------------------------------------
_COUNTERS = None  # in a worker: its pool's counters (an object with ``set(slot, values)``), or None


def set_counters(slot: int, values: Sequence[int]) -> None:
    """In a worker: write ``values`` into its pool's counters from ``slot`` on (a running task's progress,
    which the pool's owner reads with ``pool.counters()``). Does nothing in a pool made without counters, or
    outside a worker. A local pool's counters are shared memory; a Ray pool's may arrive a moment late."""
    if _COUNTERS is not None:
        _COUNTERS.set(slot, values)


@contextmanager
def worker_file(handle) -> Iterator[str]:
    """In a worker: the path of a file that the pool's owner shared with ``pool.share_file`` (a local pool's
    handle is the path itself; a Ray pool's brings the file's bytes and writes them into a temporary file,
    removed when the block ends).

    Args:
        handle: what ``share_file`` returned.

    Yields:
        A path to read the file from, inside the block.
    """
    if isinstance(handle, (str, os.PathLike)):
        yield str(handle)
    else:
        with handle.local_copy() as path:
            yield path


class _SharedCounters:
    """A local pool's counters: int64 slots in shared memory, inherited by the workers when they start."""

    def __init__(self, context, size: int):
        self.array = context.RawArray("q", size)

    def set(self, slot: int, values: Sequence[int]) -> None:
        self.array[slot:slot + len(values)] = list(values)

    def read(self) -> list[int]:
        return list(self.array)


def _start_worker(initializer: Callable[..., None] | None, initargs: tuple, counters: _SharedCounters | None) -> None:
    global _COUNTERS
    watch_parent()
    _COUNTERS = counters
    if initializer is not None:
        initializer(*initargs)


class _RecordingContext:
    """A ``multiprocessing`` context that keeps every process made through it. A broken executor forgets
    its processes, and their exit statuses say why it broke; an executor has no public way to stop
    running tasks either: the pool stops the processes themselves."""

    def __init__(self, context, processes: list):
        self._context, self._processes = context, processes

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def Process(self, *args, **kwargs):  # the name the executor calls
        process = self._context.Process(*args, **kwargs)
        self._processes.append(process)
        return process


class Pool:
    """What every worker pool of wm-agent offers (``WorkerPool``: local processes; ``wm_agent.ray_pool.RayPool``:
    a Ray cluster; ``wm_agent.backends.make_pool`` picks one). ``WorkerPool`` documents the methods; ``submit``
    and ``results`` are written once here, on top of the others."""

    workers: int
    same_filesystem: bool  # whether the workers read and write this machine's files

    def submit_all(self, fn: Callable, calls: Iterable[Sequence]) -> list:
        raise NotImplementedError

    def wait(self, tasks: Iterable, timeout: float | None = None) -> tuple[set, set]:
        raise NotImplementedError

    def result(self, task) -> Any:
        raise NotImplementedError

    def as_completed(self, tasks: Iterable, timeout: float | None = None) -> Iterator[tuple[Any, Any]]:
        raise NotImplementedError

    def share_file(self, path: str | os.PathLike) -> Any:
        raise NotImplementedError

    def counters(self) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def kill(self, grace: float = 0.0) -> None:
        raise NotImplementedError

    def submit(self, fn: Callable, *args) -> Any:
        """Run ``fn(*args)`` in a worker.

        Args:
            fn: a module-level function (pickled by name).
            *args: its arguments (pickled).

        Returns:
            The task's handle.

        Raises:
            WorkerDied: a local pool had lost a worker before.
        """
        return self.submit_all(fn, [args])[0]

    def results(self, tasks: Sequence, timeout: float | None = None,
                on_result: Callable[[Any, Any], None] | None = None) -> list:
        """Every result of ``tasks``, in their order; the first task to fail stops the wait (its error is
        raised, as ``as_completed`` raises it).

        Args:
            tasks: handles from ``submit``.
            timeout: seconds for all of them, as in ``as_completed``.
            on_result: called with each task and its result as the task finishes (a progress bar's update).

        Returns:
            The tasks' results, in the order of ``tasks``.
        """
        results = {}
        for task, result in self.as_completed(tasks, timeout):
            results[task] = result
            if on_result is not None:
                on_result(task, result)
        return [results[task] for task in tasks]


class WorkerPool(Pool):
    """Worker processes that run picklable tasks: the one process pool of wm-agent (data collection,
    real-env rollouts for CMA-ES and evaluation).

    A task is a module-level function and its arguments, pickled for the worker. ``submit`` returns an
    opaque, hashable handle; ``wait``, ``as_completed`` and ``results`` wait on handles and ``result`` reads
    one: the task's return value, or its own exception raised again, or ``WorkerDied`` naming why a worker
    ended (a pool that lost a worker is broken: each of its unfinished tasks then fails so). A wait given
    a ``timeout`` raises ``WorkerTimeout`` when it runs out. A worker keeps what a task leaves in its
    module globals for the next tasks (a loaded model, envs).

    Workers start on the submits that need them (one per submit while fewer than ``workers`` run); every
    submit runs inside ``starting_workers``: workers ignore Ctrl-C for life, and a start method the program
    had not chosen stays unchosen. Each worker runs ``watch_parent`` (it exits when the parent is gone), then
    ``initializer``.

    End every pool with ``close()`` (running tasks finish) or, after a failure or on an interrupt, with
    ``kill()``: the workers ignore SIGINT, so a Ctrl-C stops them only through ``kill()``.

    Running tasks report progress without messages through ``counters`` int64 slots (``set_counters`` in
    the worker, ``counters()`` here), and a file the workers need (a model) reaches them through
    ``share_file`` and ``worker_file``: in this pool the file's path itself, as the workers share this
    machine's files (``same_filesystem``).

    These workers are local processes (``concurrent.futures.ProcessPoolExecutor``); ``wm_agent.ray_pool.RayPool``
    implements the same methods on a Ray cluster (``wm_agent.backends.make_pool`` picks one).

    Args:
        workers: the most worker processes that run at once.
        context: the ``multiprocessing`` context the workers start from (None: ``spawn``).
        initializer: a picklable function each worker calls once, when it starts, or None.
        initargs: ``initializer``'s arguments; shared memory (``context.RawArray``) may go here.
        counters: how many counter slots the tasks share with this process (0: none).
    """

    same_filesystem = True  # the workers read and write this machine's files

    def __init__(self, workers: int, context=None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), counters: int = 0):
        self.workers = workers
        self._processes: list = []  # every worker started, also after the executor forgot them
        context = context if context is not None else mp.get_context("spawn")
        self._counters = _SharedCounters(context, counters) if counters else None
        self._executor = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=_RecordingContext(context, self._processes), initializer=_start_worker,
            initargs=(initializer, initargs, self._counters))

    def share_file(self, path: str | os.PathLike) -> str:
        """A handle for ``worker_file`` to open ``path`` by in a worker: here the path itself (the workers
        run on this machine)."""
        return str(path)

    def counters(self) -> list[int]:
        """What the tasks last wrote into the counters (``set_counters``), slot by slot."""
        return self._counters.read() if self._counters is not None else []

    def submit_all(self, fn: Callable, calls: Iterable[Sequence]) -> list[cf.Future]:
        """Run ``fn(*args)`` in the workers for each ``args`` of ``calls``, submitted together inside
        ``starting_workers`` (a Ctrl-C that lands meanwhile is dropped: it cannot leave workers half started
        or the batch half submitted).

        Returns:
            The tasks' handles, in the order of ``calls``.
        """
        try:
            with starting_workers():
                return [self._executor.submit(fn, *args) for args in calls]
        except cf.process.BrokenProcessPool as exc:
            raise WorkerDied(death_reason(self._started())) from exc

    def wait(self, tasks: Iterable[cf.Future], timeout: float | None = None) -> tuple[set, set]:
        """Wait until one of ``tasks`` has finished (or failed), or ``timeout`` seconds have passed.

        Returns:
            The finished tasks and the unfinished ones, as two sets (the first empty after a timeout).
        """
        done, pending = cf.wait(tasks, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return done, pending

    def result(self, task: cf.Future) -> Any:
        """The return value of ``task``, waited for if it is still running.

        Raises:
            WorkerDied: a worker ended (killed, out of memory, ...) before the task did; ``reason`` says why.
            Exception: the task's own exception, raised again here (its traceback in the worker is the
                ``__cause__``).
        """
        try:
            return task.result()
        except cf.process.BrokenProcessPool as exc:
            raise WorkerDied(death_reason(self._started())) from exc

    def as_completed(self, tasks: Iterable[cf.Future], timeout: float | None = None) -> Iterator[tuple[cf.Future, Any]]:
        """Each of ``tasks`` with its result, as it finishes; the first one that failed raises (as
        ``result`` does) instead.

        Args:
            tasks: handles from ``submit``.
            timeout: seconds, counted from the first step of the iteration, for all of them (None: no limit).

        Yields:
            ``(task, result)`` pairs in the order the tasks finish.

        Raises:
            WorkerTimeout: some were unfinished after ``timeout`` seconds.
        """
        finished = cf.as_completed(tasks, timeout=timeout)
        while True:
            try:
                task = next(finished)
            except StopIteration:
                return
            except cf.TimeoutError:
                raise WorkerTimeout(f"a worker did not finish within {timeout:g} s") from None
            yield task, self.result(task)

    def close(self) -> None:
        """Let the running tasks finish, drop the queued ones and wait for the workers to exit. Closing a
        closed pool does nothing."""
        # Waited for also after a kill (the killed workers end at once): a pool's manager thread still
        # tearing down when the interpreter exits made its exit hook write to a closed pipe ("Exception
        # ignored ... Bad file descriptor" with a traceback after a clean error message, now and then).
        self._executor.shutdown(wait=True, cancel_futures=True)

    def kill(self, grace: float = 0.0) -> None:
        """Stop the workers now, abandoning their tasks, and close the pool.

        Args:
            grace: 0: SIGKILL every worker at once. More: SIGTERM them (a worker may clean up), and SIGKILL
                any that has not ended ``grace`` seconds after (one that ignores SIGTERM would keep
                ``close()`` waiting for it forever).
        """
        processes = self._started()
        if grace > 0:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            self._executor.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.join(timeout=grace)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=grace)
        else:
            for process in processes:
                process.kill()
        self.close()

    def _started(self) -> list:
        return [process for process in self._processes if process.pid is not None]
