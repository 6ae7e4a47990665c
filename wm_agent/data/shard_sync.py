"""The main process's side of finished shards: flush each one to disk, then list it in the manifest,
in batches on one background thread."""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from wm_agent.data.shards import SHARD_FILES


def _fsync_shard(folder: Path) -> None:
    """Flush a shard's files and its folder entry to disk (so the manifest never lists lost data)."""
    for path in [*(folder / f"{key}.npy" for key in SHARD_FILES), folder, folder.parent]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except (IsADirectoryError, PermissionError):  # folders cannot be opened on Windows
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ShardSyncer:
    """Flushes finished shards to disk and then hands them to ``record(entries)``, on one background
    thread, in batches: at most one ``record`` (a manifest rewrite) per ``interval`` seconds.

    Rewriting the manifest after every shard cost more CPU than the rollouts of small shards (with
    10 GridWorld episodes per shard it halved the collector's rate): the manifest is a listing for
    readers, and a resumed run finds finished shards by scanning the folder, so nothing is lost.
    """

    def __init__(self, out_dir: Path, record: Callable[[list[dict]], None], interval: float = 1.0):
        self._out_dir, self._record, self._interval = out_dir, record, interval
        self._queue: "queue.SimpleQueue[dict | None]" = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wm-agent-fsync", daemon=True)
        self._thread.start()

    def submit(self, entry: dict) -> None:
        self._queue.put(entry)

    def _run(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            batch = [] if first is None else [first]
            closing = first is None
            deadline = time.monotonic() + self._interval
            while not closing:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                else:
                    batch.append(item)
            if batch and self._error is None:
                try:
                    for entry in batch:
                        _fsync_shard(self._out_dir / entry["name"])
                    self._record(batch)
                except BaseException as exc:  # reported by close(); the shards stay on disk for a re-run  # noqa: BLE001
                    self._error = exc

    def close(self) -> BaseException | None:
        """Record every submitted shard; return the failure, if any."""
        self._queue.put(None)
        self._thread.join()
        return self._error
