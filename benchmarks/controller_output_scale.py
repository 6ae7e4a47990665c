"""A trained controller with each action's output scaled (and, optionally, squashed otherwise), in the real env.

What ``train-controller --warm-start --squash ... --output-scale ...`` would start a search from.

For each ``--scale`` (one factor per action, comma-separated), the checkpoint's controller with its output
layer's weights and bias times those factors (``Controller.output_factors``), and with each ``--shift`` added
to its output biases (where the bounds fall: ``--shift 0,15,0`` holds the gas on more often), runs
``--episodes`` whole real episodes from reset seed ``--seed`` on, as ``wm-agent evaluate`` runs them; one JSON
line per scale and shift.

    python benchmarks/controller_output_scale.py CKPT --squash tanh tanh relu --scale 1,1,1 0.01,1,1 \
        --episodes 50 --seed 200
"""

import _root  # noqa: F401  (this clone first on sys.path)

import argparse
import json

from wm_agent.commands.evaluate import EvaluateConfig, evaluate
from wm_agent.world_model import WorldModel


def scaled(path: str, factors: list[float], squash: tuple[str, ...] | None, shift: list[float] | None = None
           ) -> WorldModel:
    """The checkpoint's world model, its controller's outputs times ``factors``, then plus ``shift`` (read
    through ``squash``)."""
    wm = WorldModel.load(path)
    flat = wm.controller.get_flat() * wm.controller.output_factors(factors)
    if shift:
        flat[wm.controller.output_bias()] += shift
    if squash:
        wm.set_action_squash(squash)
    wm.controller.set_flat(flat)
    return wm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="world-model checkpoint with a trained controller")
    parser.add_argument("--scale", nargs="+", required=True, help="factors, one per action, comma-separated")
    parser.add_argument("--shift", nargs="+", default=None,
                        help="added to each output after scaling (its pre-activation), one per action, comma-"
                             "separated; each shift is scored at each scale")
    parser.add_argument("--squash", nargs="+", default=None, help="action squash per action (tanh / relu)")
    parser.add_argument("--episodes", type=int, default=50, help="real episodes per scale")
    parser.add_argument("--seed", type=int, default=200, help="reset seed of the first episode")
    parser.add_argument("--workers", type=int, default=1, help="processes the episodes are split over")
    args = parser.parse_args()
    shifts = [[float(x) for x in text.split(",")] for text in args.shift] if args.shift else [None]
    for text in args.scale:
        factors = [float(x) for x in text.split(",")]
        for shift in shifts:
            wm = scaled(args.checkpoint, factors, tuple(args.squash) if args.squash else None, shift)
            result = evaluate(EvaluateConfig(episodes=args.episodes, seed=args.seed, workers=args.workers,
                                             progress=False), wm=wm)
            shown = {"scale": factors, **({"shift": shift} if shift else {}), "squash": list(wm.config.squashes)}
            shown.update({k: round(v, 1) for k, v in result.items() if k.endswith("_return")})
            print(json.dumps(shown), flush=True)


if __name__ == "__main__":
    main()
