#!/usr/bin/env python
"""`python scripts/render.py ARGS` from a clone: the same as `wm-agent render ARGS`."""

from _run import run

if __name__ == "__main__":
    run("render")
