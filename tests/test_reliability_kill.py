"""Faults lose nothing: SIGKILL each stage of the real CLI mid-run, re-run it, and get a whole result.

Every stage runs the real ``wm_agent.cli.main`` as its own process, in its own session (so the test can
find, and finally stop, any process it leaves behind). It is killed with SIGKILL -- no handler, no
``finally`` -- at a seeded random moment while it works (after a random number of finished shards,
epochs or generations, plus a random delay), then re-run with ``--resume`` (``collect`` resumes by
re-running the same command). The re-run must finish with the result an uninterrupted run gives, and
nothing half-written may be left next to the outputs.

Interpreter start-up (torch + cma imports) costs ~5 s per command on a busy 2-core box, so commands are
forked from one launcher that has imported them already (see ``_LAUNCHER``); data and models are tiny.
Commands run with one torch thread: on an oversubscribed CPU two OpenMP threads made these small
batches ~50x slower.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wm_agent.data.collect import DataCollector
from wm_agent.config import WorldModelConfig
from wm_agent.data.dataset import EpisodeDataset
from wm_agent.data.shards import SHARD_FILES
from wm_agent.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy", "PYTHONUNBUFFERED": "1"}
# A few thousand weights: the CLI's stages after train-vae take their sizes from the checkpoint.
TINY = dict(channels=(4, 4, 4), hidden_size=16, head_hidden=8, context_channels=4)
START_TIMEOUT = 120.0  # seconds a command may take to show that it is working (a loaded CI box)
RUN_TIMEOUT = 240.0
SEED = 20240607  # the kill moments are random but repeatable


# ------------------------------------------------------------------------------------------------
# Running, watching and killing a command
# ------------------------------------------------------------------------------------------------
# Each command is a separate process running the real ``wm_agent.cli.main`` (or, for one test, a code
# snippet), forked from a launcher that has already imported torch, cma and gymnasium, so the ~5 s import
# is paid once per module instead of once per command. The launcher is single-threaded when it forks
# (one torch/OpenMP/BLAS thread, nothing started yet), and the child ends the way a real ``wm-agent``
# process ends: ``sys.exit(main(argv))``, atexit handlers and an uncaught exception's traceback included.
_LAUNCHER = r"""
import gc, json, os, sys
import wm_agent.cli as cli
cli.build_parser()  # imports every stage's module now, so forked commands start at once
import torch._dynamo  # imported by the first torch.optim.Adam (~2 s)
gc.freeze()  # or every child's garbage collection and exit would copy the launcher's whole heap
request = None
while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)  # the test module is done
    request = json.loads(line)
    if request["op"] == "wait":
        _, status = os.waitpid(request["pid"], 0)
        reply = {"returncode": os.waitstatus_to_exitcode(status)}
    else:
        pid = os.fork()
        if pid == 0:
            break
        reply = {"pid": pid}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
# The child: its own session, the command's folder and output files, none of the launcher's pipes.
os.setsid()
os.chdir(request["cwd"])
for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                        (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
    new = os.open(path, flags, 0o644)
    os.dup2(new, fd)
    os.close(new)
if request.get("code"):
    sys.argv = ["-c", *request["argv"]]
    exec(compile(request["code"], "<command>", "exec"), {"__name__": "__main__"})
    sys.exit(0)
sys.argv = ["wm-agent", *request["argv"]]
sys.exit(cli.main(request["argv"]))
"""


class Launcher:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER], cwd=REPO, env=ENV, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the command launcher died (exit status {self.proc.wait()})")
        return json.loads(line)

    def spawn(self, argv: list[str], cwd: Path, out: Path, err: Path, code: str | None = None) -> int:
        return self._ask(op="spawn", argv=argv, cwd=str(cwd), out=str(out), err=str(err), code=code)["pid"]

    def reap(self, pid: int) -> int:
        """Exit status of an exited child (negative: killed by that signal)."""
        return self._ask(op="wait", pid=pid)["returncode"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def launcher():
    launcher = Launcher()
    yield launcher
    launcher.close()


def _proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` (``Z`` for an exited, unreaped child), None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


class Command:
    """``wm-agent ARGS`` as its own process (and process group), its output in files."""

    def __init__(self, launcher: Launcher, args: list[str], cwd: Path, name: str, code: str | None = None):
        self.launcher, self.args, self.cwd = launcher, args, cwd
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        self.started = time.monotonic()
        self.pid = launcher.spawn(args, cwd, self.out_path, self.err_path, code)
        self.pgid = self.pid  # setsid: the command leads its own process group
        self.returncode: int | None = None

    @property
    def stderr(self) -> str:
        return self.err_path.read_text() if self.err_path.exists() else ""

    @property
    def stdout(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def poll(self) -> int | None:
        if self.returncode is None and _proc_state(self.pid) in ("Z", "X", None):
            self.returncode = self.launcher.reap(self.pid)
        return self.returncode

    def wait_until(self, ready, timeout: float = START_TIMEOUT) -> bool:
        """Poll ``ready()`` until it holds (True) or the command has exited (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return True
            if self.poll() is not None:
                return bool(ready())
            time.sleep(0.005)
        self.kill_group()
        pytest.fail(f"`wm-agent {' '.join(self.args)}` showed no progress within {timeout:.0f} s:\n{self.stderr}")

    def kill(self) -> bool:
        """SIGKILL the command's own process (as the OOM killer would); True if it was still running."""
        if self.poll() is not None:
            return False
        os.kill(self.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.001)
        return self.returncode == -signal.SIGKILL

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill_group()
                pytest.fail(f"`wm-agent {' '.join(self.args)}` did not finish within {timeout:.0f} s:\n{self.stderr}")
            time.sleep(0.01)
        return self.returncode

    def group_members(self) -> list[int]:
        """Live processes still in this command's process group (zombies excluded)."""
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                members.append(int(entry.name))
        return members

    def kill_group(self) -> None:
        """Stop everything this test started under this command (its own process group, by id).

        The group id is only signalled while it is certainly still ours: while the command itself is
        unreaped, or while processes it left behind still carry it (a live group's id is never reused)."""
        if self.poll() is None or self.group_members():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        while self.poll() is None:
            time.sleep(0.001)


@pytest.fixture
def commands(launcher):
    started: list[Command] = []

    def start(args, cwd, name, code=None) -> Command:
        command = Command(launcher, args, cwd, name, code)
        started.append(command)
        return command

    yield start
    for command in started:
        command.kill_group()


def run_ok(commands, args, cwd, name) -> Command:
    command = commands(args, cwd, name)
    rc = command.finish()
    assert rc == 0, f"`wm-agent {' '.join(args)}` exited {rc}:\n{command.stderr}"
    return command


def kill_at_random_moment(commands, args, cwd, progress, last: int, max_delay: float, rng: random.Random) -> dict:
    """Start ``args``; SIGKILL it at a seeded random moment while it works: once ``progress()`` (units
    finished: epochs, generations, shards) reaches a random ``at`` in [1, last], after a random delay
    in [0, max_delay]. ``last`` is chosen so that work always remains at that moment."""
    at, delay = rng.randint(1, last), rng.uniform(0.0, max_delay)
    command = commands(args, cwd, "killed")
    working = command.wait_until(lambda: progress() >= at)
    time.sleep(delay)
    done = progress()
    killed = command.kill()
    assert killed or command.returncode == 0, f"the first run failed by itself:\n{command.stderr}"
    assert working and killed, (f"the first run was meant to be killed after {at} units + {delay:.3f} s, but it "
                                f"{'finished' if command.returncode == 0 else 'never progressed'} first:\n"
                                f"{command.stderr}")
    return {"command": command, "at": at, "delay": delay, "progress_at_kill": done}


def metric_lines(path: Path):
    """Progress of train-vae/train-rnn: epochs logged to ``<checkpoint>.metrics.jsonl``."""
    return lambda: len(path.read_text().splitlines()) if path.exists() else 0


def describe(pids: list[int]) -> list[str]:
    """``pid: command line`` of each process, for messages."""
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
        except OSError:
            continue
        out.append(f"{pid}: {cmdline}")
    return out


def temp_leftovers(folder: Path) -> list[str]:
    """Half-written files/folders of an interrupted write: ``.NAME.XXXX.tmp.EXT``, ``.tmp-*``, ``.trash-*``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".tmp" in p.name or p.name.startswith(".trash-"))


def assert_no_leftovers(folder: Path) -> None:
    """Nothing half-written may remain after the resumed run: a temp file that a SIGKILL cut short is
    deleted by the next save of the same file (``wm_agent.io.atomic_path``), a temporary shard folder
    by the collector's next scan."""
    leftovers = temp_leftovers(folder)
    assert leftovers == [], f"half-written files outlived the resumed run: {leftovers}"


def tiny_checkpoint(path: Path, data: Path, stages=("vae",), seed: int = 0) -> None:
    """A tiny world model whose VQ-VAE counts as trained (the CLI's later stages keep its sizes)."""
    ds = EpisodeDataset(data)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wm = WorldModel(WorldModelConfig.gridworld(**TINY), ds.env_id)
    wm.set_start_frames(ds.frames(np.asarray(ds.frame_offsets)))
    wm.train_state = {stage: {"epoch": 1} for stage in stages}
    wm.save(path)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """8 GridWorld episodes of at most 15 steps (~120 frames) in 2 shards."""
    root = tmp_path_factory.mktemp("small_data")
    DataCollector("WM-GridWorld-v0", root, seed=3, episodes_per_shard=4, max_steps=15).collect(8, progress=False)
    return root


@pytest.fixture
def one_torch_thread():
    """In-process reference runs use one thread, like the subprocesses (same arithmetic, and fast)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _state(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _metric_epochs(path: Path, stage: str) -> list[int]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [m["epoch"] for m in lines if m.get("stage") == stage]


# ------------------------------------------------------------------------------------------------
# collect: SIGKILL the parent of 2 workers, then re-run the same command
# ------------------------------------------------------------------------------------------------
COLLECT = ["collect", "--out", "data", "--episodes", "120", "--workers", "2", "--episodes-per-shard", "2",
           "--seed", "7", "--no-progress"]


@pytest.fixture(scope="module")
def killed_collect(tmp_path_factory, launcher):
    """One SIGKILLed ``collect`` and its re-run, shared by the tests below (interpreter start-up is the cost)."""
    root = tmp_path_factory.mktemp("kill_collect")
    rng = random.Random(f"{SEED}-collect")
    first = Command(launcher, COLLECT, root, "killed")
    try:
        out = root / "data"
        # Shard folders written by the workers (of 60; the manifest lags behind them by an fsync), then seconds.
        at, delay = rng.randint(1, 10), rng.uniform(0.0, 0.01)
        working = first.wait_until(lambda: _shard_folders(out) >= at)
        time.sleep(delay)
        killed = first.kill()
        manifest_at_kill = json.loads((out / "manifest.json").read_text())
        # The killed command's worker processes: given a moment to notice that their parent is gone.
        deadline = time.monotonic() + 3.0
        while first.group_members() and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = describe(first.group_members())

        second = Command(launcher, COLLECT, root, "resumed")
        rc = second.finish()
        deadline = time.monotonic() + 5.0
        while second.group_members() and time.monotonic() < deadline:
            time.sleep(0.1)
        second_members = describe(second.group_members())
        yield {"root": root, "out": out, "killed": killed, "working": working, "delay": delay, "rc": rc,
               "stderr": second.stderr, "stdout": second.stdout, "shards_at_kill": len(manifest_at_kill["shards"]),
               "orphans": orphans, "second_members": second_members}
    finally:
        first.kill_group()


def _shard_folders(out: Path) -> int:
    try:
        return sum(1 for p in out.iterdir() if p.name.startswith("shard_"))
    except OSError:
        return 0


def test_kill_collect_then_rerun_gives_the_uninterrupted_dataset(killed_collect, tmp_path):
    k = killed_collect
    assert k["working"] and k["killed"], "the first run was not killed while it worked"
    assert k["shards_at_kill"] < 60
    assert k["rc"] == 0, k["stderr"]
    assert "120 episodes" in k["stdout"]
    ds = EpisodeDataset(k["out"])
    manifest = ds.manifest
    assert [s["name"] for s in manifest["shards"]] == [f"shard_{i:05d}" for i in range(60)]
    assert ds.num_episodes == 120 and manifest["episodes"] == 120 and manifest["frames"] == ds.num_frames

    # Byte for byte what an uninterrupted run writes (shard i depends only on (seed, i)).
    reference = tmp_path / "reference"
    DataCollector("WM-GridWorld-v0", reference, seed=7, episodes_per_shard=2).collect(120, progress=False)
    for shard in manifest["shards"]:
        for key in SHARD_FILES:
            name = f"{shard['name']}/{key}.npy"
            assert (k["out"] / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((reference / "manifest.json").read_text())["shards"] == manifest["shards"]
    visible = sorted(p.name for p in k["out"].iterdir() if not p.name.startswith("."))
    assert visible == ["manifest.json"] + [f"shard_{i:05d}" for i in range(60)]
    assert_no_leftovers(k["out"])


def test_kill_collect_leaves_no_worker_processes_behind(killed_collect):
    assert killed_collect["killed"], "the run finished before the kill; nothing to check"
    orphans = killed_collect["orphans"]
    assert orphans == [], f"processes of the killed collect still alive 3 s later: {orphans}"


def test_a_finished_collect_leaves_no_processes_behind(killed_collect):
    assert killed_collect["second_members"] == []


# ------------------------------------------------------------------------------------------------
# train-vae (the default GridWorld preset, a fresh run), killed after its first checkpoint
# ------------------------------------------------------------------------------------------------
def test_kill_train_vae_then_resume_finishes_all_epochs(small_data, tmp_path, commands):
    epochs = 6
    args = ["train-vae", "--data", str(small_data), "--out", "wm.pt", "--epochs", str(epochs),
            "--batch-size", "64", "--no-progress"]
    ckpt = tmp_path / "wm.pt"
    k = kill_at_random_moment(commands, args, tmp_path, metric_lines(tmp_path / "wm.pt.metrics.jsonl"), epochs - 2,
                              0.1, random.Random(f"{SEED}-vae"))
    # Whatever the moment, the file on disk is a whole checkpoint of a finished epoch.
    assert k["at"] <= WorldModel.load(ckpt).train_state["vae"]["epoch"] < epochs

    run_ok(commands, args + ["--resume"], tmp_path, "resumed")
    wm = WorldModel.load(ckpt)
    assert wm.train_state["vae"]["epoch"] == epochs and wm.env_id == "WM-GridWorld-v0"
    assert wm.config == WorldModelConfig.gridworld(action_dim=4, discrete_actions=True)
    assert len(wm.start_codes) == 8  # one per episode of the data, kept from the first run
    epochs_logged = _metric_epochs(tmp_path / "wm.pt.metrics.jsonl", "vae")
    assert epochs_logged == sorted(set(epochs_logged)) and epochs_logged[-1] == epochs
    assert_no_leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------
# train-rnn (tiny model), killed after its first epoch; the resumed weights equal an uninterrupted run's
# ------------------------------------------------------------------------------------------------
def test_kill_train_rnn_then_resume_matches_an_uninterrupted_run(small_data, tmp_path, commands, one_torch_thread):
    from wm_agent.commands.train import TrainRNNConfig, run_train_rnn

    epochs = 15
    ckpt = tmp_path / "wm.pt"
    tiny_checkpoint(ckpt, small_data)
    reference = tmp_path / "reference.pt"
    shutil.copy(ckpt, reference)
    args = ["train-rnn", "--data", str(small_data), "--world-model", "wm.pt", "--epochs", str(epochs),
            "--seq-len", "8", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    metrics = tmp_path / "wm.pt.metrics.jsonl"
    k = kill_at_random_moment(commands, args, tmp_path, metric_lines(metrics), epochs - 5, 0.05,
                              random.Random(f"{SEED}-rnn"))
    assert k["at"] <= WorldModel.load(ckpt).train_state["rnn"]["epoch"] < epochs

    run_ok(commands, args + ["--resume"], tmp_path, "resumed")
    wm = WorldModel.load(ckpt)
    assert wm.train_state["rnn"]["epoch"] == epochs
    epochs_logged = _metric_epochs(metrics, "rnn")
    assert epochs_logged == sorted(set(epochs_logged)) and epochs_logged[-1] == epochs

    # The same command, never interrupted (in this process, one torch thread like the subprocesses).
    run_train_rnn(TrainRNNConfig(data=str(small_data), world_model=str(reference), epochs=epochs, seq_len=8,
                                 batch_size=4, device="cpu", progress=False))
    expected = WorldModel.load(reference)
    for name, tensor in expected.rnn.state_dict().items():
        torch.testing.assert_close(wm.rnn.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert_no_leftovers(tmp_path)


def test_sigterm_saves_and_resume_finishes(small_data, tmp_path, commands):
    """SIGTERM (what `kill`, systemd or a batch scheduler sends) saves the weights and exits 130."""
    epochs = 15
    ckpt = tmp_path / "wm.pt"
    tiny_checkpoint(ckpt, small_data)
    args = ["train-rnn", "--data", str(small_data), "--world-model", "wm.pt", "--epochs", str(epochs),
            "--seq-len", "8", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    metrics = tmp_path / "wm.pt.metrics.jsonl"
    rng = random.Random(f"{SEED}-sigterm")
    at, delay = rng.randint(1, epochs - 5), rng.uniform(0.0, 0.05)
    command = commands(args, tmp_path, "terminated")
    assert command.wait_until(lambda: metric_lines(metrics)() >= at), command.stderr
    time.sleep(delay)
    assert command.poll() is None, "it finished before the signal"
    os.kill(command.pid, signal.SIGTERM)
    rc = command.finish()
    assert rc == 130, f"exit status {rc}:\n{command.stderr}"
    assert "interrupted" in command.stderr and "Traceback" not in command.stderr, command.stderr
    assert "--resume" in command.stdout + command.stderr
    assert at <= WorldModel.load(ckpt).train_state["rnn"]["epoch"] < epochs
    run_ok(commands, args + ["--resume"], tmp_path, "resumed")
    assert WorldModel.load(ckpt).train_state["rnn"]["epoch"] == epochs
    assert temp_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# train-controller in the dream (tiny model), killed after a generation; then a real-env run whose
# worker overruns --timeout: a clear error, and the CMA-ES state survives
# ------------------------------------------------------------------------------------------------
def _generations(path: Path) -> int:
    """Progress of train-controller: CMA-ES generations saved in the checkpoint (replaced atomically)."""
    return int(_state(path)["train_state"].get("cmaes", {}).get("generation", 0))


def test_kill_train_controller_then_resume_then_worker_timeout(small_data, tmp_path, commands):
    generations = 12
    ckpt = tmp_path / "wm.pt"
    tiny_checkpoint(ckpt, small_data, stages=("vae", "rnn"))
    args = ["train-controller", "--world-model", "wm.pt", "--popsize", "4", "--rollouts", "2",
            "--generations", str(generations), "--max-steps", "20", "--device", "cpu", "--no-progress"]
    k = kill_at_random_moment(commands, args, tmp_path, lambda: _generations(ckpt), generations - 4, 0.05,
                              random.Random(f"{SEED}-controller"))
    assert k["at"] <= WorldModel.load(ckpt).train_state["cmaes"]["generation"] < generations

    run_ok(commands, args + ["--resume"], tmp_path, "resumed")
    state = WorldModel.load(ckpt).train_state["cmaes"]
    assert state["generation"] == generations
    assert [entry["generation"] for entry in state["log"]] == list(range(1, generations + 1))
    assert np.isfinite(state["best_fitness"]) and torch.isfinite(state["mean"]).all()

    # A new search --in real (--overwrite: a dream search cannot be resumed in the real env) with a timeout
    # no worker can meet (a spawned worker needs seconds to import torch): the saved search stays as it was.
    before = _state(ckpt)["train_state"]["cmaes"]
    real = commands(["train-controller", "--world-model", "wm.pt", "--in", "real", "--overwrite", "--popsize", "4",
                    "--rollouts", "1", "--generations", str(generations + 1), "--workers", "1", "--timeout", "0.05",
                    "--max-steps", "20", "--device", "cpu", "--no-progress"], tmp_path, "real")
    rc = real.finish(timeout=90)
    seconds = time.monotonic() - real.started
    err = real.stderr
    assert rc == 1, f"exit status {rc}:\n{err}"
    assert "did not finish within 0.05 s" in err and "Traceback" not in err, err
    assert seconds < 60, f"the overrunning worker was only given up on after {seconds:.0f} s"
    after = WorldModel.load(ckpt).train_state["cmaes"]
    assert after["generation"] == before["generation"] == generations
    torch.testing.assert_close(after["mean"], before["mean"], rtol=0, atol=0)
    assert after["log"] == before["log"]
    # The timed-out worker was stopped, not left running.
    deadline = time.monotonic() + 5.0
    while real.group_members() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert real.group_members() == []
    assert_no_leftovers(tmp_path)


# ------------------------------------------------------------------------------------------------
# A save cut short by SIGKILL: the old file survives; the temp file should not outlive the next save
# ------------------------------------------------------------------------------------------------
_SLOW_SAVE = """
import sys, time, torch
import wm_agent.io as io
real_save = torch.save
def slow_save(obj, f):
    with open(f, "wb") as out:
        out.write(b"PK\\x03\\x04 half of a checkpoint")
        out.flush()
        time.sleep(120)
torch.save = slow_save
io.save_torch({"new": torch.ones(3)}, sys.argv[1])
"""


def test_a_save_cut_by_sigkill_leaves_no_temp_file(tmp_path, commands):
    from wm_agent.io import load_torch, save_torch

    path = tmp_path / "wm.pt"
    save_torch({"old": torch.zeros(2)}, path)
    saver = commands([str(path)], tmp_path, "slow_save", code=_SLOW_SAVE)
    assert saver.wait_until(lambda: any(p.stat().st_size for p in tmp_path.glob(".wm.pt.*.tmp.pt"))), saver.stderr
    assert saver.kill()
    # What matters most holds: the checkpoint on disk is the old one, whole.
    assert list(load_torch(path)) == ["old"]
    save_torch({"newer": torch.ones(1)}, path)  # what every resumed stage does next
    assert list(load_torch(path)) == ["newer"]
    assert temp_leftovers(tmp_path) == []
