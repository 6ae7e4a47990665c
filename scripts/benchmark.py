#!/usr/bin/env python
"""`python scripts/benchmark.py ARGS` from a clone: the same as `wm-agent benchmark ARGS`."""

from _run import run

if __name__ == "__main__":
    run("benchmark")
