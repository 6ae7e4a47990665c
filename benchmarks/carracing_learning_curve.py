"""The learning curve of a real-env CMA-ES search: return against real frames, as a PNG.

Three series: each generation's mean return over its candidates (training episodes, cut early by
--stop-after-negative, a few tracks per generation); the search mean scored on whole tracks by
``wm-agent evaluate`` (the JSON it prints, saved beside snapshots of the checkpoint taken during the run,
e.g. ``gen_120.eval.json`` beside ``gen_120.pt``); and the search mean's own selection scores (a search run
with ``--select-tracks``: whole episodes on its fixed tracks). Real frames = decisions x the action repeat each
run drove at (its saved ``env_kwargs``; a run saved without them: the checkpoint's own if it is the last run, else
the data's, as every run before ``train-controller --env-kwargs`` existed drove).

    python benchmarks/carracing_learning_curve.py CHECKPOINT SNAPSHOT_DIR --out docs/carracing_learning_curve.png
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse
import json
from pathlib import Path

import torch

from wm_agent.render.figures import Visualizer


def real_history(state: dict, key: str = "mean") -> list[tuple[int, float]]:
    """(real frames so far, the row's ``key``) for every real-env generation of the checkpoint's CMA-ES search
    whose row has it, the runs it was warm-started from first (each run counts its steps from 0)."""
    search = state["train_state"]["cmaes"]
    data_kwargs = state["train_state"].get("vae", {}).get("data", {}).get("env_kwargs", state.get("env_kwargs"))
    last = {"algo": "cmaes", "where": search["where"], "log": search["log"],
            "env_kwargs": search.get("env_kwargs", state.get("env_kwargs"))}
    points, offset = [], 0
    for run in [*search.get("earlier", []), last]:
        if run["algo"] != "cmaes" or run["where"] != "real":
            continue  # dream generations take no real steps
        repeat = int((run.get("env_kwargs", data_kwargs) or {}).get("action_repeat", 1))
        points += [(offset + row["real_env_steps"] * repeat, row[key]) for row in run["log"] if key in row]
        offset += run["log"][-1]["real_env_steps"] * repeat if run["log"] else 0
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="the search's checkpoint (its train_state['cmaes'] log)")
    parser.add_argument("snapshots", help="folder of snapshots (any name ending gen_<N>.pt) and their .eval.json files")
    parser.add_argument("--out", default="carracing_learning_curve.png", help="PNG to write")
    args = parser.parse_args()

    state = torch.load(args.checkpoint, weights_only=True)
    history = real_history(state)
    train = ("generation mean (training episodes)", [f for f, _ in history], [m for _, m in history])

    points = []
    for path in Path(args.snapshots).glob("*gen_*.eval.json"):
        snapshot = path.with_name(path.name.removesuffix(".eval.json") + ".pt")
        if snapshot.exists():  # its own history says how many real frames it had taken
            frames = real_history(torch.load(snapshot, weights_only=True))[-1][0]
            points.append((frames, json.loads(path.read_text())["mean_return"]))
    points.sort()
    full = ("search mean, whole tracks (snapshots)", [x for x, _ in points], [y for _, y in points])
    selected = real_history(state, "selection_score")
    series = [train, full] if points else [train]  # a run without snapshots has its own log only
    if selected:
        series.append(("search mean, whole tracks (its --select-tracks)", [f for f, _ in selected],
                       [m for _, m in selected]))

    out = Path(args.out)
    path = Visualizer(out.parent or ".").line_chart(
        series, "real frames", f"Real-env CMA-ES on {state['env_id']}", out.name)
    print(f"wrote {path}: {len(history)} real-env generations, {len(points)} whole-track evaluations")


if __name__ == "__main__":
    main()
