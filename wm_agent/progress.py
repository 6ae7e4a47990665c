"""Progress bars (tqdm) that leave the program's multiprocessing start method unchosen.

tqdm creates its cross-process lock the first time any bar is made, disabled or not, with
``multiprocessing.RLock()``, and that call fixes the default start method for the rest of the program:
a user who runs ``wm-agent``'s API and then calls ``multiprocessing.set_start_method("spawn")`` would get
"context has already been set". Creating that lock ourselves from the ``spawn`` context does not fix
the default, and tqdm uses the lock it finds; a spawn lock (unlike a fork one) can also be handed to
workers of any start method, as ``tqdm.contrib.concurrent.process_map`` does. In wm-agent's own worker
processes no lock is made at all (see ``_lock_without_fixing_start_method``). Starting worker processes
fixes the default too: ``wm_agent.workers.starting_workers`` undoes that.
"""

from __future__ import annotations

import multiprocessing as mp

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def _lock_without_fixing_start_method() -> None:
    from tqdm.std import TqdmDefaultWriteLock

    if hasattr(TqdmDefaultWriteLock, "mp_lock"):
        return
    if mp.parent_process() is not None:
        # A worker process (wm-agent's workers only ever make disabled bars): a semaphore made here stays
        # registered when the worker is killed (Ctrl-C, a timeout), and Python warned of "leaked
        # semaphore objects" after the run. tqdm does without a cross-process lock when it has none.
        TqdmDefaultWriteLock.mp_lock = None
        return
    method = "spawn" if "spawn" in mp.get_all_start_methods() else mp.get_all_start_methods()[0]
    try:
        TqdmDefaultWriteLock.mp_lock = mp.get_context(method).RLock()
    except (ImportError, OSError):  # no working semaphores here: tqdm then does without one as well
        TqdmDefaultWriteLock.mp_lock = None


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` (the notebook widget in Jupyter), without fixing the start method."""
    _lock_without_fixing_start_method()
    return tqdm(iterable, **kwargs)
