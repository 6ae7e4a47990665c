#!/usr/bin/env python
"""`python scripts/benchmark.py ARGS` from a clone: the same as `wm-agent benchmark ARGS`."""

import sys
from pathlib import Path

# Runnable without installing the package: the repository root holds wm_agent/ and envs/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wm_agent.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
