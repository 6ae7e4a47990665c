#!/usr/bin/env python
"""What the ray backend costs on one machine: the same job with ``--backend local`` and ``--backend ray``, as
throughput ratios (ray / local; 1.0 = no overhead).

Two jobs, each run in a fresh Python process per backend, the backends alternating round by round
(local first in odd rounds, ray first in even ones) so a machine that speeds up or slows down meets both:

- ``carracing``: a real-env CMA-ES search on WM-CarRacing-v0 as ``train-controller --in real`` scores it
  (``RolloutWorkers``: ask, one task per worker with its candidates' whole episodes, tell), with a
  CarRacing-preset world model of random weights (the work per step is a trained model's). Reported per
  generation: env steps per second of the generation's wall time. The first generation includes the
  workers' start (local: spawned processes importing torch; ray: Ray's workers importing it) and each worker's
  first load of the model; the later ones are what a long search runs. Pool creation (for ray without
  ``--ray-address``: starting a local Ray) is reported apart.
- ``gridworld``: one collection round of WM-GridWorld-v0 (``DataCollector``, ``--workers`` workers), frames per
  second from the collector's construction to the last shard listed: pool start (for ray without
  ``--ray-address``: starting a local Ray), shards written (on ray: sent back and written by this process).

Usage::

    python benchmarks/measure_ray_overhead.py carracing --popsize 4 --rollouts 1 --workers 2 --generations 3
    python benchmarks/measure_ray_overhead.py gridworld --episodes 9800 --workers 2 --rounds 3
    ray start --head --num-cpus 2 && python benchmarks/measure_ray_overhead.py gridworld --ray-address auto

It prints one JSON object: each run's figures and the ratios (medians over rounds where there are several).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _root  # noqa: F401  (this clone's wm_agent and envs are the ones measured)


# -- one run, in a process of its own -------------------------------------------------------------------
def run_carracing(args: argparse.Namespace) -> dict:
    import cma
    import numpy as np
    import torch

    from wm_agent.config import WorldModelConfig
    from wm_agent.rollouts import RolloutWorkers
    from wm_agent.world_model import WorldModel

    torch.manual_seed(0)
    wm = WorldModel(WorldModelConfig.car_racing(), env_id="WM-CarRacing-v0")
    wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}}
    es = cma.CMAEvolutionStrategy(np.zeros(wm.controller.num_params), 0.5,
                                  {"popsize": args.popsize, "seed": 1, "verbose": -9})
    started = time.perf_counter()
    workers = RolloutWorkers(wm, "WM-CarRacing-v0", args.workers, timeout=3600, backend=args.backend,
                             address=args.ray_address)
    pool_seconds = time.perf_counter() - started
    generations = []
    try:
        for generation in range(args.generations):
            t0 = time.perf_counter()
            xs = np.asarray(es.ask())
            seeds = [int(s) for s in np.random.default_rng([0, generation]).integers(2**31, size=args.rollouts)]
            result = workers.run(xs, seeds, greedy=False, max_steps=args.max_steps)
            fitness = result["return"].mean(1)
            es.tell(list(xs), list(-fitness))
            seconds = time.perf_counter() - t0
            steps = int(result["steps"].sum())
            generations.append({"seconds": seconds, "env_steps": steps, "steps_per_second": steps / seconds,
                                "fitness": [float(f) for f in fitness]})
    finally:
        t0 = time.perf_counter()
        workers.close()
        close_seconds = time.perf_counter() - t0
    return {"pool_seconds": pool_seconds, "close_seconds": close_seconds, "generations": generations,
            "total_seconds": time.perf_counter() - started}


def run_gridworld(args: argparse.Namespace) -> dict:
    from wm_agent.data.collect import DataCollector

    with tempfile.TemporaryDirectory(prefix="wm-agent-ray-bench-") as out:
        started = time.perf_counter()
        collector = DataCollector("WM-GridWorld-v0", out, seed=0, workers=args.workers, backend=args.backend,
                                  ray_address=args.ray_address)
        manifest = collector.collect(args.episodes, progress=False)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": manifest["frames"], "frames_per_second": manifest["frames"] / seconds,
            "shards": len(manifest["shards"]), "worker_cpu_seconds": collector.stats["worker_cpu_seconds"]}


# -- the comparison --------------------------------------------------------------------------------------
def _child(args: argparse.Namespace, backend: str) -> dict:
    command = [sys.executable, __file__, "--one", backend, *sys.argv[1:]]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    load_before = os.getloadavg()[0]
    for k in range(args.rounds):
        for backend in (("local", "ray") if k % 2 == 0 else ("ray", "local")):
            runs[backend].append(_child(args, backend))
            print(f"round {k + 1} {backend}: {json.dumps(runs[backend][-1])}", file=sys.stderr)
    report = {"job": args.job, "settings": {k: v for k, v in vars(args).items() if k not in ("one",)},
              "cpu_count": os.cpu_count(), "load_average_before": load_before, "runs": runs}
    pairs = list(zip(runs["ray"], runs["local"]))
    if args.job == "gridworld":
        report["ratio"] = statistics.median(ray["frames_per_second"] / local["frames_per_second"]
                                            for ray, local in pairs)
    else:
        def rate(run: dict, first: int, last: int | None = None) -> float:
            gens = run["generations"][first:last]
            return sum(g["env_steps"] for g in gens) / sum(g["seconds"] for g in gens)

        def ratio(first: int, last: int | None = None) -> float:
            return statistics.median(rate(ray, first, last) / rate(local, first, last) for ray, local in pairs)

        report["same_fitness"] = all(ray["generations"][i]["fitness"] == local["generations"][i]["fitness"]
                                     for ray, local in pairs for i in range(args.generations))
        report["ratio_first_generation"] = ratio(0, 1)
        if args.generations > 1:
            report["ratio_later_generations"] = ratio(1)
        report["ratio_all_generations"] = ratio(0)
        report["ratio_with_pool_start"] = statistics.median(
            (sum(g["env_steps"] for g in ray["generations"]) / ray["total_seconds"])
            / (sum(g["env_steps"] for g in local["generations"]) / local["total_seconds"]) for ray, local in pairs)
    report["load_average_after"] = os.getloadavg()[0]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", choices=("local", "ray"), help=argparse.SUPPRESS)  # a child: one run of that backend
    parser.add_argument("job", choices=("carracing", "gridworld"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ray-address", default=None, help="a running Ray cluster to join (default: start one)")
    parser.add_argument("--popsize", type=int, default=4, help="carracing: candidates per generation")
    parser.add_argument("--rollouts", type=int, default=1, help="carracing: episodes per candidate")
    parser.add_argument("--generations", type=int, default=3, help="carracing: generations per run")
    parser.add_argument("--max-steps", type=int, default=0, help="carracing: episode cap (0: the env's 1000)")
    parser.add_argument("--episodes", type=int, default=9800, help="gridworld: episodes per round")
    args = parser.parse_args()
    if args.one:
        args.backend = args.one
        print(json.dumps(run_carracing(args) if args.job == "carracing" else run_gridworld(args)))
    else:
        print(json.dumps(compare(args), indent=2))


if __name__ == "__main__":
    main()
