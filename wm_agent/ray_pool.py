"""``RayPool``: wm-agent's worker pool (the interface of ``wm_agent.workers.Pool``) on a Ray cluster, so that
collection, real-env CMA-ES and evaluation scale past one machine with the same commands (``--backend ray``).

Ray is an optional extra: this module imports it only when a pool is made, and a missing Ray says which
extra to install (``RayNotInstalled``).

What the local pool does with processes, this one does with Ray's means:

- Each task is a Ray task of one CPU whose lost worker (killed, out of memory, its node gone) Ray runs again,
  at most ``max_retries`` times; then ``result`` raises ``WorkerDied``. A task's own exception is not retried:
  it is raised again, as the local pool raises it. Tasks are functions of their arguments (every seed among
  them), so a retried task returns what the first attempt would have, and a seed fixes a run's results.
- A worker keeps what a task leaves in module globals for the next tasks, as a local worker does: Ray reuses
  its worker processes. ``initializer`` runs once per worker process and pool, before its first task.
- A file the workers need (a world model) goes into Ray's object store ONCE (``share_file``); each worker
  process fetches it when it first needs it (``wm_agent.workers.worker_file``), not with every task.
- Running tasks report progress into counters held by a small Ray actor (``set_counters`` in the worker,
  sent at most every ``COUNTER_INTERVAL`` seconds; ``counters()`` here) instead of shared memory.
- The workers may run on other machines: ``same_filesystem`` is False, and a job that writes files (the
  collector) has its tasks send them back to this process.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wm_agent import workers as _workers
from wm_agent.workers import Pool, WorkerDied, WorkerTimeout, children_ignore_sigint

__all__ = ["INSTALL_RAY", "RayFile", "RayNotInstalled", "RayPool", "import_ray"]

INSTALL_RAY = 'pip install "wm-agent[ray]"'
COUNTER_INTERVAL = 0.2  # seconds between a running task's counter messages (its last values are always sent)


class RayNotInstalled(ImportError, RuntimeError):
    """``--backend ray`` was asked for, but Ray is not installed (an ImportError, and a RuntimeError so the
    command line says it in one line)."""


def import_ray():
    """The ``ray`` module.

    Raises:
        RayNotInstalled: Ray cannot be imported; the message names the extra that installs it.
    """
    try:
        import ray
    except ImportError as exc:
        raise RayNotInstalled(f"the ray backend needs Ray, which is not installed here ({exc}): {INSTALL_RAY}"
                              ) from exc
    return ray


# -- in a worker ---------------------------------------------------------------------------------------
_INITIALIZED: set[str] = set()  # in a Ray worker process: the pools whose initializer has run in it


def _run_task(pool_id: str, initializer: Callable[..., None] | None, initargs: tuple,
              counters: _CounterWriter | None, fn: Callable, args: tuple) -> Any:
    """The Ray task behind every ``submit``: the pool's initializer (once per process), then ``fn(*args)``
    with ``set_counters`` writing to the pool's counters."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Inherited from a Ray started inside children_ignore_sigint. Ray stops a task (cancel, kill with a grace)
        # by interrupting it as SIGINT would, which an ignored SIGINT turns into nothing; Ray's workers run in
        # process groups of their own, which a terminal's Ctrl-C does not reach.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if initializer is not None and pool_id not in _INITIALIZED:
        initializer(*initargs)
        _INITIALIZED.add(pool_id)
    _workers._COUNTERS = counters
    try:
        return fn(*args)
    finally:
        _workers._COUNTERS = None
        if counters is not None:
            counters.flush()


class _CounterBoard:
    """The Ray actor that holds a pool's counters (no CPU of its own: it only stores numbers)."""

    def __init__(self, size: int):
        self.values = [0] * size

    def set(self, writes: dict[int, list[int]]) -> None:
        for slot, values in writes.items():
            self.values[slot:slot + len(values)] = values

    def read(self) -> list[int]:
        return self.values


class _CounterWriter:
    """A task's side of the counters: writes gathered and sent to the board at most every
    ``COUNTER_INTERVAL`` seconds (a GridWorld shard reports after every episode, hundreds a second)."""

    def __init__(self, board):
        self.board = board
        self._pending: dict[int, list[int]] = {}
        self._sent = 0.0

    def __getstate__(self):
        return {"board": self.board}

    def __setstate__(self, state):
        self.__init__(state["board"])

    def set(self, slot: int, values: Sequence[int]) -> None:
        self._pending[slot] = [int(v) for v in values]
        if time.monotonic() - self._sent >= COUNTER_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.board.set.remote(self._pending)
            self._pending = {}
        self._sent = time.monotonic()


@dataclass(frozen=True)
class RayFile:
    """A file put into Ray's object store once (``RayPool.share_file``); equal handles name the same object,
    so a worker keeps what it loaded from one across tasks."""

    name: str
    key: str  # the object's id
    ref: Any = field(compare=False, repr=False)

    @contextmanager
    def local_copy(self) -> Iterator[str]:
        """The file's bytes, fetched from the object store into a temporary file of the same name's
        extension, removed after the block."""
        import ray

        data = ray.get(self.ref)
        fd, path = tempfile.mkstemp(prefix="wm-agent-ray-", suffix=Path(self.name).suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            yield path
        finally:
            os.unlink(path)


# -- the pool ------------------------------------------------------------------------------------------
@contextmanager
def _sigterm_kept() -> Iterator[None]:
    """Keep the program's SIGTERM handler through ``ray.init``. Ray installs its own: a Python one, then its core's
    crash handler, which aborts the process (leaving the Ray processes it started running) instead of stopping
    it in order. Afterwards the handler the program had is back (wm-agent's command line turns SIGTERM into
    Ctrl-C's orderly stop, which stops the tasks and Ray), or else Ray's Python one, which stops Ray's processes."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        current = signal.getsignal(signal.SIGTERM)
        kept = current if previous in (signal.SIG_DFL, None) else previous
        if kept is not None:
            signal.signal(signal.SIGTERM, kept)


class RayPool(Pool):
    """Tasks on a Ray cluster, with ``WorkerPool``'s methods (see the module docstring for how each is done).

    Args:
        workers: how many tasks the callers run at once (they submit that many); Ray runs as many as the
            cluster has CPUs for. A warning says when the cluster has fewer CPUs than ``workers``.
        address: the cluster to join (``ray.init(address)``: ``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``).
            None: join the one ``RAY_ADDRESS`` or a ``ray start`` on this machine names, else start a local
            Ray for this pool (stopped by ``close``). A process already connected to Ray keeps its connection,
            whatever the address, and ``close`` leaves it connected.
        initializer: a picklable function each worker process calls once, before its first task of this pool.
        initargs: ``initializer``'s arguments.
        counters: how many counter slots the tasks share with this process (0: none).
        max_retries: how many times Ray runs a task again whose worker was lost, before ``result`` raises
            ``WorkerDied``.
        context: ignored (a local pool's ``multiprocessing`` context), so that both pools take the same arguments.

    Raises:
        RayNotInstalled: Ray is not installed.
    """

    same_filesystem = False  # workers may be on other machines

    def __init__(self, workers: int, address: str | None = None, initializer: Callable[..., None] | None = None,
                 initargs: tuple = (), counters: int = 0, max_retries: int = 3, context=None):
        ray = import_ray()
        self.workers, self.max_retries, self._ray = workers, max_retries, ray
        self._connected_here = not ray.is_initialized()
        if self._connected_here:
            # A local Ray's processes started here ignore a terminal's Ctrl-C, as local workers do: this process
            # stops them (close, kill).
            with children_ignore_sigint(), _sigterm_kept():
                ray.init(address=address)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < workers:
            warnings.warn(f"{workers} workers asked for, but the Ray cluster has {cpus:g} CPUs: at most "
                          f"{int(cpus)} tasks run at once", stacklevel=2)
        self._id = uuid.uuid4().hex
        self._init = (initializer, initargs)
        self._task = ray.remote(num_cpus=1, max_retries=max_retries)(_run_task)
        self._board = ray.remote(num_cpus=0)(_CounterBoard).remote(counters) if counters else None
        # Tasks submitted whose result was not read yet (kill cancels those unfinished). Read ones are dropped:
        # a reference held keeps its result in the object store.
        self._submitted: set = set()

    def submit_all(self, fn: Callable, calls: Iterable[Sequence]) -> list:
        """Run ``fn(*args)`` as a Ray task for each ``args`` of ``calls``; the handles, in order."""
        writer = _CounterWriter(self._board) if self._board is not None else None
        tasks = [self._task.remote(self._id, *self._init, writer, fn, tuple(args)) for args in calls]
        self._submitted.update(tasks)
        return tasks

    def wait(self, tasks: Iterable, timeout: float | None = None) -> tuple[set, set]:
        """Wait until one of ``tasks`` has finished (or failed), or ``timeout`` seconds have passed.

        Returns:
            The finished tasks and the unfinished ones, as two sets (the first empty after a timeout).
        """
        tasks = list(tasks)
        if not tasks:
            return set(), set()
        done, pending = self._ray.wait(tasks, num_returns=1, timeout=timeout)
        if done and pending:  # and every other one finished by now
            more, pending = self._ray.wait(pending, num_returns=len(pending), timeout=0)
            done += more
        return set(done), set(pending)

    def result(self, task) -> Any:
        """The return value of ``task``, waited for if it is still running.

        Raises:
            WorkerDied: the task's worker was lost more than ``max_retries`` times (or the task was cancelled).
            Exception: the task's own exception, raised again here (Ray's error with the worker's traceback
                is the ``__cause__``).
        """
        ray = self._ray
        self._submitted.discard(task)
        try:
            return ray.get(task)
        except ray.exceptions.TaskCancelledError as exc:  # also raised as a RayTaskError: caught first
            raise WorkerDied("its task was cancelled: the pool was stopped") from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, Exception) and not isinstance(exc.cause, ray.exceptions.RayError):
                raise exc.cause from exc
            raise WorkerDied(f"its task failed in Ray: {type(exc.cause).__name__}: {exc.cause}") from exc
        except ray.exceptions.RayError as exc:
            raise WorkerDied(self._lost(exc)) from exc

    def as_completed(self, tasks: Iterable, timeout: float | None = None) -> Iterator[tuple[Any, Any]]:
        """Each of ``tasks`` with its result, as it finishes (see ``WorkerPool.as_completed``).

        Raises:
            WorkerTimeout: some were unfinished after ``timeout`` seconds.
        """
        pending = list(tasks)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = self.wait(pending, timeout=left)
            if not done:
                raise WorkerTimeout(f"a worker did not finish within {timeout:g} s")
            for task in [t for t in pending if t in done]:
                yield task, self.result(task)
            pending = [t for t in pending if t not in done]

    def share_file(self, path: str | os.PathLike) -> RayFile:
        """Put the file at ``path`` into Ray's object store, once; the handle opens it in a worker
        (``wm_agent.workers.worker_file``) on any machine of the cluster."""
        ref = self._ray.put(Path(path).read_bytes())
        return RayFile(Path(path).name, ref.hex(), ref)

    def counters(self) -> list[int]:
        """What the tasks last sent into the counters (``set_counters``), slot by slot."""
        return list(self._ray.get(self._board.read.remote())) if self._board is not None else []

    def close(self) -> None:
        """Cancel the tasks not finished yet and let go of Ray: stop the local Ray this pool started, or
        disconnect from the cluster it joined (a connection the process had before stays). Closing a closed
        pool does nothing."""
        self._cancel(force=False)
        if self._board is not None:
            self._ray.kill(self._board)
            self._board = None
        if self._connected_here and self._ray.is_initialized():
            self._ray.shutdown()
        self._connected_here = False

    def kill(self, grace: float = 0.0) -> None:
        """Stop the running tasks now and close the pool.

        Args:
            grace: 0: kill their worker processes at once. More: interrupt the tasks first (a KeyboardInterrupt
                in each, which may clean up), and kill the workers of those still running ``grace`` seconds later.
        """
        if grace > 0 and self._submitted:
            self._cancel(force=False)
            self._ray.wait(list(self._submitted), num_returns=len(self._submitted), timeout=grace)
        self._cancel(force=True)
        self.close()

    # -- helpers ----------------------------------------------------------------------------------------
    def _cancel(self, force: bool) -> None:
        if not self._submitted or not self._ray.is_initialized():
            return
        _, unfinished = self._ray.wait(list(self._submitted), num_returns=len(self._submitted), timeout=0)
        for task in unfinished:
            try:
                self._ray.cancel(task, force=force)
            except self._ray.exceptions.RayError:  # finished meanwhile
                pass
        self._submitted = set(unfinished)

    def _lost(self, exc: Exception) -> str:
        """Why a task's worker was lost, in words: Ray's error type and the first line of its message."""
        ray = self._ray
        line = next((s for s in str(exc).splitlines() if s.strip()), "")
        hint = " (out of memory?)" if isinstance(exc, ray.exceptions.OutOfMemoryError) else ""
        return f"lost {self.max_retries + 1} times, Ray's retries spent: {type(exc).__name__}{hint}: {line}"
