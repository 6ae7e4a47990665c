#!/usr/bin/env python
"""`python scripts/train_controller.py ARGS` from a clone: the same as `wm-agent train-controller ARGS`."""

from _run import run

if __name__ == "__main__":
    run("train-controller")
