#!/usr/bin/env python
"""`python scripts/train_vae.py ARGS` from a clone: the same as `wm-agent train-vae ARGS`."""

from _run import run

if __name__ == "__main__":
    run("train-vae")
