#!/usr/bin/env python
"""The collector's frame rate by shard size: every shard costs file creation (seven files and a folder)
whatever it holds, so small shards of short episodes spend much of their time on it.

Collects the same episodes into a fresh temporary folder once per size and run, the sizes in an order
that alternates between runs (a shared machine speeds up and slows down), and prints each run and the
median frames/s per size as JSON. Size 0 is the collector's default (``episodes_per_shard=None``: at
least 10, ~5,000 frames' worth at the env's episode limit).

Usage::

    python benchmarks/measure_shard_size.py --episodes 8000 --workers 2 --runs 6 --sizes 0 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import _root  # noqa: F401  (this clone's wm_agent and envs are the ones measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="WM-GridWorld-v0", help="Gymnasium env id with 64x64x3 uint8 frames")
    parser.add_argument("--episodes", type=int, default=8000, help="episodes collected per run")
    parser.add_argument("--workers", type=int, default=2, help="collector worker processes")
    parser.add_argument("--runs", type=int, default=6, help="runs of every size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 10],
                        help="episodes per shard to compare (0: the collector's default)")
    args = parser.parse_args()
    if args.episodes < 1 or args.workers < 1 or args.runs < 1 or min(args.sizes) < 0:
        parser.error("--episodes, --workers and --runs must be >= 1, and --sizes >= 0")

    import wm_agent.io  # noqa: F401  (what the collector's manifest writes import: not on the clock)
    from wm_agent import DataCollector
    from wm_agent.io import temporary_folder

    if args.workers > 1:  # start the forkserver untimed, or the first run alone would pay for it
        with temporary_folder("wm-agent-shards-") as folder:
            DataCollector(args.env, folder, workers=args.workers, episodes_per_shard=1).collect(args.workers,
                                                                                              progress=False)
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    runs = []
    for k in range(args.runs):
        for size in (args.sizes if k % 2 == 0 else args.sizes[::-1]):
            with temporary_folder("wm-agent-shards-") as folder:
                collector = DataCollector(args.env, folder, workers=args.workers, episodes_per_shard=size or None)
                start = time.perf_counter()
                manifest = collector.collect(args.episodes, progress=False)
                seconds = time.perf_counter() - start
            rate = manifest["frames"] / seconds
            rates[size].append(rate)
            runs.append({"episodes_per_shard": collector.episodes_per_shard, "shards": len(manifest["shards"]),
                         "frames": manifest["frames"], "seconds": round(seconds, 3), "frames_per_s": round(rate)})
    print(json.dumps({
        "env": args.env, "episodes": args.episodes, "workers": args.workers, "runs": runs,
        "median_frames_per_s": {str(size): round(statistics.median(v)) for size, v in rates.items()},
        "range_frames_per_s": {str(size): [round(min(v)), round(max(v))] for size, v in rates.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
