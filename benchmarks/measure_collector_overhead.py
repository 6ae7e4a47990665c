#!/usr/bin/env python
"""What storing frames costs one collector worker: the rollout loop with frames dropped vs LZ4-compressed.

The collector's ratio is measured against one env running the same loop with its frames dropped
(``wm-agent benchmark collect``), so a worker can reach at most ``dropped / compressed`` of that rate
before any parallel effect. Two measurements of that share, one process, one core:

- time: the collector's own loop (``run_episodes`` into an ``EpisodeBuffer``, the env made with
  ``gym.make``, the random data policy) in short alternating runs, frames dropped, written by the
  shards' ``FrameWriter``, or only copied once into a reused array (the least any frame store must do:
  its ratio bounds what even a free codec could reach); the median over pairs of each pair's speed
  ratio, so a machine that speeds up or slows down moves both halves of a pair alike;
- instructions (with ``--instructions``, needs valgrind): the same loop under valgrind's cachegrind at
  two episode counts, the difference divided by the difference in frames so start-up cancels out.
  Instruction counts do not drift with the machine's load the way times do on a shared VM.

With ``--scaling R`` it also measures the other factor, the machine's: R rounds of one process
running the frames-dropped loop alone, ``--workers`` processes running it at the same time (started
together at a barrier, each timing its own loop), and ``--workers`` processes running the LZ4 loop at
once. ``scaling``: median over rounds of (mean rate of a process among several) / (rate of one alone);
``together_lz4_over_alone``: the same for the LZ4 loops, i.e. the collector's ratio without its
process pool, shard files or start-up.

Usage::

    python benchmarks/measure_collector_overhead.py --pairs 100 --instructions --scaling 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _root  # noqa: F401  (this clone's wm_agent and envs are the ones measured)


class _CopyOnce:
    """A frame sink that copies each frame into one reused array: the least work any frame store does
    (every byte read once, nothing kept), so ``dropped / copy`` bounds what even a free codec could reach."""

    def __init__(self, frame_shape: tuple[int, ...]):
        import numpy as np

        self.frame_shape = tuple(frame_shape)
        self._slot = np.empty(self.frame_shape, np.uint8)
        self._copy = np.copyto

    def append(self, frame) -> None:
        self._copy(self._slot, frame)


KINDS = ("dropped", "copy", "lz4")


def _run(loop, kind: str, episodes: int, folder: str) -> tuple[int, float]:
    """The next ``episodes`` episodes of ``loop`` (a ``wm_agent.commands.benchmark.RolloutLoop``), frames dropped,
    copied once (``_CopyOnce``) or written as a shard writes them: (frames, seconds)."""
    from wm_agent.data.frames import FrameWriter

    writer = (FrameWriter(folder, loop.frame_shape) if kind == "lz4"
              else _CopyOnce(loop.frame_shape) if kind == "copy" else None)
    start = time.perf_counter()
    loop.run(episodes, frames=writer)
    seconds = time.perf_counter() - start
    if kind == "lz4":
        writer.finish()
    return loop.buffer.num_frames, seconds


def _loop(env_id: str, first_episode: int = 0, episodes_per_run: int = 100):
    from wm_agent.commands.benchmark import RolloutLoop

    loop = RolloutLoop(env_id, buffer_episodes=episodes_per_run)
    loop.episodes = first_episode  # a process of --scaling starts at its own episodes
    return loop


def _child(env_id: str, kind: str, episodes: int) -> None:
    """One run for cachegrind: print the frame count."""
    with tempfile.TemporaryDirectory() as tmp:
        print(_run(_loop(env_id, episodes_per_run=episodes), kind, episodes, tmp)[0])


def _timed_pairs(env_id: str, pairs: int, episodes: int) -> dict:
    """Median per-frame microseconds of each variant, and the median over pairs of dropped / compressed
    and dropped / copied time (each "pair" runs all three kinds, in an order that alternates)."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        loop = _loop(env_id, episodes_per_run=episodes)
        for k in range(pairs):
            for kind in (KINDS if k % 2 else KINDS[::-1]):
                frames, seconds = _run(loop, kind, episodes, tmp)
                times[kind].append(seconds / frames * 1e6)
    result = {f"us_per_frame_{kind}": round(statistics.median(times[kind]), 2) for kind in KINDS}
    for kind in ("lz4", "copy"):
        ratios = [d / c for d, c in zip(times["dropped"], times[kind])]
        result[f"dropped_over_{kind}_time"] = round(statistics.median(ratios), 4)
        result[f"dropped_over_{kind}_time_quartiles"] = [round(q, 4) for q in statistics.quantiles(ratios, n=4)]
    return result


def _alone_or_together(env_id: str, kind: str, episodes: int, offset: int, barrier, results) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        loop = _loop(env_id, first_episode=offset, episodes_per_run=episodes)
        barrier.wait()
        frames, seconds = _run(loop, kind, episodes, tmp)
    results.put(frames / seconds)


def _scaling(env_id: str, rounds: int, episodes: int, workers: int) -> dict:
    """Per-process frames/s of the frames-dropped loop, one process alone vs ``workers`` at once."""
    ctx = mp.get_context("spawn")
    rates: dict[str, list[float]] = {"alone": [], "together": [], "together_lz4": []}
    runs = [("alone", "dropped", 1), ("together", "dropped", workers), ("together_lz4", "lz4", workers)]
    for r in range(rounds):
        for label, kind, n in (runs if r % 2 == 0 else runs[::-1]):
            barrier, results = ctx.Barrier(n), ctx.Queue()
            processes = [ctx.Process(target=_alone_or_together,
                                     args=(env_id, kind, episodes, k * episodes, barrier, results)) for k in range(n)]
            for process in processes:
                process.start()
            per_process = [results.get() for _ in processes]
            for process in processes:
                process.join()
            rates[label].append(statistics.fmean(per_process))
    scaling = [t / a for t, a in zip(rates["together"], rates["alone"])]
    with_lz4 = [t / a for t, a in zip(rates["together_lz4"], rates["alone"])]
    return {"scaling_rounds": rounds, "scaling_workers": workers, "scaling_episodes": episodes,
            "fps_alone": [round(x) for x in rates["alone"]],
            "fps_per_process_together": [round(x) for x in rates["together"]],
            "fps_per_process_together_lz4": [round(x) for x in rates["together_lz4"]],
            "scaling": round(statistics.median(scaling), 4),
            "scaling_range": [round(min(scaling), 4), round(max(scaling), 4)],
            # The collector's loops without its pool, shards or start-up: the most it could reach.
            "together_lz4_over_alone": round(statistics.median(with_lz4), 4),
            "together_lz4_over_alone_range": [round(min(with_lz4), 4), round(max(with_lz4), 4)]}


def _instructions(env_id: str, kind: str, episodes: int) -> tuple[int, int]:
    """(instructions, frames) of one child run under cachegrind."""
    result = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--child", kind, str(episodes), "--env", env_id],
        capture_output=True, text=True)
    match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"the {kind} run under valgrind failed:\n{result.stderr[-2000:]}")
    return int(match.group(1).replace(",", "")), int(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--env", default="WM-GridWorld-v0", help="Gymnasium env id with 64x64x3 uint8 frames")
    parser.add_argument("--pairs", type=int, default=100,
                        help="timed rounds of the three loops, in alternating order (0: no timing; at least 2, "
                             "for a median over rounds)")
    parser.add_argument("--pair-episodes", type=int, default=100, help="episodes in each timed run")
    parser.add_argument("--instructions", action="store_true", help="also count instructions under valgrind")
    parser.add_argument("--episodes", type=int, nargs=2, default=(20, 220), metavar=("FEW", "MANY"),
                        help="with --instructions: the two episode counts whose difference is measured")
    parser.add_argument("--scaling", type=int, default=0, metavar="ROUNDS",
                        help="rounds of one process alone vs --workers processes at once (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="processes at once for --scaling")
    parser.add_argument("--scaling-episodes", type=int, default=2000, help="episodes per process per --scaling run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "EPISODES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.env, args.child[0], int(args.child[1]))
        return
    few, many = args.episodes
    if args.pairs < 0 or args.pairs == 1 or args.pair_episodes < 1:
        parser.error("--pairs must be 0 (no timing) or >= 2, and --pair-episodes >= 1")
    if args.scaling < 0 or args.workers < 2 or args.scaling_episodes < 1:
        parser.error("--scaling must be >= 0, --workers >= 2 and --scaling-episodes >= 1")
    if args.instructions and not 0 < few < many:
        parser.error(f"--episodes needs 0 < FEW < MANY, got {few} {many}")
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions counts with valgrind, which is not installed (apt-get install valgrind)")
    result: dict = {"env": args.env}
    if args.pairs >= 2:
        result.update(pairs=args.pairs, pair_episodes=args.pair_episodes,
                      **_timed_pairs(args.env, args.pairs, args.pair_episodes))
    if args.instructions:
        per_frame = {}
        for kind in ("dropped", "lz4"):
            (i_few, f_few), (i_many, f_many) = (_instructions(args.env, kind, n) for n in (few, many))
            per_frame[kind] = (i_many - i_few) / (f_many - f_few)
        extra = per_frame["lz4"] - per_frame["dropped"]
        result.update({
            "episodes": [few, many],
            "instructions_per_frame_dropped": round(per_frame["dropped"]),
            "instructions_per_frame_lz4": round(per_frame["lz4"]),
            "lz4_extra_instructions_fraction": round(extra / per_frame["dropped"], 4),
            "dropped_over_lz4_instructions": round(per_frame["dropped"] / per_frame["lz4"], 4),
        })
    if args.scaling:
        result.update(_scaling(args.env, args.scaling, args.scaling_episodes, args.workers))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
