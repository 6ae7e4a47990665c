#!/usr/bin/env python
"""`python scripts/collect.py ARGS` from a clone: the same as `wm-agent collect ARGS`."""

from _run import run

if __name__ == "__main__":
    run("collect")
