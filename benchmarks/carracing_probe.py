"""What the controller's inputs (z, h) tell about the car's speed and the turn ahead, read out linearly.

Drives the checkpoint's controller on whole real CarRacing episodes (reset seeds SEED, SEED + 1, ..., as
``wm-agent evaluate`` runs them) and records, beside each input the controller acts on, the car's speed
and how sharp the track turns ahead (the change of the track's heading over the next 10 tiles from the tile
nearest the car, in radians). Linear readouts from the first K principal directions of the standardised
inputs (what a controller on K directions, ``--pca K``, can read) are scored by R² on episodes they never
saw (5 folds of episodes, each predicted by a readout fitted on the other four): from all of (z, h), from
z (V's code of the frame) alone and from h (M's hidden state) alone. R² below 0: worse than a constant.
A linear controller can only act on what such a readout finds.

    python benchmarks/carracing_probe.py wm_agent/pretrained/carracing.pt --episodes 20 --seed 700
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse

import numpy as np
from _carracing import open_carracing

from wm_agent.rollouts import run_episode
from wm_agent.world_model import WorldModel

TILES_AHEAD = 10
FOLDS = 5


def turn_ahead(race) -> float:
    """|heading change| of the track over the next TILES_AHEAD tiles from the tile nearest the car."""
    track = np.array([(x, y) for (_, _, x, y) in race.track])
    nearest = int(np.argmin(((track - np.array(race.car.hull.position)) ** 2).sum(1)))
    change = race.track[(nearest + TILES_AHEAD) % len(track)][1] - race.track[nearest][1]
    return abs((change + np.pi) % (2 * np.pi) - np.pi)


def drive(wm: WorldModel, env, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One whole episode: the controller's inputs (T, z+h) and (speed, turn ahead) (T, 2) where each was seen."""
    race, states = env.unwrapped, []

    def read_car(env, reward: float) -> None:
        states.append((float(np.hypot(*race.car.hull.linearVelocity)), turn_ahead(race)))

    seen = run_episode(env, wm, seed, greedy=False, observe=True, on_step=read_car)["observations"]
    # The input at step t + 1 is what the car looked like after step t.
    return seen[1:].astype(np.float64), np.array(states[:-1])


def readout(x: np.ndarray, y: np.ndarray, directions: int):
    """Least squares from the first ``directions`` principal directions of the standardised ``x`` to ``y``,
    what a linear controller on as many directions (``--pca``) can read. Returns predict(x) -> y."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    basis = np.linalg.svd((x - mean) / std, full_matrices=False)[2][:directions].T

    def features(xs: np.ndarray) -> np.ndarray:
        projected = ((xs - mean) / std) @ basis
        return np.concatenate([projected, np.ones((len(xs), 1))], 1)

    weights = np.linalg.lstsq(features(x), y, rcond=None)[0]
    return lambda xs: features(xs) @ weights


def r_squared(x: list[np.ndarray], y: list[np.ndarray], directions: int) -> float:
    """R² on episodes the readout never saw: each of FOLDS folds of episodes predicted by a readout fitted on
    the others, the predictions pooled (``x``, ``y``: per-episode lists)."""
    predicted, actual = [], []
    for fold in np.array_split(np.arange(len(x)), FOLDS):
        rest = [i for i in range(len(x)) if i not in set(fold)]
        predict = readout(np.concatenate([x[i] for i in rest]), np.concatenate([y[i] for i in rest]), directions)
        predicted += [predict(x[i]) for i in fold]
        actual += [y[i] for i in fold]
    predicted, actual = np.concatenate(predicted), np.concatenate(actual)
    return float(1.0 - ((predicted - actual) ** 2).mean() / actual.var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="CarRacing world-model checkpoint with a trained controller")
    parser.add_argument("--episodes", type=int, default=20, help="real episodes to drive (at least 10)")
    parser.add_argument("--seed", type=int, default=700, help="reset seed of the first episode")
    parser.add_argument("--directions", type=int, default=32, help="principal directions the readouts read")
    args = parser.parse_args()
    if args.episodes < 2 * FOLDS:
        parser.error(f"--episodes must be at least {2 * FOLDS} (each of {FOLDS} folds of episodes is predicted "
                     f"by a readout fitted on the others), got {args.episodes}")
    if args.directions < 1:
        parser.error(f"--directions must be at least 1, got {args.directions}")
    wm, env = open_carracing(args.checkpoint, args.seed)
    try:
        episodes = [drive(wm, env, seed) for seed in range(args.seed, args.seed + args.episodes)]
    finally:
        env.close()
    inputs, states = [x for x, _ in episodes], [s for _, s in episodes]
    z_size = inputs[0].shape[1] - wm.config.hidden_size
    views = {"(z, h)": slice(None), "z": slice(0, z_size), "h": slice(z_size, None)}
    for column, name in enumerate(("speed", "turn ahead")):
        y = [s[:, column] for s in states]
        scores = ", ".join(f"{r_squared([x[:, cols] for x in inputs], y, args.directions):.2f} from {view}"
                           for view, cols in views.items())
        values = np.concatenate(y)
        print(f"{name}: held-out R² {scores} (mean {values.mean():.2f}, std {values.std():.2f})", flush=True)


if __name__ == "__main__":
    main()
