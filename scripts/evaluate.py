#!/usr/bin/env python
"""`python scripts/evaluate.py ARGS` from a clone: the same as `wm-agent evaluate ARGS`."""

from _run import run

if __name__ == "__main__":
    run("evaluate")
