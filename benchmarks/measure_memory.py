#!/usr/bin/env python
"""Peak memory of training on a large dataset: does wm-agent scale without exhausting RAM?

1. Writes N synthetic GridWorld-like frames (default 1,000,000 = 12.3 GB raw, ~0.2 GB as stored)
   straight into the collector's shard format (LZ4 frames in ``shard_XXXXX/obs_lz4.npy`` +
   ``obs_offsets.npy``, actions/rewards/terminated/truncated/lengths and a ``manifest.json``; see
   ``wm_agent/data/shards.py``) with the collector's own ``FrameWriter``, one episode in memory at a time.
   Free disk space is checked first.
2. In a fresh child process: opens it as ``EpisodeDataset`` and trains the VQ-VAE (``fit_vae`` over
   ``iter_frame_batches``, random batches across all shards) for ``--batches`` batches. Another child
   reads one whole epoch of random batches (what ``train-vae`` reads per epoch) without a model, to
   see the data path alone at full scale (skip it with ``--no-read-epoch``).
3. In another child: the MDN-RNN's data path. ``encode_dataset`` runs the VAE over every frame, which
   for 1M frames takes many minutes on a CPU, so it runs over the first ``--rnn-frames`` frames (whole
   episodes; 0 = all). ``sequence_windows`` then runs at FULL scale, on a code array of the full
   dataset's size (its memory depends on the sizes, not on the code values), followed by
   ``--rnn-batches`` MDN-RNN training steps.
4. Prints one JSON object with, per child: peak RSS (``VmHWM`` and ``ru_maxrss``), peak anonymous RSS
   (sampled every 20 ms: the private memory that can actually exhaust RAM; the rest of RSS is clean
   page cache of the memory-mapped shards, which the kernel reclaims under pressure), the RSS after
   imports, and timings. Deletes the generated data unless ``--keep``.

Usage::

    python benchmarks/measure_memory.py                      # 1M frames, 200 VAE batches, 20k RNN frames
    python benchmarks/measure_memory.py --frames 50000 --batches 20 --json-out mem.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable from a clone

FRAME_SHAPE = (64, 64, 3)
FRAME_BYTES = int(np.prod(FRAME_SHAPE))
GRID, CELL = 8, 8
BACKGROUND, OBSTACLE, GOAL, AGENT = (16, 16, 16), (128, 128, 128), (40, 200, 60), (230, 50, 40)
MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])


# ------------------------------------------------------------------------------------------------
# 1. Synthetic data in the collector's format
# ------------------------------------------------------------------------------------------------
def _episode(rng: np.random.Generator, steps: int, out: np.ndarray) -> np.ndarray:
    """Draw one GridWorld-like episode (``steps + 1`` frames) into ``out``; returns its actions."""
    cells = rng.choice(GRID * GRID, size=2 + int(rng.integers(3, 7)), replace=False)
    base = np.empty(FRAME_SHAPE, np.uint8)
    base[:] = BACKGROUND
    view = base.reshape(GRID, CELL, GRID, CELL, 3)
    for cell in cells[2:]:
        view[cell // GRID, :, cell % GRID] = OBSTACLE
    view[cells[1] // GRID, :, cells[1] % GRID] = GOAL
    actions = rng.integers(0, 4, size=steps)
    pos = np.cumsum(np.vstack([[divmod(int(cells[0]), GRID)], MOVES[actions]]), axis=0).clip(0, GRID - 1)
    out[:] = base
    frames = out.reshape(steps + 1, GRID, CELL, GRID, CELL, 3)
    frames[np.arange(steps + 1), pos[:, 0], :, pos[:, 1]] = AGENT
    return actions


def generate(root: Path, frames: int, episode_steps: int, episodes_per_shard: int, seed: int) -> dict:
    """Write ``frames`` frames (episodes of ``episode_steps`` steps; the last may be shorter)."""
    from wm_agent.data.frames import CODEC, FrameWriter
    from wm_agent.data.shards import MANIFEST, MANIFEST_FORMAT, shard_name

    per_episode = episode_steps + 1
    lengths_all = [episode_steps] * (frames // per_episode)
    if frames % per_episode >= 2:
        lengths_all.append(frames % per_episode - 1)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    for index in range(math.ceil(len(lengths_all) / episodes_per_shard)):
        lengths = np.array(lengths_all[index * episodes_per_shard : (index + 1) * episodes_per_shard], np.int64)
        steps, n_frames = int(lengths.sum()), int(lengths.sum() + len(lengths))
        folder = root / shard_name(index)
        folder.mkdir(exist_ok=True)
        writer = FrameWriter(folder, FRAME_SHAPE)
        episode = np.empty((episode_steps + 1, *FRAME_SHAPE), np.uint8)
        actions = np.empty(steps, np.int64)
        s = 0
        for length in lengths:
            actions[s : s + length] = _episode(rng, int(length), episode[: length + 1])
            for frame in episode[: length + 1]:
                writer.append(frame)
            s += length
        writer.finish()
        rewards = np.full(steps, -0.01, np.float32)
        truncated = np.zeros(steps, bool)
        truncated[np.cumsum(lengths) - 1] = True
        for key, array in (("actions", actions), ("rewards", rewards), ("terminated", np.zeros(steps, bool)),
                           ("truncated", truncated), ("lengths", lengths)):
            np.save(folder / f"{key}.npy", array, allow_pickle=False)
        shards.append({"name": folder.name, "episodes": len(lengths), "frames": n_frames, "steps": steps})
    manifest = {
        "format": MANIFEST_FORMAT, "frame_codec": CODEC, "env_id": "WM-GridWorld-v0", "env_kwargs": {},
        "policy": "random", "seed": seed, "episodes_per_shard": episodes_per_shard, "max_steps": None,
        "observation_shape": list(FRAME_SHAPE), "observation_dtype": "uint8",
        "action_space": {"type": "discrete", "n": 4, "start": 0}, "shards": shards,
        "episodes": sum(s["episodes"] for s in shards), "frames": sum(s["frames"] for s in shards),
        "steps": sum(s["steps"] for s in shards), "synthetic": True,
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------------
# 2./3. The measured children
# ------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


class PeakSampler:
    """Samples /proc/self/status every ``interval`` s: peak RssAnon (private) and peak RssFile."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak_anon, self.peak_file = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
        self.peak_file = max(self.peak_file, _status_kb("RssFile"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def child(args: argparse.Namespace) -> dict:
    import itertools

    import torch

    from wm_agent.config import WorldModelConfig
    from wm_agent.commands.train import encode_dataset
    from wm_agent.data.dataset import EpisodeDataset
    from wm_agent.training.fit import sequence_batches_from_arrays, sequence_windows
    from wm_agent.world_model import WorldModel

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"phase": args.child, "rss_after_imports_mb": _mb(_status_kb("VmRSS")),
              "torch_threads": torch.get_num_threads()}
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        ds = EpisodeDataset(args.data)
        report.update(dataset_frames=ds.num_frames, dataset_shards=len(ds.manifest["shards"]),
                      open_seconds=round(time.perf_counter() - t0, 2), rss_after_open_mb=_mb(_status_kb("VmRSS")))
        torch.manual_seed(0)
        wm = WorldModel(WorldModelConfig.gridworld(), ds.env_id) if args.child != "read" else None
        if args.child == "read":
            t0 = time.perf_counter()
            n = 0
            for batch in ds.iter_frame_batches(args.batch_size, np.random.default_rng(0)):
                n += len(batch)
            seconds = time.perf_counter() - t0
            report.update(read_frames=n, read_seconds=round(seconds, 1), read_frames_per_s=round(n / seconds),
                          rss_after_read_mb=_mb(_status_kb("VmRSS")))
        elif args.child == "vae":
            t0 = time.perf_counter()
            history = wm.fit_vae(
                lambda rng: itertools.islice(ds.iter_frame_batches(args.batch_size, rng), args.batches),
                epochs=1, progress=False)
            seconds = time.perf_counter() - t0
            report.update(vae_batches=args.batches, batch_size=args.batch_size, vae_images=history[0]["images"],
                          vae_seconds=round(seconds, 1), vae_images_per_s=round(history[0]["images"] / seconds, 1),
                          vae_recon_mse=round(history[0]["recon_mse"], 5))
        else:
            # encode_dataset on whole episodes holding the first --rnn-frames frames (0 = all).
            if args.rnn_frames and args.rnn_frames < ds.num_frames:
                n_eps = int(np.searchsorted(ds.frame_offsets + ds.lengths + 1, args.rnn_frames, side="right"))
                part = ds.subset(np.arange(max(n_eps, 1)))
            else:
                part = ds
            t0 = time.perf_counter()
            codes = encode_dataset(wm, part, progress=False)
            report.update(encode_frames=part.num_frames, encode_seconds=round(time.perf_counter() - t0, 1),
                          rss_after_encode_mb=_mb(_status_kb("VmRSS")))
            sampler.sample()
            win_codes, arrays = sequence_windows(part, codes, args.seq_len)
            # Full scale: the windows of the whole dataset (codes of the right size; values do not matter).
            if part is not ds:
                full_codes = np.zeros((ds.num_frames, *codes.shape[1:]), codes.dtype)
                full_codes[: len(codes)] = codes
                t0 = time.perf_counter()
                win_codes, arrays = sequence_windows(ds, full_codes, args.seq_len)
                report["full_windows_seconds"] = round(time.perf_counter() - t0, 1)
            window_bytes = win_codes.nbytes + sum(a.nbytes for a in arrays.values())
            report.update(windows=int(win_codes.shape[0]), seq_len=args.seq_len,
                          window_arrays_mb=round(window_bytes / 2**20, 1),
                          rss_after_windows_mb=_mb(_status_kb("VmRSS")))
            wm.train_state["vae"] = {"epoch": 1}
            t0 = time.perf_counter()
            wm.fit_rnn(lambda rng: itertools.islice(
                sequence_batches_from_arrays(win_codes, arrays, args.rnn_batch_size, rng), args.rnn_batches),
                epochs=1, progress=False)
            report.update(rnn_batches=args.rnn_batches, rnn_seconds=round(time.perf_counter() - t0, 1))
    report.update(
        peak_rss_vmhwm_mb=_mb(_status_kb("VmHWM")),
        peak_rss_ru_maxrss_mb=_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        peak_rss_anon_mb=_mb(sampler.peak_anon), peak_rss_file_mb=_mb(sampler.peak_file),
    )
    return report


def run_child(phase: str, args: argparse.Namespace, data: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--data", str(data),
           "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--rnn-frames", str(args.rnn_frames),
           "--rnn-batches", str(args.rnn_batches), "--rnn-batch-size", str(args.rnn_batch_size),
           "--seq-len", str(args.seq_len), "--threads", str(args.threads)]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the {phase} child failed (exit status {result.returncode}):\n{result.stderr}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", type=int, default=1_000_000, help="frames to generate")
    parser.add_argument("--out", type=Path, default=None, help="data folder; unset: a new folder in $TMPDIR")
    parser.add_argument("--episode-steps", type=int, default=49, help="steps per synthetic episode (GridWorld: <= 50)")
    parser.add_argument("--episodes-per-shard", type=int, default=10,
                        help="as `wm-agent collect --episodes-per-shard` (docs/benchmarks.md's figures: 10; the "
                             "collector's default for 50-step episodes is 98)")
    parser.add_argument("--batches", type=int, default=200, help="VQ-VAE training batches")
    parser.add_argument("--batch-size", type=int, default=128, help="VQ-VAE batch size (train-vae's default)")
    parser.add_argument("--rnn-frames", type=int, default=20_000, help="frames encode_dataset runs over (0 = all)")
    parser.add_argument("--rnn-batches", type=int, default=20, help="MDN-RNN training batches after the windows")
    parser.add_argument("--rnn-batch-size", type=int, default=16, help="MDN-RNN batch size")
    parser.add_argument("--seq-len", type=int, default=50, help="MDN-RNN window length (train-rnn's default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the children (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic episodes")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--reuse", action="store_true", help="measure an existing --out folder; generate nothing")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--no-read-epoch", action="store_true", help="skip reading one whole epoch of batches")
    parser.add_argument("--child", choices=["read", "vae", "rnn"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args)))
        return 0

    made_here = args.out is None
    root = args.out or Path(tempfile.mkdtemp(prefix="wm-agent-memory-"))
    report: dict = {"frames_requested": args.frames, "data": str(root)}
    try:
        if not args.reuse:
            # Frames as if incompressible (an upper bound: stored, these are ~60x smaller) + 1 GiB to spare.
            need = args.frames * FRAME_BYTES * 1.01 + 2**30
            free = shutil.disk_usage(root if root.exists() else root.parent).free
            report.update(disk_needed_gb=round(need / 1e9, 2), disk_free_gb=round(free / 1e9, 2))
            if free < need:
                print(json.dumps(report, indent=2))
                print(f"not enough free disk at {root}: need {need / 1e9:.1f} GB, have {free / 1e9:.1f} GB; "
                      f"use --frames or --out", file=sys.stderr)
                return 1
            t0 = time.perf_counter()
            manifest = generate(root, args.frames, args.episode_steps, args.episodes_per_shard, args.seed)
            report.update(frames=manifest["frames"], episodes=manifest["episodes"], shards=len(manifest["shards"]),
                          data_gb=round(manifest["frames"] * FRAME_BYTES / 1e9, 2),
                          stored_gb=round(sum(p.stat().st_size for p in root.glob("shard_*/*")) / 1e9, 3),
                          generate_seconds=round(time.perf_counter() - t0, 1),
                          generator_peak_rss_mb=_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            print(f"generated {manifest['frames']:,} frames in {len(manifest['shards'])} shards "
                  f"({report['generate_seconds']} s)", file=sys.stderr)
        report["machine_ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        for phase in ("vae", "rnn") if args.no_read_epoch else ("read", "vae", "rnn"):
            report[phase] = run_child(phase, args, root)
            print(f"{phase}: peak RSS {report[phase]['peak_rss_vmhwm_mb']} MB "
                  f"(anonymous {report[phase]['peak_rss_anon_mb']} MB)", file=sys.stderr)
    finally:
        if not args.keep and not args.reuse and root.exists():
            if made_here:
                shutil.rmtree(root)
            else:  # a folder the user named: remove only what was written into it
                for shard in root.glob("shard_*"):
                    shutil.rmtree(shard)
                (root / "manifest.json").unlink(missing_ok=True)
    print(json.dumps(report, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
