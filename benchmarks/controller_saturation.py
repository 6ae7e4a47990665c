"""How saturated a linear controller's actions are, and how many directions its inputs vary along.

Drives the checkpoint's controller on real episodes (reset seeds SEED, SEED + 1, ...) and prints, over all
their decisions: per action, the median |pre-activation| (before tanh) and the share of decisions where it
is under 1 (where the action is not pinned to a bound); the share of the standardised inputs' variance in
their first 8 / 16 / 32 / 64 principal directions; and for a full linear readout the share of each action's
weight norm that lies in those directions (the rest moves the action only where inputs leave the subspace).

    python benchmarks/controller_saturation.py CHECKPOINT --episodes 12 --seed 5000
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse

import torch

from wm_agent.rollouts import driven_observations
from wm_agent.world_model import WorldModel

DIRECTIONS = (8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="world-model checkpoint with a trained linear controller")
    parser.add_argument("--episodes", type=int, default=12, help="real episodes to drive")
    parser.add_argument("--seed", type=int, default=5000, help="reset seed of the first episode")
    args = parser.parse_args()
    torch.set_num_threads(1)

    wm = WorldModel.load(args.checkpoint)
    c = wm.controller
    if c.kind != "linear" or c.hidden:
        raise SystemExit(f"{args.checkpoint}: a linear controller without a hidden layer is needed, got '{c.kind}' "
                         f"with {c.hidden} hidden units")
    seen = driven_observations(wm, wm.real_env_id(), list(range(args.seed, args.seed + args.episodes)))
    with torch.no_grad():
        features = c.normalize(seen).double()
        flat = torch.as_tensor(c.get_flat())
        n, a = c.features, c.out_dim
        weights, bias = flat[: n * a].reshape(n, a), flat[n * a :]
        pre = (features @ weights + bias).abs()
    print(f"{len(seen)} decisions of {args.episodes} episodes, controller reads {n} inputs ({c.num_params} weights)")
    for i in range(a):
        print(f"action {i}: median |pre-activation| {pre[:, i].median():.2f}, "
              f"under 1 on {100 * (pre[:, i] < 1).double().mean():.1f}% of decisions")
    _, stds, vt = c.principal_directions(seen)
    share = (stds**2).cumsum(0) / (stds**2).sum()
    print("input variance in the first " + ", ".join(f"{k}: {100 * share[k - 1]:.1f}%" for k in DIRECTIONS
                                                     if k <= len(share)) + " principal directions")
    if not c.pca:
        for k in DIRECTIONS:
            kept = (vt[:k] @ weights).norm(dim=0) / weights.norm(dim=0)
            print(f"weight norm in the first {k} directions, per action: "
                  + ", ".join(f"{100 * float(r)**2:.1f}%" for r in kept))


if __name__ == "__main__":
    main()
