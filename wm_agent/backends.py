"""Where a job's tasks run: ``--backend local`` (worker processes on this machine, ``WorkerPool``) or
``--backend ray`` (a Ray cluster, ``wm_agent.ray_pool.RayPool``), both behind one interface
(``wm_agent.workers.Pool``); ``make_pool`` makes the one asked for. Ray is imported only for ``ray``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from wm_agent.workers import Pool, WorkerPool

__all__ = ["BACKENDS", "Backend", "make_pool"]

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = get_args(Backend)

# The command-line help of the --backend and --ray-address options, the same in every command that has them.
BACKEND_HELP = ("where the worker tasks run: local (processes on this machine) or ray (a Ray cluster; needs "
                'pip install "wm-agent[ray]"). Same results either way')
RAY_ADDRESS_HELP = ("with --backend ray: the cluster to join: auto, HOST:6379 or ray://HOST:10001, or local for a "
                    "new local Ray (default: RAY_ADDRESS, or a `ray start` cluster on this machine, else a local Ray "
                    "started for this run)")


def make_pool(backend: str, workers: int, *, address: str | None = None, context=None,
              initializer: Callable[..., None] | None = None, initargs: tuple = (), counters: int = 0) -> Pool:
    """A worker pool of the ``backend`` asked for.

    Args:
        backend: ``"local"`` (``WorkerPool``) or ``"ray"`` (``RayPool``).
        workers: the most tasks run at once (local processes; Ray: what the callers submit at once).
        address: the Ray cluster to join (see ``RayPool``); ignored by the local backend.
        context: the local pool's ``multiprocessing`` context (None: ``spawn``); ignored by Ray.
        initializer: a picklable function each worker process calls once, before its first task.
        initargs: ``initializer``'s arguments.
        counters: int64 slots the tasks write their progress into (``wm_agent.workers.set_counters``).

    Raises:
        ValueError: an unknown backend.
        RayNotInstalled: ``"ray"`` without Ray installed (the message names the extra to install).
    """
    if backend == "local":
        return WorkerPool(workers, context, initializer=initializer, initargs=initargs, counters=counters)
    if backend == "ray":
        from wm_agent.ray_pool import RayPool

        return RayPool(workers, address, initializer=initializer, initargs=initargs, counters=counters)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
