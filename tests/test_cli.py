"""The wm-agent command line: collect, benchmark, argument errors, and the dataclass option helper."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from wm_agent.cli import add_dataclass_args, build_parser, dataclass_from_args, main
from wm_agent.data.dataset import EpisodeDataset

REPO = Path(__file__).resolve().parents[1]
TINY = ["--episodes", "3", "--episodes-per-shard", "2", "--max-steps", "6", "--no-progress"]


def test_collect_writes_a_dataset(tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path), "--seed", "4", *TINY]) == 0
    assert "3 episodes" in capsys.readouterr().out
    ds = EpisodeDataset(tmp_path)
    assert ds.num_episodes == 3 and ds.manifest["seed"] == 4 and ds.lengths.max() <= 6


def test_collect_passes_env_kwargs(tmp_path):
    assert main(["collect", "--out", str(tmp_path), "--env-kwargs", '{"size": 4}', *TINY]) == 0
    assert EpisodeDataset(tmp_path).manifest["env_kwargs"] == {"size": 4}


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["collect"], ["collect", "--out", "x", "--episodes", "many"],
     ["collect", "--out", "x", "--policy", "greedy"], ["collect", "--out", "x", "--env-kwargs", "[1, 2]"],
     ["collect", "--out", "x", "--env-kwargs", "{oops"], ["benchmark"], ["benchmark", "collect", "--steps", "1e9"]],
)
def test_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: wm-agent" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["collect --out d", "train-vae --data d --out m.pt", "evaluate --checkpoint m.pt",
                                     "render --checkpoint m.pt", "train-controller --world-model m.pt", "demo",
                                     "benchmark collect"])
def test_a_negative_seed_is_refused_alike_by_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "argument --seed: a seed must be >= 0, got -1" in capsys.readouterr().err


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path), *TINY]) == 0
    capsys.readouterr()
    assert main(["collect", "--out", str(tmp_path), "--seed", "9", *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wm-agent: error: ") and "different settings" in err and "Traceback" not in err
    assert main(["collect", "--out", str(tmp_path / "new"), "--env", "NoSuchEnv-v0", *TINY]) == 1
    assert "cannot make env 'NoSuchEnv-v0'" in capsys.readouterr().err


def test_collect_max_steps_0_is_the_envs_own_limit(tmp_path):
    argv = ["collect", "--out", str(tmp_path), "--episodes", "2", "--episodes-per-shard", "2", "--no-progress"]
    assert main([*argv, "--max-steps", "0"]) == 0
    assert EpisodeDataset(tmp_path).manifest["max_steps"] is None


def test_env_kwargs_the_env_does_not_take_are_one_line(tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path), "--env-kwargs", '{"size": "big"}', *TINY]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wm-agent: error: cannot make env 'WM-GridWorld-v0'") and "Traceback" not in err


def test_a_job_without_progress_still_says_what_it_did(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "wm.pt"
    assert main(["collect", "--out", str(data), *TINY]) == 0
    capsys.readouterr()
    assert main(["train-vae", "--data", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "8",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == f"done: checkpoint={out}, epochs_done=1"


@pytest.mark.parametrize("argv", [["--help"], ["collect", "--help"]])
def test_help_and_collect_start_without_torch(argv):
    """Only the stage being run is imported: `wm-agent --help` and `wm-agent collect` need neither torch nor pycma."""
    code = ("import sys\nfrom wm_agent.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'cma' in sys.modules)" % argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"


MY_ENVS = """
import gymnasium as gym
from envs import ImageObservation

def pixel_cartpole(**kwargs):
    return ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array", **kwargs), size=64)

gym.register("PixelCartPole-v0", entry_point=pixel_cartpole, max_episode_steps=20)
"""


def test_an_env_from_a_module_in_the_current_folder_reaches_the_workers(tmp_path):
    """The README's way to bring your own env: `--env my_envs:PixelCartPole-v0` from the folder holding
    my_envs.py, through the console script (whose path lacks that folder) and its worker processes."""
    (tmp_path / "my_envs.py").write_text(MY_ENVS)
    command = [str(Path(sys.executable).parent / "wm-agent")]
    if not Path(command[0]).exists():
        pytest.skip("the wm-agent console script is not installed next to this interpreter")
    result = subprocess.run([*command, "collect", "--env", "my_envs:PixelCartPole-v0", "--episodes", "2",
                             "--workers", "2", "--episodes-per-shard", "1", "--out", "data", "--no-progress"],
                            capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 episodes" in result.stdout and "in 2 shards of my_envs:PixelCartPole-v0" in result.stdout
    missing = subprocess.run([*command, "collect", "--env", "nowhere_envs:X-v0", "--out", "d2", "--no-progress"],
                             capture_output=True, text=True, cwd=tmp_path, check=False, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert ("cannot make env 'nowhere_envs:X-v0'" in missing.stderr
            and "No module named 'nowhere_envs'" in missing.stderr)


def test_version():
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_module_entry_point_exits_2_on_bad_arguments():
    result = subprocess.run([sys.executable, "-m", "wm_agent.cli", "collect", "--bogus"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "usage: wm-agent collect" in result.stderr and "Traceback" not in result.stderr


def test_scripts_run_from_a_clone():
    for script, expected in (("collect.py", "usage: wm-agent collect"), ("benchmark.py", "usage: wm-agent benchmark")):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"],
                                capture_output=True, text=True, cwd="/")
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout


def test_benchmark_collect_reports_both_rates(capsys):
    assert main(["benchmark", "collect", "--steps", "300", "--workers", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "raw single env" in out and "collector (K=1)" in out and "ratio collector / (1 x raw)" in out
    assert "round 2:" in out and "median" in out and "over 2 rounds" in out


def test_benchmark_collect_measures_a_vector_env_collector(capsys):
    assert main(["benchmark", "collect", "--steps", "300", "--workers", "2", "--rounds", "1",
                 "--vectorization", "sync"]) == 0
    out = capsys.readouterr().out
    assert "2 workers (sync)" in out and "collector (K=2)" in out and "ratio collector / (2 x raw)" in out
    assert "worker CPU-second" not in out  # sub-envs of a vector env report no CPU time


def test_collect_with_a_vector_env_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["collect", "--out", str(out), "--episodes", "3", "--workers", "2", "--vectorization", "sync",
                 "--max-steps", "6", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["episodes"] == 3 and "vectorization" not in manifest  # it does not change the data


def test_help_lists_the_config_docs():
    text = build_parser()._subparsers._group_actions[0].choices["collect"].format_help()
    assert "--episodes-per-shard" in text and "episodes per shard" in text and "(default: 100)" in text  # --episodes
    assert "0 or unset: at least 10" in " ".join(text.split())


# -- add_dataclass_args / dataclass_from_args ---------------------------------------------------------
@dataclass
class _Example:
    name: str = field(metadata={"help": "required, no default"})
    rate: float = field(default=0.5, metadata={"help": "a 50% chance"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "one of two"})
    limit: int | None = field(default=None, metadata={"help": "optional"})
    sizes: tuple[int, ...] = field(default=(1, 2), metadata={"help": "several ints"})
    verbose: bool = field(default=False, metadata={"help": "talk more"})
    extra: dict = field(default_factory=dict, metadata={"help": "JSON"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_dataclass_args(parser, _Example)
    return parser


def test_dataclass_round_trip_with_defaults():
    config = dataclass_from_args(_Example, _parser().parse_args(["--name", "x"]))
    assert config == _Example(name="x")


def test_dataclass_round_trip_with_every_kind_of_option():
    args = _parser().parse_args(["--name", "x", "--rate", "2", "--mode", "b", "--limit", "7", "--sizes", "3", "4",
                                 "5", "--verbose", "--extra", '{"k": [1]}'])
    config = dataclass_from_args(_Example, args, rate=3.0)
    assert config == _Example(name="x", rate=3.0, mode="b", limit=7, sizes=(3, 4, 5), verbose=True, extra={"k": [1]})


def test_dataclass_help_shows_metadata_and_defaults():
    text = _parser().format_help()
    assert "--name NAME" in text and "required, no default" in text
    assert "a 50% chance (default: 0.5)" in text and "--no-verbose" in text and "{a,b}" in text


def test_warnings_are_one_line_advice(tmp_path, capsys):
    """A library warning reaches a CLI user as `wm-agent: warning: ...`, without our file and line."""
    assert main(["collect", "--out", str(tmp_path), "--episodes", "2", "--workers", "2", "--max-steps", "4",
                 "--episodes-per-shard", "10", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["wm-agent: warning: 2 episodes make 1 shard of up to 10 episodes, so only 1 of 2 workers "
                   "can run; fewer episodes per shard (episodes_per_shard, --episodes-per-shard) would use them all"]


def test_an_unset_optional_is_not_shown_as_default_none(capsys):
    for command in ("render", "collect"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "dream temperature (default: 1.0 with --dream, 0 with --side-by-side) --greedy" in text


@pytest.mark.parametrize("argv, usage", [
    (["render", "--checkpoint", "x.pt", "--frobnicate"], "usage: wm-agent render"),
    (["collect", "--out", "x", "--frobnicate", "3"], "usage: wm-agent collect"),
    (["benchmark", "dream", "--frobnicate"], "usage: wm-agent benchmark dream"),
])
def test_an_unknown_option_is_told_with_the_subcommands_usage(argv, usage, capsys):
    """The usage printed is the one whose options the user can pick from, not the top-level one."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert usage in err and "unrecognized arguments: --frobnicate" in err


def test_dataclass_required_fields_and_unsupported_types():
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # --name is required

    @dataclass
    class Bad:
        thing: object = None

    with pytest.raises(TypeError, match="unsupported type"):
        add_dataclass_args(argparse.ArgumentParser(), Bad)


@pytest.mark.parametrize("script", ["demo", "train_vae", "train_rnn", "train_controller", "evaluate", "render"])
def test_scripts_are_runnable_wrappers_from_anywhere(script, tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "scripts" / f"{script}.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: wm-agent {script.replace('_', '-')}" in out.stdout


def test_frame_codec_script_times_every_codec(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "measure_frame_codecs.py"), "--steps", "300",
                          "--frames", "40"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["frame_bytes"] == 64 * 64 * 3 and result["palette_bytes"] == 64 * 64
    for key in ("env_step_us", "zlib1_us", "palette_us", "lz4_us", "lz4_decompress_us"):
        assert result[key] > 0, key
    assert 0 < result["zlib1_bytes"] < result["frame_bytes"]  # GridWorld frames are mostly flat colour
    assert 0 < result["lz4_bytes"] < result["frame_bytes"] / 10
    assert 3 <= result["palette_colours"] <= 255
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "measure_frame_codecs.py"), "--frames", "0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "frames" in bad.stderr


def test_collector_overhead_script_times_every_loop(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "measure_collector_overhead.py"
    out = subprocess.run([sys.executable, str(script), "--pairs", "2", "--pair-episodes", "3", "--scaling", "1",
                          "--scaling-episodes", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["pairs"] == 2 and result["us_per_frame_dropped"] > 0 and result["us_per_frame_lz4"] > 0
    assert 0 < result["dropped_over_lz4_time"] < 5 and "instructions_per_frame_lz4" not in result
    assert result["us_per_frame_copy"] > 0 and 0 < result["dropped_over_copy_time"] < 5
    assert len(result["fps_alone"]) == len(result["fps_per_process_together_lz4"]) == 1
    assert 0 < result["scaling"] < 5 and 0 < result["together_lz4_over_alone"] < 5
    bad = subprocess.run([sys.executable, str(script), "--instructions", "--episodes", "9", "3"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "FEW < MANY" in bad.stderr


def test_shard_size_script_compares_the_default_with_a_given_size(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "measure_shard_size.py"
    out = subprocess.run([sys.executable, str(script), "--episodes", "12", "--workers", "1", "--runs", "2",
                          "--sizes", "0", "5"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [r["episodes_per_shard"] for r in result["runs"]] == [98, 5, 5, 98]  # 0: the default; order alternates
    assert [r["shards"] for r in result["runs"]] == [1, 3, 3, 1] and all(r["frames"] > 12 for r in result["runs"])
    assert set(result["median_frames_per_s"]) == {"0", "5"} and min(result["median_frames_per_s"].values()) > 0
    bad = subprocess.run([sys.executable, str(script), "--sizes", "-1"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--sizes" in bad.stderr


def test_the_carracing_pipeline_script_runs_every_stage_at_a_tiny_size(tmp_path):
    """scripts/train_carracing.sh (the GPU run in the README) on a few 12-step episodes: each stage runs,
    the checkpoint holds V, M and C, and the evaluation's JSON is logged."""
    import os

    from wm_agent.world_model import WorldModel

    settings = {"PYTHON": sys.executable, "BUDGET": "500", "WORKERS": "1", "EPISODES": "2", "MAX_STEPS": "12",
                "VAE_EPOCHS": "1", "RNN_EPOCHS": "1", "GENERATIONS": "1", "POPSIZE": "4", "ROLLOUTS": "1",
                "EVAL_EPISODES": "1", "DEVICE": "cpu"}
    run = tmp_path / "run"
    out = subprocess.run(["bash", str(REPO / "scripts" / "train_carracing.sh"), str(run)], cwd=tmp_path,
                         env={**os.environ, **settings}, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (run / "stages.log").read_text()
    for stage in ("collect", "train-vae", "train-rnn", "train-controller", "evaluate"):
        assert f"{stage}: done" in log, log
    wm = WorldModel.load(run / "car.pt")
    assert wm.env_id == "WM-CarRacing-v0" and wm.train_state["rnn"]["epoch"] == 1
    assert len(wm.train_state["cmaes"]["log"]) == 1
    evaluation = (run / "evaluate.log").read_text()
    result = json.loads(evaluation[evaluation.index("{"):])
    assert result["episodes"] == 1 and result["mean_steps"] == 12

    # A stage that fails stops the script with its exit status; the stages after it do not run.
    failed = subprocess.run(["bash", str(REPO / "scripts" / "train_carracing.sh"), str(tmp_path / "bad")],
                            cwd=tmp_path, env={**os.environ, **settings, "VAE_EPOCHS": "-1"}, capture_output=True,
                            text=True, timeout=600, check=False)
    log = (tmp_path / "bad" / "stages.log").read_text()
    assert failed.returncode == 1 and "train-vae: failed (exit 1); stopping" in log, log
    assert "train-rnn" not in log and not (tmp_path / "bad" / "car.pt").exists()


def test_the_carracing_pipeline_script_passes_action_repeat_and_the_training_cut(tmp_path):
    """ACTION_REPEAT reaches the data's env kwargs (so every later stage uses it), STOP_AFTER_NEGATIVE the
    real-env search."""
    import os

    from wm_agent.world_model import WorldModel

    settings = {"PYTHON": sys.executable, "BUDGET": "500", "WORKERS": "1", "EPISODES": "2", "MAX_STEPS": "6",
                "VAE_EPOCHS": "1", "RNN_EPOCHS": "1", "GENERATIONS": "1", "POPSIZE": "2", "EVAL_EPISODES": "1",
                "DEVICE": "cpu", "WHERE": "real", "ACTION_REPEAT": "2", "STOP_AFTER_NEGATIVE": "3"}
    run = tmp_path / "run"
    out = subprocess.run(["bash", str(REPO / "scripts" / "train_carracing.sh"), str(run)], cwd=tmp_path,
                         env={**os.environ, **settings}, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    wm = WorldModel.load(run / "car.pt")
    assert wm.env_kwargs == {"action_repeat": 2}
    assert wm.train_state["cmaes"]["where"] == "real" and wm.train_state["cmaes"]["stop_after_negative"] == 3


# -- stopping a command: one line, nothing left behind ----------------------------------------------
def _wm_agent(argv: list[str], **kwargs) -> subprocess.Popen:
    """``wm-agent ARGV`` as its own process, in its own session (a terminal's process group)."""
    import os

    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "wm_agent.cli", *argv], env=env, start_new_session=True,
                            text=True, **kwargs)


def _children(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            for child in map(int, task.read_text().split()):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _gone(pids: set[int], timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"}
        if not alive:
            return True
        time.sleep(0.1)
    return False


def _wait_for_workers(proc: subprocess.Popen, count: int, timeout: float = 120.0) -> set[int]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        children = _children(proc.pid)
        if len(children) >= count:
            return children
        time.sleep(0.05)
    pytest.fail(f"the command did not start {count} processes (exit status {proc.poll()})")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_sigterm_stops_collect_like_ctrl_c_and_leaves_nothing_behind(tmp_path):
    import signal
    import time

    out = tmp_path / "data"
    proc = _wm_agent(["collect", "--out", str(out), "--episodes", "20000", "--workers", "2", "--no-progress"],
                     stderr=subprocess.PIPE)
    workers = _wait_for_workers(proc, 3)  # the forkserver and two workers
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["wm-agent: terminated (re-run the same command to resume)"]
    assert _gone(workers)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no half-written shard folder


@pytest.fixture(scope="module")
def evaluable_checkpoint(tmp_path_factory) -> Path:
    from helpers import tiny_world_model

    path = tmp_path_factory.mktemp("ckpt") / "wm.pt"
    wm = tiny_world_model()
    wm.train_state["cmaes"] = {"generation": 1}  # no "never trained" warning on stderr
    wm.save(path)
    return path


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_ctrl_c_reaching_every_worker_prints_one_line(evaluable_checkpoint):
    """A terminal's Ctrl-C goes to the whole process group: the workers (importing torch, or rolling out)
    must not each print a KeyboardInterrupt traceback; the command says one line and stops them."""
    import os
    import signal
    import time

    proc = _wm_agent(["evaluate", "--checkpoint", str(evaluable_checkpoint), "--episodes", "5000", "--workers", "2",
                      "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers = _wait_for_workers(proc, 3)  # the resource tracker and two workers
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert err.strip().splitlines() == ["wm-agent: interrupted"], err
    assert proc.returncode == 128 + signal.SIGINT
    assert _gone(workers)


def test_a_reader_that_leaves_early_is_no_error(evaluable_checkpoint):
    """`wm-agent evaluate ... | head -1`: the pipe closes before the JSON is written."""
    import signal

    proc = _wm_agent(["evaluate", "--checkpoint", str(evaluable_checkpoint), "--episodes", "2", "--no-progress"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert err == "" and proc.returncode == 128 + signal.SIGPIPE


def test_carracing_probe_scores_readouts_on_unseen_episodes_and_refuses_bad_input(tmp_path):
    """The probe's readouts: near-perfect on a linear target, near zero (or below) on noise; bad input refused."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import carracing_probe
    finally:
        sys.path.remove(str(root / "benchmarks"))
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(50, 12)) for _ in range(10)]
    linear = [xs @ np.arange(12.0) + 3.0 for xs in x]
    assert carracing_probe.r_squared(x, linear, 12) > 0.999
    assert carracing_probe.r_squared(x, [rng.normal(size=50) for _ in x], 12) < 0.1
    script, pretrained = root / "benchmarks" / "carracing_probe.py", root / "wm_agent" / "pretrained"
    for args, said in (([str(pretrained / "gridworld.pt")], "a CarRacing checkpoint is needed"),
                       ([str(pretrained / "carracing.pt"), "--episodes", "4"], "--episodes must be at least 10"),
                       ([str(pretrained / "carracing.pt"), "--directions", "0"], "--directions must be at least 1")):
        bad = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode != 0 and said in bad.stderr, bad.stderr


def test_carracing_progress_script_drives_carracing_and_refuses_other_envs(tmp_path):
    """One whole CarRacing episode of the shipped agent, summed up in a line; GridWorld's checkpoint refused."""
    root = Path(__file__).resolve().parents[1]
    script, pretrained = root / "benchmarks" / "carracing_progress.py", root / "wm_agent" / "pretrained"
    out = subprocess.run([sys.executable, str(script), str(pretrained / "carracing.pt"), "--episodes", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"seed 300: return -?\d+\.\d, tiles \d+/\d+ \(\d+%\), by quarter \[.*\], speed mean .*, "
                        r"off the road \d+, held still by gas and brake \d+\n", out.stdout)
    bad = subprocess.run([sys.executable, str(script), str(pretrained / "gridworld.pt")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "a CarRacing checkpoint is needed" in bad.stderr


def test_carracing_learning_curve_counts_each_runs_frames_at_its_own_action_repeat():
    """Real frames = decisions x the repeat a run drove at: its saved env_kwargs; else, for the last run, the
    checkpoint's, and for earlier ones the data's (they ran before train-controller --env-kwargs existed)."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import carracing_learning_curve
    finally:
        sys.path.remove(str(root / "benchmarks"))
    rows = [{"real_env_steps": 10, "mean": 1.0}, {"real_env_steps": 20, "mean": 2.0, "selection_score": 5.0}]
    earlier = [{"algo": "cmaes", "where": "real", "log": rows},  # the data's repeat, 4
               {"algo": "cmaes", "where": "dream", "log": rows},  # no real frames
               {"algo": "cmaes", "where": "real", "log": rows, "env_kwargs": {"action_repeat": 2}}]
    state = {"env_kwargs": {"action_repeat": 3},
             "train_state": {"vae": {"data": {"env_kwargs": {"action_repeat": 4}}},
                             "cmaes": {"where": "real", "log": rows, "earlier": earlier}}}
    assert carracing_learning_curve.real_history(state) == [(40, 1.0), (80, 2.0), (100, 1.0), (120, 2.0),
                                                            (150, 1.0), (180, 2.0)]
    assert carracing_learning_curve.real_history(state, "selection_score") == [(80, 5.0), (120, 5.0), (180, 5.0)]
