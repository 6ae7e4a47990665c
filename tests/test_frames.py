"""Frame storage: LZ4 frames written one by one, read back by index, damage named."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from wm_agent.data.frames import BLOB, OFFSETS, CompressedFrames, FrameArray, FrameWriter


def _write(folder, frames: np.ndarray) -> CompressedFrames:
    writer = FrameWriter(folder, frames.shape[1:])
    for frame in frames:
        writer.append(frame)
    assert writer.count == len(frames)
    writer.finish()
    blob = np.load(folder / f"{BLOB}.npy", mmap_mode="r", allow_pickle=False)
    offsets = np.load(folder / f"{OFFSETS}.npy", allow_pickle=False)
    return CompressedFrames(blob, offsets, frames.shape[1:], folder / f"{BLOB}.npy")


def _frames(rng: np.random.Generator, n: int, shape=(64, 64, 3)) -> np.ndarray:
    """Flat-colour blocks (compressible, like GridWorld) with some noise frames (incompressible)."""
    frames = np.repeat(np.repeat(rng.integers(0, 256, (n, shape[0] // 8 or 1, shape[1] // 8 or 1, 3),
                                              dtype=np.uint8), 8, axis=1), 8, axis=2)[:, : shape[0], : shape[1]]
    frames = np.ascontiguousarray(np.broadcast_to(frames, (n, *shape)) if frames.shape[1:] != shape else frames)
    frames[::5] = rng.integers(0, 256, (len(frames[::5]), *shape), dtype=np.uint8)
    return frames


@pytest.mark.parametrize("shape", [(64, 64, 3), (8, 16, 3), (96, 96, 3)])
@pytest.mark.parametrize("n", [1, 2, 17])
def test_written_frames_read_back_exactly(tmp_path, shape, n):
    frames = _frames(np.random.default_rng(n), n, shape)
    stored = _write(tmp_path, frames)
    assert stored.shape == frames.shape and stored.dtype == np.uint8 and len(stored) == n
    np.testing.assert_array_equal(stored[:], frames)
    np.testing.assert_array_equal(stored[n - 1], frames[n - 1])
    np.testing.assert_array_equal(stored[-1], frames[-1])
    order = np.random.default_rng(0).integers(0, n, 3 * n)
    np.testing.assert_array_equal(stored[order], frames[order])
    np.testing.assert_array_equal(stored[1::2], frames[1::2])
    # Both files are plain .npy: numpy maps them without this module.
    offsets = np.load(tmp_path / f"{OFFSETS}.npy", allow_pickle=False)
    assert offsets.dtype == np.int64 and offsets[0] == 0 and len(offsets) == n + 1
    assert np.load(tmp_path / f"{BLOB}.npy", mmap_mode="r").shape == (offsets[-1],)


def test_flat_frames_are_stored_small(tmp_path):
    frames = np.zeros((50, 64, 64, 3), np.uint8)
    frames[:, 8:16, 8:16] = (200, 40, 40)
    _write(tmp_path, frames)
    assert (tmp_path / f"{BLOB}.npy").stat().st_size < 50 * 12_288 / 20


def test_views_are_stored_like_arrays(tmp_path):
    base = _frames(np.random.default_rng(1), 4, (64, 128, 3))
    views = base[:, :, ::2]  # not C-contiguous
    writer = FrameWriter(tmp_path, (64, 64, 3))
    for view in views:
        writer.append(view)
    writer.finish()
    stored = CompressedFrames(np.load(tmp_path / f"{BLOB}.npy"), np.load(tmp_path / f"{OFFSETS}.npy"), (64, 64, 3),
                              tmp_path)
    np.testing.assert_array_equal(stored[:], views)


@pytest.mark.parametrize("frame", [np.zeros((64, 64, 3), np.float32), np.zeros((64, 64), np.uint8),
                                   np.zeros((32, 64, 3), np.uint8)])
def test_a_frame_of_the_wrong_kind_is_refused(tmp_path, frame):
    writer = FrameWriter(tmp_path, (64, 64, 3))
    with pytest.raises(ValueError, match=r"expected a uint8 frame of shape \(64, 64, 3\)"):
        writer.append(frame)
    writer.close()


def test_bad_indices_are_refused(tmp_path):
    stored = _write(tmp_path, _frames(np.random.default_rng(2), 3))
    for bad in (3, -4):
        with pytest.raises(IndexError, match="out of range"):
            stored[bad]
    with pytest.raises(IndexError, match=r"must lie in \[0, 3\)"):
        stored[np.array([0, 3])]
    with pytest.raises(IndexError, match="1-D integer array"):
        stored[np.array([0.5])]


def test_a_block_that_decompresses_to_the_wrong_size_is_named(tmp_path):
    frames = _frames(np.random.default_rng(3), 3)
    _write(tmp_path, frames)
    blob = np.load(tmp_path / f"{BLOB}.npy")
    offsets = np.load(tmp_path / f"{OFFSETS}.npy")
    # Read with a smaller frame shape: frame 1's block holds more bytes than such a frame.
    small = CompressedFrames(blob, offsets, (32, 64, 3), tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"x\.npy: frame 1 is corrupt"):
        small.read(np.array([1]))


def test_frame_array_grows_and_clears():
    frames = _frames(np.random.default_rng(4), 5)
    store = FrameArray((64, 64, 3), capacity=2)
    for frame in frames:
        store.append(frame)
    np.testing.assert_array_equal(store.array, frames)
    store.clear()
    assert store.array.shape == (0, 64, 64, 3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_pages_drops_the_read_frames_from_the_resident_set(tmp_path):
    """Reading a whole dataset once must not leave it counted in this process's RSS."""
    frames = np.random.default_rng(5).integers(0, 256, (3000, 64, 64, 3), dtype=np.uint8)  # incompressible
    stored = _write(tmp_path, frames)
    del frames

    def rss_file_mb() -> float:
        return int(Path("/proc/self/status").read_text().split("RssFile:")[1].split()[0]) / 1024

    before = rss_file_mb()
    for start in range(0, len(stored), 500):
        stored[start : start + 500]
    blob_mb = (tmp_path / f"{BLOB}.npy").stat().st_size / 2**20
    assert rss_file_mb() - before > 0.5 * blob_mb  # the reads did map the file in
    stored.release_pages()
    assert rss_file_mb() - before < 0.2 * blob_mb
