"""How far round the track a CarRacing controller gets in an episode, and how fast it drives there.

Drives the checkpoint's controller on whole real episodes (reset seeds SEED, SEED + 1, ..., as ``wm-agent
evaluate`` runs them, the same action draws) and prints one line per episode: the return, the tiles visited of
the track's total at each quarter of the episode, the car's mean and 90th-percentile speed (the env's physics
units), the decisions that took no new tile (reward < 0), those with no wheel on the road, and those the car stood
still with gas and brake both on (a standstill the controller cannot leave: its view, and so its action, stays
the same). A lap needs every tile: a car that keeps the road but sees a quarter of its tiles fewer per quarter
of the episode is limited by speed, not by leaving the road.

    python benchmarks/carracing_progress.py wm_agent/pretrained/carracing.pt --episodes 6 --seed 300
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse

import numpy as np
from _carracing import open_carracing

from wm_agent.rollouts import run_episode
from wm_agent.world_model import WorldModel


def drive(wm: WorldModel, env, seed: int) -> str:
    """One whole episode from reset seed ``seed``, summed up in a line."""
    race, speeds, tiles, rewards, off_road, held = env.unwrapped, [], [], [], 0, 0

    def read_car(env, reward: float) -> None:
        nonlocal off_road, held
        car = race.car
        speeds.append(float(np.hypot(*car.hull.linearVelocity)))
        tiles.append(race.tile_visited_count)
        rewards.append(reward)
        off_road += not any(wheel.tiles for wheel in car.wheels)
        # Car.gas drives the rear wheels, Car.brake all four: what the last action set.
        held += speeds[-1] < 1.0 and car.wheels[2].gas > 0.5 and car.wheels[0].brake > 0.5

    run_episode(env, wm, seed, greedy=False, on_step=read_car)
    quarters = [tiles[(q * len(tiles)) // 4 - 1] for q in range(1, 5)]
    return (f"seed {seed}: return {sum(rewards):.1f}, tiles {tiles[-1]}/{len(race.track)} "
            f"({100 * tiles[-1] / len(race.track):.0f}%), by quarter {quarters}, speed mean {np.mean(speeds):.1f} "
            f"p90 {np.percentile(speeds, 90):.1f}, decisions without a new tile {sum(r < 0 for r in rewards)}, "
            f"off the road {off_road}, held still by gas and brake {held}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="CarRacing world-model checkpoint with a trained controller")
    parser.add_argument("--episodes", type=int, default=6, help="real episodes to drive")
    parser.add_argument("--seed", type=int, default=300, help="reset seed of the first episode")
    args = parser.parse_args()
    wm, env = open_carracing(args.checkpoint, args.seed)
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            print(drive(wm, env, seed), flush=True)
    finally:
        env.close()


if __name__ == "__main__":
    main()
