"""How a shard stores its frames: each frame LZ4-compressed on its own, back to back in one file.

Files (both plain ``.npy``, read with ``allow_pickle=False``)::

    obs_lz4.npy      uint8 (total_bytes,): the frames, each one an LZ4 block (no size prefix)
    obs_offsets.npy  int64 (frames + 1,): frame k is obs_lz4[offsets[k] : offsets[k + 1]]

Why compressed: GridWorld frames are 12,288 bytes of flat colour; LZ4 takes them to ~200 bytes in
~3 us, less CPU than copying the raw frame into a large buffer costs, so two collector workers no
longer produce ~800 MB/s for a disk that sustains half that. Why one block per frame: training reads
random frames, and a frame must decompress without its neighbours (1.7 us each). The blob is
memory-mapped, so a dataset larger than RAM is read without loading it.
"""

from __future__ import annotations

import math
from pathlib import Path

import lz4.block
import numpy as np

__all__ = ["BLOB", "CODEC", "OFFSETS", "RECOLLECT", "CompressedFrames", "DiscardFrames", "FrameArray", "FrameWriter",
           "grown", "npy_header"]

CODEC = "lz4-block"
BLOB = "obs_lz4"  # file stems inside a shard folder
OFFSETS = "obs_offsets"
_HEADER_BYTES = 128  # room for a 1-D shape of any size; written last, when the size is known
_WRITE_BUFFER = 1 << 20
_UINT8 = np.dtype(np.uint8)
# How a damaged shard is mended: collect skips only shards that are whole, so it collects this one again.
RECOLLECT = "delete {shard} and re-run the `wm-agent collect` command that made its folder to collect it again"


def npy_header(shape: tuple[int, ...], dtype, size: int) -> bytes:
    """A version 1.0 ``.npy`` header for a C-ordered array, padded with spaces to ``size`` bytes
    (a multiple of 64, as the format asks)."""
    fields = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(v) for v in shape)}
    text = ("{" + "".join(f"{key!r}: {value!r}, " for key, value in fields.items()) + "}").encode("latin1")
    prefix = b"\x93NUMPY\x01\x00"
    pad = size - len(prefix) - 2 - len(text) - 1
    if size % 64 or pad < 0:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {size} bytes")
    return prefix + (size - len(prefix) - 2).to_bytes(2, "little") + text + b" " * pad + b"\n"


def grown(array: np.ndarray, needed: int) -> np.ndarray:
    """A copy of ``array`` with room for at least ``needed`` rows (at least twice as many)."""
    bigger = np.empty((max(needed, 2 * len(array)), *array.shape[1:]), array.dtype)
    bigger[: len(array)] = array
    return bigger


class DiscardFrames:
    """A frame sink that keeps nothing (a benchmark baseline, or a buffer whose sink is set per shard)."""

    def __init__(self, frame_shape: tuple[int, ...]):
        self.frame_shape = tuple(frame_shape)

    def append(self, frame) -> None:
        pass


class FrameArray:
    """Frames kept in memory in a growable uint8 array (for rollouts that are not written to disk)."""

    def __init__(self, frame_shape: tuple[int, ...], capacity: int = 1024):
        self.frame_shape = tuple(frame_shape)
        self._array = np.empty((max(int(capacity), 2), *self.frame_shape), np.uint8)
        self.count = 0

    def append(self, frame) -> None:
        if self.count == len(self._array):
            self._array = grown(self._array, self.count + 1)
        self._array[self.count] = frame
        self.count += 1

    def clear(self) -> None:
        self.count = 0

    @property
    def array(self) -> np.ndarray:
        return self._array[: self.count]


class FrameWriter:
    """Compresses frames one by one into ``folder/obs_lz4.npy`` while a rollout runs.

    Bytes go through a buffered file (a GridWorld worker writes ~6 MB/s, nothing a disk notices);
    ``finish()`` writes the offsets and the blob's ``.npy`` header. The caller makes the folder
    appear atomically (the collector renames a temporary shard folder).
    """

    def __init__(self, folder: str | Path, frame_shape: tuple[int, ...]):
        self.folder = Path(folder)
        self.frame_shape = tuple(frame_shape)
        self._file = open(self.folder / f"{BLOB}.npy", "wb", buffering=_WRITE_BUFFER)
        self._file.write(bytes(_HEADER_BYTES))
        self._sizes: list[int] = []  # compressed size of every frame
        # Bound once: append runs once per env step, where each attribute lookup shows.
        self._compress, self._write, self._record = lz4.block.compress, self._file.write, self._sizes.append

    @property
    def count(self) -> int:
        return len(self._sizes)

    def append(self, frame) -> None:
        try:  # the cheapest checks that catch a frame of the wrong kind
            ok = frame.dtype == _UINT8 and frame.shape == self.frame_shape
        except AttributeError:
            ok = False
        if not ok:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.shape != self.frame_shape:
                raise ValueError(f"expected a uint8 frame of shape {self.frame_shape}, got {frame.dtype} {frame.shape}")
        # Positional (mode, store_size): parsing them as keywords cost ~0.5 us a call, a sixth of the work.
        try:
            data = self._compress(frame, "default", False)
        except ValueError:  # a view that is not C-contiguous
            data = self._compress(np.ascontiguousarray(frame), "default", False)
        self._record(self._write(data))

    def finish(self) -> None:
        """Write the offsets file and the blob's header; the writer is closed afterwards."""
        offsets = np.zeros(len(self._sizes) + 1, np.int64)
        np.cumsum(self._sizes, out=offsets[1:])
        with open(self.folder / f"{OFFSETS}.npy", "wb") as f:
            np.save(f, offsets, allow_pickle=False)
        self._file.seek(0)
        self._file.write(npy_header((int(offsets[-1]),), np.uint8, _HEADER_BYTES))
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class CompressedFrames:
    """A shard's frames, decompressed on access.

    Indexes like a read-only ``(N, H, W, 3)`` uint8 array (an int, a slice or an integer array);
    each access returns a new array. Raises ``ValueError`` naming the file for a frame that does not
    decompress to exactly one frame.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, frame_shape: tuple[int, ...], path: Path):
        self._blob, self._offsets, self.path = blob, offsets, Path(path)
        self.frame_shape = tuple(frame_shape)
        self._frame_bytes = math.prod(self.frame_shape)

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.frame_shape)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            if not -len(self) <= key < len(self):
                raise IndexError(f"frame {key} out of range for {len(self)} frames")
            return self.read(np.array([int(key) % len(self)]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        indices = np.asarray(key)
        if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
            raise IndexError(f"frames are indexed by an int, a slice or a 1-D integer array, got {key!r}")
        return self.read(indices)

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Decompress the frames at ``indices`` (0 <= i < len) into ``out`` (a new array by default)."""
        indices = np.asarray(indices, np.int64)
        if out is None:
            out = np.empty((len(indices), *self.frame_shape), np.uint8)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"frame indices must lie in [0, {len(self)}), got {indices.min()}..{indices.max()}")
        flat = out.reshape(len(indices), self._frame_bytes)
        starts, ends = self._offsets[indices].tolist(), self._offsets[indices + 1].tolist()
        blob, size, decompress = self._blob, self._frame_bytes, lz4.block.decompress
        for k, (a, b) in enumerate(zip(starts, ends)):
            try:
                data = decompress(blob[a:b], uncompressed_size=size)
            except lz4.block.LZ4BlockError as exc:
                data = exc
            if isinstance(data, Exception) or len(data) != size:
                problem = data if isinstance(data, Exception) else f"it holds {len(data)} bytes, not {size}"
                raise ValueError(f"{self.path}: frame {indices[k]} is corrupt ({problem}); "
                                 f"{RECOLLECT.format(shard=self.path.parent)}")
            flat[k] = np.frombuffer(data, np.uint8)
        return out

    def release_pages(self) -> None:
        """Drop the blob's pages from this process's resident set (see EpisodeDataset.release_pages)."""
        import mmap

        mapping = getattr(self._blob, "_mmap", None)
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass
