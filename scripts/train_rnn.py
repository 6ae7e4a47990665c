#!/usr/bin/env python
"""`python scripts/train_rnn.py ARGS` from a clone: the same as `wm-agent train-rnn ARGS`."""

from _run import run

if __name__ == "__main__":
    run("train-rnn")
