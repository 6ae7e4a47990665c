#!/usr/bin/env python
"""Per-frame CPU of compressing GridWorld frames: why the shards store LZ4 frames.

Raw GridWorld frames from two collector workers are ~800 MB/s, more than this project's disks
sustain (see docs/benchmarks.md), so frames are compressed; each worker pays for that on the same core as
its env, so a 0.8 collector ratio leaves well under 20% of an env step for it. This times, per frame
and on one core: the env step itself (``gym.make``, random actions), zlib level 1, an RGB ->
palette-index pass (a 2^24-entry lookup table), and LZ4 block compression and decompression (the
codec the shards use, ``wm_agent.data.frames``). Prints one JSON object.

Usage::

    python benchmarks/measure_frame_codecs.py --steps 20000 --frames 2000
"""

from __future__ import annotations

import argparse
import json
import time
import zlib

import _root  # noqa: F401  (this clone's wm_agent and envs are the ones measured)
import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers WM-GridWorld-v0)


def _per_frame_us(fn, frames) -> float:
    start = time.perf_counter()
    for f in frames:
        fn(f)
    return (time.perf_counter() - start) / len(frames) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="env steps to time")
    parser.add_argument("--frames", type=int, default=2_000, help="frames kept to time the codecs on")
    parser.add_argument("--seed", type=int, default=0, help="reset and action seed")
    args = parser.parse_args()
    if args.steps < 1 or not 1 <= args.frames <= args.steps:
        parser.error("need steps >= 1 and 1 <= frames <= steps")

    env = gym.make("WM-GridWorld-v0")
    env.reset(seed=args.seed)
    env.action_space.seed(args.seed)
    frames = []
    start = time.perf_counter()
    for _ in range(args.steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if len(frames) < args.frames:
            frames.append(obs)
        if terminated or truncated:
            env.reset()
    step_us = (time.perf_counter() - start) / args.steps * 1e6
    raw = [f.tobytes() for f in frames]

    lut = np.full(1 << 24, 255, np.uint8)
    colours = np.unique(np.stack(frames).reshape(-1, 3), axis=0)
    for k, (r, g, b) in enumerate(colours.astype(np.uint32)):
        lut[(r << 16) | (g << 8) | b] = k

    def palette(f):
        return lut[(f[..., 0].astype(np.uint32) << 16) | (f[..., 1].astype(np.uint32) << 8) | f[..., 2]]

    result = {
        "frame_bytes": len(raw[0]), "env_step_us": step_us,
        "zlib1_us": _per_frame_us(lambda b: zlib.compress(b, 1), raw),
        "zlib1_bytes": float(np.mean([len(zlib.compress(b, 1)) for b in raw])),
        "palette_us": _per_frame_us(palette, frames), "palette_bytes": frames[0].shape[0] * frames[0].shape[1],
        "palette_colours": len(colours),
    }
    import lz4.block as lz4

    packed = [lz4.compress(b, "default", False) for b in raw]
    result["lz4_us"] = _per_frame_us(lambda b: lz4.compress(b, "default", False), raw)
    result["lz4_bytes"] = float(np.mean([len(p) for p in packed]))
    result["lz4_decompress_us"] = _per_frame_us(lambda p: lz4.decompress(p, uncompressed_size=len(raw[0])), packed)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
