"""The ``wm-agent`` command line: one subcommand per stage of the pipeline.

Options come from typed dataclass configs (``add_dataclass_args``), so a field's one-line
``metadata={"help": ...}`` is its ``--help`` text and the CLI can never drift from the config.
To add a subcommand: write ``_cmd_<name>(args) -> int`` and register it in ``build_parser`` (a pipeline
stage: a row of ``JOBS``, whose module is imported only when that stage runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

__all__ = ["add_dataclass_args", "build_parser", "dataclass_from_args", "main"]


# ----------------------------------------------------------------------------------------------
# Dataclass configs <-> argparse
# ----------------------------------------------------------------------------------------------
def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def _seed(text: str) -> int:
    """A seed: numpy and torch take only non-negative ints (each command said so in other words, or not at all)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed must be >= 0, got {value}")
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` / ``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _argparse_kwargs(f: dataclasses.Field, tp: Any) -> dict:
    tp, _ = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = typing.get_args(tp)
        return {"type": type(choices[0]), "choices": choices}
    if tp is int and f.name == "seed":
        return {"type": _seed, "metavar": "SEED"}
    if tp in (int, float, str):
        return {"type": tp, "metavar": f.name.upper()}
    if tp is Path:
        return {"type": Path, "metavar": "PATH"}
    if tp is dict or origin is dict:
        return {"type": _json_object, "metavar": "JSON"}
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(set(args)) == 1 and args[0] in (int, float, str):
            return {"type": args[0], "nargs": "+", "metavar": f.name.upper()}
    raise TypeError(f"add_dataclass_args: field {f.name!r} has unsupported type {tp!r}")


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, *, exclude: typing.Iterable[str] = (), title: str | None = None
) -> argparse._ArgumentGroup:
    """Add one ``--field-name`` option per field of dataclass ``cls`` to ``parser``.

    Supported field types: int, float, str, Path, bool (``--x/--no-x``), ``Literal[...]`` (choices),
    ``X | None``, dict (a JSON object) and homogeneous tuple/list (``nargs="+"``). The help text is
    ``field(metadata={"help": ...})`` plus the default; fields without a default become required.
    """
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    hints = typing.get_type_hints(cls)
    skipped = set(exclude)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skipped:
            continue
        kwargs = _argparse_kwargs(f, hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if kwargs.get("action") is argparse.BooleanOptionalAction and "(default:" not in help_text:
            help_text += f" (default: {flag if kwargs.get('default') else '--no-' + flag[2:]})"
        # None means "unset": the field's help says what that does (and "(default: None)" says nothing).
        elif kwargs.get("default") is not None and "(default:" not in help_text:
            shown = json.dumps(kwargs["default"]) if isinstance(kwargs["default"], dict) else kwargs["default"]
            help_text += f" (default: {str(shown).replace('%', '%%')})"
        group.add_argument(flag, dest=f.name, help=help_text, **kwargs)
    return group


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """Build ``cls`` from the parsed options that ``add_dataclass_args`` added (plus ``overrides``)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.init and hasattr(args, f.name):
            value = getattr(args, f.name)
            tp, _ = _unwrap_optional(hints[f.name])
            if typing.get_origin(tp) is tuple and isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)


# ----------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------
def _cmd_collect(args: argparse.Namespace) -> int:
    from wm_agent.data.collect import CollectConfig, DataCollector

    config = dataclass_from_args(CollectConfig, args)
    collector = DataCollector.from_config(config)
    manifest = collector.collect(config.episodes, progress=args.progress)
    shards, written = len(manifest["shards"]), int(collector.stats["shards"])
    line = (f"{config.out}: {manifest['episodes']} episodes, {manifest['frames']:,} frames, {manifest['steps']:,} "
            f"steps in {shards} shard{'s' * (shards != 1)} of {manifest['env_id']}")
    if written < shards:  # a resumed collection says how much of it was already on disk
        line += f" ({shards - written} already there, {written} collected now)"
    if manifest["episodes"] > config.episodes:
        line += f"; the folder holds more than the {config.episodes} asked for"
    print(line)
    return 0


def _cmd_benchmark_collect(args: argparse.Namespace) -> int:
    from wm_agent.commands.benchmark import BenchmarkCollectConfig, benchmark_collect

    config = dataclass_from_args(BenchmarkCollectConfig, args)
    benchmark_collect(config.env, steps=config.steps, workers=config.workers, seed=config.seed,
                      policy=config.policy, env_kwargs=config.env_kwargs, rounds=config.rounds,
                      vectorization=config.vectorization)
    return 0


def _print_json(result: dict) -> None:
    print(json.dumps(result, indent=2, default=float))


def _summary_line(result: dict) -> str:
    """One line of a job's scalar results (checkpoint, epochs, generations...), so that a run with
    --no-progress still says what it did."""
    scalars = {k: v for k, v in result.items() if isinstance(v, (bool, int, float, str))}
    return "done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())


def _job(module: str, config: str, func: str, emit_json: bool = False, summary: bool = True):
    """A subcommand that builds ``config`` from the options and calls ``func(config)``; it prints the
    result as JSON, or a one-line summary, or nothing (a benchmark prints its own report)."""

    def run(args: argparse.Namespace) -> int:
        mod = __import__(f"wm_agent.{module}", fromlist=[config, func])
        result = getattr(mod, func)(dataclass_from_args(getattr(mod, config), args))
        if emit_json:
            _print_json(result)
        elif summary and isinstance(result, dict):
            print(_summary_line(result))
        return 0

    return run


# (name, module, config class, function, print JSON?, help) — the pipeline's stages in order.
JOBS = [
    ("train-vae", "commands.train", "TrainVAEConfig", "run_train_vae", False,
     "train the VQ-VAE (V) on collected frames; checkpoint and metrics each epoch, --resume"),
    ("train-rnn", "commands.train", "TrainRNNConfig", "run_train_rnn", False,
     "train the MDN-RNN (M) on the VQ-VAE's codes of collected episodes, --resume"),
    ("train-controller", "commands.train_controller", "ControllerTrainConfig", "train_controller", False,
     "train the controller (C) with CMA-ES in the dream or the real env, --resume"),
    ("evaluate", "commands.evaluate", "EvaluateConfig", "evaluate", True,
     "run the controller in the real env; prints mean/std return (and success, oracle for GridWorld)"),
    ("eval-dream", "commands.evaluate", "EvalDreamConfig", "eval_dream", True,
     "reconstruction MSE, codebook use and dream fidelity on held-out episodes, as JSON"),
    ("render", "commands.render", "RenderConfig", "run_render", True,
     "write an episode (real, dream, or side by side) to .mp4/.gif, or show it with --human"),
    ("play", "commands.play", "PlayConfig", "run_play", True,
     "drive the agent yourself inside the dream (arrow keys, R resets, Q quits)"),
    ("demo", "commands.demo", "DemoConfig", "run_demo", False,
     "the whole GridWorld pipeline: collect, V, M, C in the dream, evaluate, figures and videos"),
]
# (name, module, config class, function, help)
BENCHMARKS = [
    ("train", "commands.benchmark", "BenchmarkTrainConfig", "benchmark_train",
     "VQ-VAE images/s of wm-agent's pipeline vs a bare PyTorch loop"),
    ("dream", "commands.benchmark", "BenchmarkDreamConfig", "benchmark_dream",
     "batched dream steps/s vs the real GridWorld and CarRacing"),
    ("action-repeat", "commands.benchmark", "BenchmarkActionRepeatConfig", "benchmark_action_repeat",
     "WM-CarRacing-v0 frames/s and decisions/s for action repeats k = 1, 2, 4, 8, in one run"),
    ("seeds", "commands.seed_sweep", "BenchmarkSeedsConfig", "benchmark_seeds",
     "the GridWorld demo for each seed under two CPU kernel paths: the per-run table with min / median / max"),
]


# How each interrupted job continues (the others simply start again).
RESUME_HINTS = {
    "collect": " (re-run the same command to resume)",
    "demo": " (re-run the same command to resume)",
    **dict.fromkeys(("train-vae", "train-rnn"),
                    " (re-run the same command with --resume to continue from the last save)"),
    "train-controller": " (re-run the same command with --resume to continue from the last finished generation, or "
                        "update with --algo pg; a run stopped before its first one saved nothing and left the "
                        "checkpoint as it was)",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with ``command`` only that pipeline stage's options: the others are
    listed with their one-line help but their modules (and torch, and pycma) are not imported, so
    ``wm-agent --help`` and ``wm-agent collect`` start in a fraction of the time."""
    import importlib

    from wm_agent.commands.benchmark import BenchmarkCollectConfig
    from wm_agent.data.collect import CollectConfig

    parser = argparse.ArgumentParser(
        prog="wm-agent", description="World Models for Gymnasium: collect, train V/M/C, evaluate, render.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    collect = commands.add_parser(
        "collect", help="roll out a random/brownian policy into episode shards (resumable)",
        description="Roll out a data policy in parallel (worker processes, or one Gymnasium vector env with "
                    "--vectorization async|sync) into memory-mappable episode shards. Re-running the same "
                    "command resumes an interrupted collection.")
    add_dataclass_args(collect, CollectConfig, title="collection")
    collect.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                         help="show a progress bar (default: --progress)")
    collect.set_defaults(func=_cmd_collect)

    for name, module, config, func, emit_json, help_text in JOBS:
        if command is None or command == name:
            cls = getattr(importlib.import_module(f"wm_agent.{module}"), config)
            sub = commands.add_parser(name, help=help_text, description=(cls.__doc__ or help_text).strip())
            add_dataclass_args(sub, cls, title="settings")
        else:
            sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(func=_job(module, config, func, emit_json))

    benchmark = commands.add_parser("benchmark", help="measure throughput, or learning over seeds",
                                    description="Throughput checks, and the demo's result over seeds and CPU kernels.")
    benchmarks = benchmark.add_subparsers(dest="benchmark", required=True, metavar="WHAT")
    bench_collect = benchmarks.add_parser(
        "collect", help="collector frames/s against workers x the single-env rate, in one run",
        description="Measure one env's raw frame rate in this process and the collector's with K worker "
                    "processes (start-up and disk writes included), and print their ratio.")
    add_dataclass_args(bench_collect, BenchmarkCollectConfig, title="benchmark")
    bench_collect.set_defaults(func=_cmd_benchmark_collect)
    for name, module, config, func, help_text in BENCHMARKS:
        sub = benchmarks.add_parser(name, help=help_text, description=help_text)
        add_dataclass_args(sub, getattr(importlib.import_module(f"wm_agent.{module}"), config), title="benchmark")
        sub.set_defaults(func=_job(module, config, func, summary=False))
    for sub in _subcommand_parsers(parser):
        # Also after the subcommand; SUPPRESS keeps an earlier `wm-agent --debug` from being reset.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show full tracebacks for errors")
    return parser


def _subcommand_parsers(parser: argparse.ArgumentParser) -> typing.Iterator[argparse.ArgumentParser]:
    """Every parser below the top one (``collect``, ``benchmark``, ``benchmark dream``, ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _subcommand_parsers(sub)


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest (sub)parser that ``args`` went through (``wm-agent benchmark dream`` -> its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices:
            return _chosen_parser(action.choices[getattr(args, action.dest)], args)
    return parser


def _version() -> str:
    from wm_agent import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `--env my_envs:MyEnv-v0` imports my_envs the way `python -m` would find it, from the current folder
    # (a console script's path lacks it). Appended, so it never shadows an installed package; worker
    # processes inherit the path.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    stages = {job[0] for job in JOBS}
    parser = build_parser(next((a for a in argv if a in stages), ""))
    args, unknown = parser.parse_known_args(argv)  # bad arguments: usage message and exit status 2
    if unknown:  # told by the subcommand's parser, so the usage shown lists the options it does take
        _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    import gymnasium as gym

    from wm_agent.data.shard_writer import CollectionError

    # SIGTERM (`kill`, `timeout`, a job scheduler) stops a command as Ctrl-C does: the same saves on the
    # way out, worker processes stopped, temporary folders removed, one line said (the default action
    # would end the process on the spot, with none of that).
    terminated: list[int] = []

    def stop(signum, frame) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    on_term = (signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
               and threading.current_thread() is threading.main_thread())
    if on_term:
        signal.signal(signal.SIGTERM, stop)
    with warnings.catch_warnings():
        if not args.debug:  # warnings here are advice to the user, not to the code's author: no file or line
            warnings.showwarning = lambda message, category, *rest, **kw: print(
                f"{parser.prog}: warning: {message}", file=sys.stderr)
        try:
            return int(args.func(args) or 0)
        except BrokenPipeError:  # `wm-agent ... | head`: the reader left; nothing to say, and no one to say it to
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush does not raise again
            return 128 + getattr(signal, "SIGPIPE", 13)
        except (ValueError, OSError, CollectionError, RuntimeError, TypeError, FloatingPointError,
                gym.error.Error) as exc:  # OSError: a missing file, a folder where a file goes, a full disk...
            if args.debug:
                raise
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            how = "terminated" if terminated else "interrupted"
            print(f"{parser.prog}: {how}{RESUME_HINTS.get(args.command, '')}", file=sys.stderr)
            return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
        finally:
            if on_term:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
