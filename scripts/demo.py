#!/usr/bin/env python
"""`python scripts/demo.py ARGS` from a clone: the same as `wm-agent demo ARGS`."""

from _run import run

if __name__ == "__main__":
    run("demo")
