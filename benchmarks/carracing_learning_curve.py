"""The learning curve of a real-env CMA-ES search: return against real frames, as a PNG.

Two series: each generation's mean return over its candidates (training episodes, cut early by
--stop-after-negative, one track per generation), and the search mean scored on whole tracks by
``wm-agent evaluate`` (the JSON it prints, saved beside snapshots of the checkpoint taken during the run,
e.g. ``gen_120.eval.json`` beside ``gen_120.pt``). Real frames = decisions x the env's action repeat.

    python benchmarks/carracing_learning_curve.py CHECKPOINT SNAPSHOT_DIR --out docs/carracing_learning_curve.png
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse
import json
import re
from pathlib import Path

import torch

from wm_agent.render.figures import Visualizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the search's checkpoint (its train_state['cmaes']['log'])")
    parser.add_argument("snapshots", help="folder of gen_<N>.pt snapshots and their gen_<N>.eval.json")
    parser.add_argument("--out", default="carracing_learning_curve.png", help="PNG to write")
    args = parser.parse_args()

    state = torch.load(args.checkpoint, weights_only=True)
    repeat = int((state.get("env_kwargs") or {}).get("action_repeat", 1))
    log = state["train_state"]["cmaes"]["log"]
    frames = {row["generation"]: row["real_env_steps"] * repeat for row in log}
    train = ("generation mean (training episodes)", [frames[r["generation"]] for r in log], [r["mean"] for r in log])

    points = []
    for path in Path(args.snapshots).glob("gen_*.eval.json"):
        generation = int(re.fullmatch(r"gen_(\d+)\.eval\.json", path.name).group(1))
        if generation in frames:
            points.append((frames[generation], json.loads(path.read_text())["mean_return"]))
    points.sort()
    full = ("search mean, whole tracks", [x for x, _ in points], [y for _, y in points])

    out = Path(args.out)
    path = Visualizer(out.parent or ".").line_chart(
        [train, full], "real frames", f"Real-env CMA-ES on {state['env_id']} (action repeat {repeat})", out.name)
    print(f"wrote {path}: {len(log)} generations, {len(points)} whole-track evaluations")


if __name__ == "__main__":
    main()
