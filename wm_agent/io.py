"""Atomic writes and safe reads: a crash never leaves a half-written file, a shared file never runs code."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: temporary folders are judged by their owner's pid alone
    fcntl = None

_LOCK = ".lock"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes.

    Args:
        path: the file to write.

    Returns:
        A context manager yielding the temporary path, whose name ends in ``path``'s own extension, for
        writers that pick the format from it (imageio).
    """
    path = Path(path)
    make_parent(path)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; datasets and checkpoints are meant to be shared
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _HeldFolder(tempfile.TemporaryDirectory):
    """A TemporaryDirectory whose owner holds an exclusive lock on ``.lock`` inside it while it lives:
    the lock, not the pid in its name, tells a later sweep that it is still in use (a pid means
    nothing to another PID namespace, such as a container that shares /tmp)."""

    def __init__(self, prefix: str):
        super().__init__(prefix=prefix)
        self._lock_fd = None
        if fcntl is not None:
            # Locked before it takes its name, so a sweep never finds an unlocked .lock in a live folder (one
            # between the folder's creation and the rename finds no .lock and leaves a young folder alone).
            # Many processes making folders at once (collection on Ray: one per shard) met that window.
            unnamed = os.path.join(self.name, f"{_LOCK}.{os.getpid()}")
            self._lock_fd = os.open(unnamed, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            os.rename(unnamed, os.path.join(self.name, _LOCK))

    def cleanup(self) -> None:
        # Removed while still locked: a sweep meanwhile finds the folder in use instead of removing it too.
        try:
            super().cleanup()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


def _abandoned(folder: Path, prefix: str) -> bool:
    """Whether ``folder`` is one of ours (this user's, named ``<prefix><pid>-...``) whose owner has gone."""
    try:
        st = folder.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return False  # a symlink, a file, or another user's: not ours to judge
    named = re.fullmatch(r"([0-9]{1,10})-.+", folder.name[len(prefix):], re.ASCII | re.DOTALL)
    if named is None or int(named.group(1)) == os.getpid():
        return False
    if fcntl is None:
        return not _alive(int(named.group(1)))
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR)
    except FileNotFoundError:  # made by an older version, or its owner is between mkdtemp and the lock
        return time.time() - st.st_mtime > 3600 and not _alive(int(named.group(1)))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its owner is alive
        return False
    finally:
        os.close(fd)
    return True


def temporary_folder(prefix: str) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` in the system's temp folder named ``<prefix><pid>-...``.

    This user's folders of the same prefix whose owner died without cleaning up (SIGKILL, a power cut) are
    removed first, so killed runs do not pile up copies of models or shards in /tmp.

    Args:
        prefix: the start of the folder's name.

    Returns:
        The temporary folder; its owner holds a lock in it while it lives.
    """
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{prefix}*"):
        if _abandoned(old, prefix):
            shutil.rmtree(old, ignore_errors=True)
    return _HeldFolder(prefix=f"{prefix}{os.getpid()}-")


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents).

    Args:
        folder: the folder to create; it may exist already.

    Raises:
        NotADirectoryError: a clear error when a file stands where a folder goes.
    """
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"cannot create the folder {folder}: part of its path is a file") from None


def make_parent(path: Path) -> None:
    """Create the folder ``path`` goes in.

    Args:
        path: a file path.

    Raises:
        IsADirectoryError: when ``path`` is a folder.
        NotADirectoryError: when a file stands in the way of its folders.
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file path")
    try:
        make_folder(path.parent)
    except NotADirectoryError:
        raise NotADirectoryError(f"cannot write {path}: part of its folder path is a file") from None


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of earlier writes to ``path`` whose writer died (SIGKILL leaves them)."""
    # ".tmp" alone: the name earlier versions gave their temporary files
    for tmp in [*path.parent.glob(f".{path.name}.*.tmp{path.suffix}"), *path.parent.glob(f".{path.name}.*.tmp")]:
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Sentences of torch's and numpy's load errors that advise loading the file anyway (switching their safe
# loading off, or allow-listing its globals): a file this project refused must not come with that advice.
_UNSAFE_ADVICE = ("can still be loaded", "trust", "set to `false`", "load it unsafely", "please file an issue",
                  "arbitrary code", "do it only if", "check the documentation", "in pytorch 2.6", "alternatively",
                  "torch.serialization", "allowlist")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_error_reason(exc: BaseException) -> str:
    """What went wrong reading a file, in one line.

    Args:
        exc: the error torch's or numpy's loading raised.

    Returns:
        The error's type and message (at most 400 characters of it), without the libraries' advice to
        load the file unsafely.
    """
    text = _ANSI.sub("", str(exc))
    sentences = (part.strip() for line in text.splitlines() for part in re.split(r"(?<=\.)\s+", line))
    kept = [s for s in sentences if s and not any(advice in s.lower() for advice in _UNSAFE_ADVICE)]
    reason = " ".join(kept).removesuffix(":").strip()
    return f"{type(exc).__name__}: {reason[:400]}" if reason else type(exc).__name__


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and a rename.

    Args:
        obj: what to save.
        path: the file to write.
    """
    import torch  # lazily: collector workers import this module and must not pay torch's import time

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem.

    Args:
        path: the file to read (loaded onto the CPU).
        what: what the file is, as the errors name it.

    Returns:
        The loaded object.

    Raises:
        IsADirectoryError: when ``path`` is a folder.
        FileNotFoundError: when it does not exist.
        ValueError: when it is truncated, corrupt, or needs code to run to load.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what} file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (zip), EOFError ...
        raise ValueError(
            f"cannot read {what} {path}: it is truncated, corrupt, or not a weights-only torch file "
            f"(files that need code to run to load are refused): {load_error_reason(exc)}"
        ) from exc


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON (indented, keys sorted) through a temporary file and a rename.

    Args:
        obj: what to save (JSON-serialisable).
        path: the file to write.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_npy(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Load a ``.npy`` with an error that names the file.

    Args:
        path: the ``.npy`` file.
        mmap: memory-map it (read-only) instead of reading it into memory.

    Returns:
        The array.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when it is corrupt or truncated, or holds pickled data (refused).
    """
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing data file: {path}") from None
    except Exception as exc:
        raise ValueError(f"corrupt or truncated data file {path} (pickled data is refused): "
                         f"{load_error_reason(exc)}") from exc
