"""Copy a world-model checkpoint without V's and M's optimizer states, for shipping it (``--pretrained``).

The Adam moments are two thirds of a CarRacing checkpoint and are only read by a resumed ``train-vae`` /
``train-rnn``, which without them starts a fresh Adam at the saved weights. Everything else (weights,
start frames, metrics, the controller search's state and log) is kept as it is.

    python scripts/slim_checkpoint.py car.pt wm_agent/pretrained/carracing.pt
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from wm_agent.io import atomic_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint to copy")
    parser.add_argument("out", help="where the slim copy goes (written atomically)")
    args = parser.parse_args()
    state = torch.load(args.source, weights_only=True)
    for stage in ("vae", "rnn"):
        state.get("train_state", {}).get(stage, {}).pop("optimizer", None)
    with atomic_path(args.out) as tmp:
        torch.save(state, tmp)
    print(f"wrote {args.out}: {Path(args.out).stat().st_size / 1e6:.1f} MB (was "
          f"{Path(args.source).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
