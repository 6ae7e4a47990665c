"""The GridWorld demo over seeds and CPU kernel paths, as one table: does the result hold, or was it luck?

Floating-point rounding differs between CPU kernel paths (AVX2 vs AVX-512), so the same seed trains a
slightly different world model on another machine. One machine can still show whether a result survives
that: torch picks its kernels from ``ATEN_CPU_CAPABILITY`` and oneDNN from ``ONEDNN_MAX_CPU_ISA``, read
once when torch loads, so each run is a demo in a fresh process with those set. Every run writes its
own demo folder: a re-run of the sweep reuses the finished ones and resumes an interrupted one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from wm_agent.config import check_settings, doc
from wm_agent.io import atomic_path, save_json
from wm_agent.progress import progress_bar

# What each kernel path sets in a run's environment ("default": torch's own choice for this CPU).
KERNELS = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}
# The bar every run must clear (issue: success and return vs the oracle on 200 fresh layouts).
MIN_SUCCESS, MIN_RETURN_VS_ORACLE = 0.95, 0.90
# (summary.json key, column heading, format) of the table, one row per run.
COLUMNS = (("success_rate", "success", ".3f"), ("return_vs_oracle", "return/oracle", ".3f"),
           ("dream_return", "C dream", ".3f"), ("mean_return", "C real", ".3f"),
           ("random_dream_return", "random dream", ".3f"), ("random_mean_return", "random real", ".3f"),
           ("random_success_rate", "random success", ".3f"), ("vae_mse", "VAE MSE", ".2e"),
           ("dream_exact_steps", "exact dream steps", ".1f"), ("real_env_steps_used", "real steps", "d"),
           ("wall_time_s", "wall s", ".0f"))


@dataclass
class BenchmarkSeedsConfig:
    """wm-agent benchmark seeds: the GridWorld demo for each seed under each CPU kernel path, one table."""

    seeds: str = doc("seeds: a range '0-4' or a list '0,3,7'", "0-4")
    kernels: str = doc("CPU kernel paths, comma-separated, from: default (torch's choice), avx2, avx512 "
                       "(the CPU must have it; see /proc/cpuinfo)", "default,avx2")
    out: str = doc("folder of the sweep: one demo folder per run, and sweep.json and sweep.md with the table",
                   "seed_sweep")
    progress: bool = doc("show a progress bar over the runs", True)


def parse_seeds(text: str) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,3,7' -> [0, 3, 7]; a ValueError naming the text otherwise."""
    try:
        if "-" in text.strip().lstrip("-"):
            first, last = (int(part) for part in text.split("-"))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds must be a range like 0-4 or a list like 0,3,7 of seeds >= 0, got {text!r}")
    return seeds


def parse_kernels(text: str) -> list[str]:
    kernels = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kernels if k not in KERNELS]
    check_settings((bool(kernels) and not unknown,
                    f"--kernels must list some of {', '.join(KERNELS)}, got {text!r}"))
    return kernels


def _run_demo(folder: Path, seed: int, kernel: str) -> dict:
    """One demo in a fresh interpreter (the kernel path is read when torch loads); its summary.json."""
    env = {**os.environ, **KERNELS[kernel]}
    command = [sys.executable, "-m", "wm_agent.cli", "demo", "--seed", str(seed), "--out", str(folder), "--no-progress"]
    log = folder.parent / f"{folder.name}.log"
    with open(log, "w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the demo for seed {seed} under the {kernel} kernels failed (exit {done.returncode}); "
                           f"see {log}")
    return json.loads((folder / "summary.json").read_text())


def passes(summary: dict) -> bool:
    return summary["success_rate"] >= MIN_SUCCESS and summary["return_vs_oracle"] >= MIN_RETURN_VS_ORACLE


def table(runs: list[dict]) -> str:
    """A Markdown table: one row per run, then min / median / max of each column over the runs."""
    head = ["kernels", "seed", *[title for _, title, _ in COLUMNS], "passes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in runs:
        cells = [f"{run['kernels']} ({run['summary'].get('cpu_capability', '?')})", str(run["seed"]),
                 *[format(run["summary"][key], fmt) for key, _, fmt in COLUMNS],
                 "yes" if passes(run["summary"]) else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    for name, pick in (("min", min), ("median", statistics.median), ("max", max)):
        cells = [name, ""]
        for key, _, fmt in COLUMNS:
            value = pick([run["summary"][key] for run in runs])
            cells.append(format(value, fmt if fmt != "d" else ".0f"))
        lines.append("| " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def benchmark_seeds(cfg: BenchmarkSeedsConfig, verbose: bool = True) -> dict:
    """Run (or reuse) the demo for every kernel path and seed; print and save the table."""
    seeds, kernels = parse_seeds(cfg.seeds), parse_kernels(cfg.kernels)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    plan = [(kernel, seed) for kernel in kernels for seed in seeds]
    with progress_bar(plan, desc="demo runs", unit="run", disable=not cfg.progress) as bar:
        for kernel, seed in bar:
            folder = out / f"{kernel}_seed{seed}"
            summary_path = folder / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else _run_demo(folder, seed, kernel)
            runs.append({"kernels": kernel, "seed": seed, "folder": str(folder), "summary": summary})
            if verbose:
                bar.write(f"{kernel} seed {seed}: success {summary['success_rate']:.3f}, return/oracle "
                          f"{summary['return_vs_oracle']:.3f}, dream {summary['dream_return']:.3f} vs real "
                          f"{summary['mean_return']:.3f}, {summary['wall_time_s']:.0f} s")
    text = table(runs)
    passed = sum(passes(run["summary"]) for run in runs)
    verdict = (f"{passed} of {len(runs)} runs reach success >= {MIN_SUCCESS} and return >= "
               f"{MIN_RETURN_VS_ORACLE:.0%} of the oracle's")
    result = {"runs": runs, "passed": passed, "total": len(runs), "table": text, "verdict": verdict}
    save_json(result, out / "sweep.json")
    with atomic_path(out / "sweep.md") as tmp:
        tmp.write_text(text + "\n\n" + verdict + "\n")
    if verbose:
        print(text + "\n\n" + verdict)
    return result
