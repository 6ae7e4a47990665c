"""Bad input gets a clear error, through the public surfaces and the ``wm-agent`` command line.

The angle here is end to end: what a user meets when a file is damaged, foreign or hostile, when an
argument is nonsense, or when training blows up. Every CLI failure must exit with a non-zero status
and one ``wm-agent: error: ...`` line naming the file or option at fault -- never a traceback -- and
no hostile file may run code. (Unit-level checks of the same classes live in test_vqvae.py,
test_world_model.py and friends.)
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from helpers import CodeRunningPayload, unpickling_calls_os_system

from envs import ImageObservation
from wm_agent.cli import main
from wm_agent.data.collect import DataCollector
from wm_agent.config import WorldModelConfig
from wm_agent.models.vqvae import VQVAE
from wm_agent.world_model import FORMAT, VERSION, WorldModel

REPO = Path(__file__).resolve().parents[1]
TINY = dict(channels=(4, 4, 4), hidden_size=16, head_hidden=8, context_channels=4)


# ------------------------------------------------------------------------------------------------
# Fixtures: a small dataset, a tiny trained-looking checkpoint, one torch thread
# ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny batches: one thread is faster, and on a busy 2-core machine much faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    DataCollector("WM-GridWorld-v0", root, seed=1, episodes_per_shard=2, max_steps=8).collect(4, progress=False)
    return root


def tiny_model(seed: int = 0, **overrides) -> WorldModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        wm = WorldModel(WorldModelConfig.gridworld(**{**TINY, **overrides}), "WM-GridWorld-v0")
    env = gym.make("WM-GridWorld-v0")
    wm.set_start_frames(np.stack([env.reset(seed=s)[0] for s in range(4)]))
    return wm


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A whole tiny checkpoint whose V and M count as trained, as bytes (tests write their own copy)."""
    wm = tiny_model()
    wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}}
    path = tmp_path_factory.mktemp("ckpt") / "wm.pt"
    wm.save(path)
    return path.read_bytes()


@pytest.fixture
def checkpoint(tmp_path, checkpoint_bytes) -> Path:
    path = tmp_path / "wm.pt"
    path.write_bytes(checkpoint_bytes)
    return path


def cli_error(capsys, argv: list[str], status: int = 1) -> str:
    """Run ``wm-agent ARGV`` in-process; it must fail with ``status`` and one clean error line."""
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == status, f"exit status {rc}; stderr:\n{captured.err}"
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.err.startswith("wm-agent: error: "), captured.err
    return captured.err


# Every subcommand that reads a world-model checkpoint, with the other options it needs.
def _checkpoint_commands(path: Path, data: Path) -> dict[str, list[str]]:
    p = str(path)
    return {
        "evaluate": ["evaluate", "--checkpoint", p, "--episodes", "1", "--no-progress"],
        "train-rnn": ["train-rnn", "--data", str(data), "--world-model", p, "--epochs", "1", "--no-progress"],
        "train-controller": ["train-controller", "--world-model", p, "--popsize", "2", "--rollouts", "1",
                             "--generations", "1", "--no-progress"],
        "train-vae --resume": ["train-vae", "--data", str(data), "--out", p, "--resume", "--epochs", "1",
                               "--no-progress"],
        "eval-dream": ["eval-dream", "--world-model", p, "--data", str(data), "--no-progress"],
    }


CHECKPOINT_COMMANDS = ["evaluate", "train-rnn", "train-controller", "train-vae --resume", "eval-dream"]


# ------------------------------------------------------------------------------------------------
# Environments and wrappers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", [4, -1, np.int64(9), np.array([0, 1]), None, 2.5, "1", [1]])
def test_gridworld_refuses_actions_outside_its_space_and_stays_usable(action):
    env = gym.make("WM-GridWorld-v0")
    obs, info = env.reset(seed=3)
    with pytest.raises(ValueError, match=r"action must be an int in \[0, 4\)"):
        env.step(action)
    assert env.unwrapped._info(False)["agent"] == info["agent"]  # nothing moved
    obs2, reward, *_ = env.step(np.int64(0))  # a numpy int inside the space is fine
    assert obs2.shape == obs.shape and reward in (-0.01, 0.99)


def test_car_racing_discrete_refuses_actions_outside_its_space():
    env = gym.make("WM-CarRacing-v0", continuous=False)
    try:
        env.reset(seed=0)
        for action in (5, -1, 1.5, np.array([0.0, 1.0, 0.0])):
            with pytest.raises((ValueError, gym.error.InvalidAction), match=r"(?i)action.*Discrete\(5\)"):
                env.step(action)
        obs, *_ = env.step(3)  # and the env still works
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    finally:
        env.close()


class _VectorEnv(gym.Env):
    """Not an image: a Dict observation, no render mode."""

    observation_space = spaces.Dict({"x": spaces.Box(-1, 1, (3,))})
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"x": np.zeros(3, np.float32)}, {}

    def step(self, action):
        return {"x": np.zeros(3, np.float32)}, 0.0, False, False, {}


@pytest.mark.parametrize("make", [lambda: gym.make("CartPole-v1"), _VectorEnv], ids=["CartPole", "Dict"])
def test_image_observation_on_a_non_image_env_names_the_problem(make):
    env = make()
    with pytest.raises(ValueError) as exc:
        ImageObservation(env)
    message = str(exc.value)
    assert "observation_space=" in message and "render_mode=None" in message
    assert "render_mode='rgb_array'" in message  # ... and says what would work


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 4}, r"size must be an int in \[8, 1024\]"), ({"size": 64.0}, "size must be an int"),
    ({"size": "64"}, "size must be an int"), ({"size": 100_000}, "size must be an int in"),
    ({"crop": (0, 10, 20)}, "crop must be"), ({"crop": 5}, "crop must be"), ({"crop": (0.0, 10.5)}, "whole pixels"),
    ({"crop": (10, 10)}, r"rows must satisfy 0 <= start < end, got 10:10"),
])
def test_image_observation_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImageObservation(gym.make("CartPole-v1", render_mode="rgb_array"), **kwargs)


@pytest.mark.parametrize("crop, match", [((50, 100), "rows must satisfy 0 <= start < end <= 64, got 50:100"),
                                         ((0, 64, 0, 65), "columns must satisfy 0 <= start < end <= 64")])
def test_a_crop_outside_the_image_space_is_refused_when_built(crop, match):
    with pytest.raises(ValueError, match=match):
        ImageObservation(gym.make("WM-GridWorld-v0"), size=32, crop=crop)
    assert ImageObservation(gym.make("WM-GridWorld-v0"), size=np.int64(32), crop=np.array([0, 32])).crop == (0, 32)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 0}, "image_size must be a positive int, got 0"),
    ({"image_size": 64.0}, "image_size must be an int"),
    ({"size": 8.0}, "size must be an int, got 8.0"), ({"min_obstacles": 1.5}, "min_obstacles must be an int"),
])
def test_gridworld_refuses_bad_settings_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("WM-GridWorld-v0", **kwargs)


def test_carracing_refuses_an_unknown_render_mode_when_made():
    with pytest.raises(ValueError, match=r"render_mode must be one of \['human', 'rgb_array', 'state_pixels'\]"):
        gym.make("WM-CarRacing-v0", render_mode="rgb")


@pytest.fixture(scope="module")
def rgb_wrapper():
    return ImageObservation(gym.make("WM-GridWorld-v0"), size=32)  # uint8 image input


@pytest.mark.parametrize("frame, match", [
    (np.zeros((64,), np.uint8), r"shape \(H, W, 1\|3\|4\)"),
    (np.zeros((64, 64, 2), np.uint8), r"got shape \(64, 64, 2\)"),
    (np.zeros((64, 64, 5), np.uint8), r"got shape \(64, 64, 5\)"),
    (np.zeros((2, 64, 64, 3), np.uint8), r"got shape \(2, 64, 64, 3\)"),
    (np.zeros((), np.uint8), r"got shape \(\)"),
    (np.zeros((64, 64, 3), np.float32), "dtype float32"),  # floats only from float-image envs
    (np.zeros((64, 64, 3), np.int64), "dtype int64"),
    (np.zeros((64, 64, 3), bool), "dtype bool"),
    (np.zeros((64, 64, 3), np.complex64), "dtype complex64"),
])
def test_image_observation_to_image_refuses_wrong_frames(rgb_wrapper, frame, match):
    with pytest.raises(ValueError, match=match):
        rgb_wrapper.to_image(frame)


@pytest.mark.parametrize("shape", [(0, 64, 3), (64, 0, 3)])
def test_image_observation_to_image_refuses_empty_frames(rgb_wrapper, shape):
    with pytest.raises(ValueError):
        rgb_wrapper.to_image(np.zeros(shape, np.uint8))


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def wm() -> WorldModel:
    return tiny_model()


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, 32, 32, 3), np.uint8), r"shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"),  # wrong image size
    (np.zeros((2, 64, 64, 4), np.uint8), r"\(B, H, W, 3\)"),  # RGBA
    (np.zeros((64, 64, 3), np.uint8), r"\(B, H, W, 3\)"),  # one frame, no batch axis
    (np.full((2, 3, 64, 64), 255.0, np.float32), r"pixel values in \[0, 1\], got range \[255, 255\]"),
    (np.full((2, 3, 64, 64), -0.5, np.float32), r"pixel values in \[0, 1\]"),
    (np.zeros((2, 64, 64, 3), np.float32), r"shape \(B, 3, 64, 64\)"),  # float frames in NHWC order
    (np.zeros((2, 3, 64, 64), np.int32), "expected float frames"),
])
def test_world_model_encode_refuses_wrong_batches(wm, frames, match):
    with pytest.raises(ValueError, match=match):
        wm.encode(frames)


@pytest.mark.parametrize("batch, error, match", [
    (np.zeros((1, 3, 64, 64), np.float32), TypeError, "expected a torch.Tensor"),
    (torch.zeros(1, 64, 64, 3), ValueError, r"got \(1, 64, 64, 3\)"),
    (torch.zeros(3, 64, 64), ValueError, r"got \(3, 64, 64\)"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ValueError, "expected float frames"),
    (torch.full((1, 3, 64, 64), 2.0), ValueError, r"pixel values in \[0, 1\]"),
])
def test_vqvae_forward_refuses_wrong_shape_dtype_or_range(wm, batch, error, match):
    with pytest.raises(error, match=match):
        wm.vae(batch)


def test_vqvae_refuses_nan_pixels(wm):
    batch = torch.rand(2, 3, 64, 64)
    batch[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pixel"):
        wm.vae.encode(batch)


def test_dream_refuses_a_wrong_first_frame(wm):
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)|\(B, 3, 64, 64\)"):
        wm.dream(np.zeros((64, 64), np.uint8), [0, 1])


def test_a_config_whose_controller_is_too_big_is_refused_with_the_reason():
    with pytest.raises(ValueError) as exc:
        WorldModelConfig(hidden_size=4096, latent_grid=16, channels=(16, 32))
    message = str(exc.value)
    z = 16 * 16 * 4
    assert f"controller would have {(z + 4096) * 4 + 4} parameters" in message
    assert "max_controller_params=20000" in message and "CMA-ES" in message


def test_a_checkpoint_whose_config_has_a_too_big_controller_is_refused_by_the_cli(checkpoint, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["hidden_size"] = 8192
    state["config"]["controller"] = "linear"  # the one whose size grows with h
    torch.save(state, checkpoint)
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--no-progress"])
    assert str(checkpoint) in err and "max_controller_params" in err


def test_a_checkpoint_with_another_config_is_refused_when_a_config_is_expected(checkpoint):
    expected = WorldModelConfig.gridworld(**{**TINY, "hidden_size": 32})
    with pytest.raises(ValueError) as exc:
        WorldModel.load(checkpoint, expect_config=expected)
    message = str(exc.value)
    assert str(checkpoint) in message and "different config" in message
    assert "'hidden_size': (32, 16)" in message  # (expected, found), and only what differs
    assert "num_mixtures" not in message
    assert WorldModel.load(checkpoint, expect_config=WorldModelConfig.gridworld(**TINY)).config.hidden_size == 16


# ------------------------------------------------------------------------------------------------
# Damaged, foreign and hostile checkpoints, through every subcommand that reads one
# ------------------------------------------------------------------------------------------------
def _truncated(path: Path, good: bytes) -> None:
    path.write_bytes(good[: len(good) // 2])


def _garbage(path: Path, good: bytes) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path: Path, good: bytes) -> None:
    path.write_bytes(b"")


def _json_file(path: Path, good: bytes) -> None:
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION}))


def _other_format(path: Path, good: bytes) -> None:
    torch.save({"format": "someone-else/model", "version": 1, "weights": torch.zeros(3)}, path)


def _bare_state_dict(path: Path, good: bytes) -> None:  # e.g. a torch.save(model.state_dict()) from elsewhere
    torch.save(VQVAE(WorldModelConfig.gridworld(**TINY)).state_dict(), path)


def _future_version(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "version": VERSION + 1}, path)


def _unknown_config_field(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "config": {**state["config"], "warp_drive": True}}, path)


def _weights_of_another_size(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "config": {**state["config"], "hidden_size": 32}}, path)


DAMAGE = {
    "truncated": (_truncated, "truncated, corrupt"),
    "garbage": (_garbage, "truncated, corrupt"),
    "empty": (_empty, "truncated, corrupt"),
    "json": (_json_file, "truncated, corrupt"),
    "other-format": (_other_format, "not a wm-agent world-model checkpoint"),
    "bare-state-dict": (_bare_state_dict, "not a wm-agent world-model checkpoint"),
    "future-version": (_future_version, f"checkpoint version {VERSION + 1}"),
    "unknown-config-field": (_unknown_config_field, "warp_drive"),
    "weights-of-another-size": (_weights_of_another_size, "weights do not match its config"),
}


@pytest.mark.parametrize("command", CHECKPOINT_COMMANDS)
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_bad_checkpoint_is_named_by_every_command(tmp_path, data, checkpoint_bytes, capsys, damage, command):
    make, problem = DAMAGE[damage]
    path = tmp_path / "bad.pt"
    make(path, checkpoint_bytes)
    before = path.read_bytes()
    err = cli_error(capsys, _checkpoint_commands(path, data)[command])
    assert str(path) in err and problem in err, err
    assert path.read_bytes() == before  # a failed read never rewrites the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]  # and leaves nothing beside it


@pytest.mark.parametrize("command", ["evaluate", "train-rnn", "train-controller"])
def test_a_missing_checkpoint_is_named(tmp_path, data, capsys, command):
    path = tmp_path / "nowhere" / "wm.pt"
    err = cli_error(capsys, _checkpoint_commands(path, data)[command])
    assert f"not found: {path}" in err
    assert not path.parent.exists()


def _start_codes_not_a_tensor(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "start_codes": [[1, 2], [3, 4]]}, path)


def _start_codes_out_of_range(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "start_codes": torch.full_like(state["start_codes"], 999)}, path)


def _vae_not_a_dict(path: Path, good: bytes) -> None:
    path.write_bytes(good)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "vae": "weights"}, path)


@pytest.mark.parametrize("make, command", [
    pytest.param(_start_codes_not_a_tensor, "evaluate"),
    pytest.param(_start_codes_out_of_range, "train-controller"),
    pytest.param(_vae_not_a_dict, "evaluate"),
])
def test_a_checkpoint_with_malformed_entries_is_named(tmp_path, data, checkpoint_bytes, capsys, make, command):
    path = tmp_path / "odd.pt"
    make(path, checkpoint_bytes)
    err = cli_error(capsys, _checkpoint_commands(path, data)[command])
    assert str(path) in err


# -- hostile checkpoints: code inside a pickle never runs ----------------------------------------------
def _evil_files(tmp_path: Path, marker: Path, good: bytes) -> dict[str, Path]:
    files = {}
    files["torch.save"] = tmp_path / "evil_zip.pt"
    torch.save(CodeRunningPayload(marker), files["torch.save"])
    files["plain pickle"] = tmp_path / "evil_pickle.pt"
    files["plain pickle"].write_bytes(pickle.dumps(CodeRunningPayload(marker)))
    files["inside a real checkpoint"] = tmp_path / "evil_inside.pt"
    files["inside a real checkpoint"].write_bytes(good)
    state = torch.load(files["inside a real checkpoint"], weights_only=True)
    state["metrics"] = {"vae": CodeRunningPayload(marker)}
    torch.save(state, files["inside a real checkpoint"])
    return files


@pytest.mark.parametrize("how", ["torch.save", "plain pickle", "inside a real checkpoint"])
def test_the_payload_is_armed(tmp_path, checkpoint_bytes, how):
    """Each hostile file would run its command if unpickled (read from its opcodes, not by loading it), so
    'the marker does not exist' below means something."""
    path = _evil_files(tmp_path, tmp_path / "ran", checkpoint_bytes)[how]
    assert unpickling_calls_os_system(path.read_bytes())
    assert not unpickling_calls_os_system(checkpoint_bytes)  # and the check tells a clean checkpoint apart


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "plain pickle", "inside a real checkpoint"])
def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(tmp_path, data, checkpoint_bytes, capsys, how):
    marker = tmp_path / "PWNED"
    path = _evil_files(tmp_path, marker, checkpoint_bytes)[how]
    with pytest.raises(ValueError, match=rf"{path.name}.*weights-only"):
        WorldModel.load(path)
    for command in CHECKPOINT_COMMANDS:
        err = cli_error(capsys, _checkpoint_commands(path, data)[command])
        assert str(path) in err and "refused" in err
        assert "weights_only` set to `False`" not in err  # torch's advice to load it with code on is dropped
    assert not marker.exists()


def test_evaluate_of_a_hostile_checkpoint_in_a_fresh_process(tmp_path, checkpoint_bytes):
    """``python -m wm_agent.cli evaluate --checkpoint evil.pt``: status 1, the file named, nothing run."""
    marker = tmp_path / "PWNED"
    path = _evil_files(tmp_path, marker, checkpoint_bytes)["inside a real checkpoint"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    result = subprocess.run([sys.executable, "-m", "wm_agent.cli", "evaluate", "--checkpoint", str(path),
                             "--no-progress"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("wm-agent: error: cannot read world-model checkpoint " + str(path))
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Damaged data folders, through `wm-agent train-vae --data`
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def data_copy(tmp_path, data) -> Path:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def _train_vae(data: Path, out: Path) -> list[str]:
    return ["train-vae", "--data", str(data), "--out", str(out), "--epochs", "1", "--no-progress"]


@pytest.mark.parametrize("damage, named, problem", [
    ("truncate obs", "shard_00001/obs_lz4.npy", "corrupt or truncated data file"),
    ("truncate lengths", "shard_00000/lengths.npy", "corrupt or truncated data file"),
    ("garbage actions", "shard_00001/actions.npy", "corrupt or truncated data file"),
    ("delete rewards", "shard_00000/rewards.npy", "missing data file"),
    ("delete shard", "shard_00001", "missing data file"),
    ("corrupt manifest", "manifest.json", "corrupt manifest"),
    ("wrong dtype", "shard_00000/obs_lz4.npy", "expected a 1-D uint8 array"),
])
def test_a_damaged_dataset_is_named_by_train_vae(data_copy, tmp_path, capsys, damage, named, problem):
    target = data_copy / named
    if damage.startswith("truncate"):
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    elif damage == "garbage actions":
        target.write_bytes(np.random.default_rng(1).bytes(300))
    elif damage.startswith("delete"):
        import shutil

        shutil.rmtree(target) if target.is_dir() else target.unlink()
    elif damage == "corrupt manifest":
        target.write_text(target.read_text()[:40])
    else:
        np.save(target, np.load(target).astype(np.float32))
    out = tmp_path / "wm.pt"
    err = cli_error(capsys, _train_vae(data_copy, out))
    assert problem in err and str(data_copy / named) in err, err
    if named.startswith("shard_"):  # and how to mend it
        assert f"delete {data_copy / named.split('/')[0]} and re-run the `wm-agent collect` command" in err, err
    assert not out.exists()


@pytest.mark.parametrize("folder", ["empty", "missing", "a file"])
def test_no_data_is_named_by_train_vae(tmp_path, capsys, folder):
    data = tmp_path / "data"
    if folder == "empty":
        data.mkdir()
    elif folder == "a file":
        data.write_text("not a folder")
    out = tmp_path / "wm.pt"
    err = cli_error(capsys, _train_vae(data, out))
    assert (f"{data} is a file; the data is a folder" if folder == "a file" else f"no shards found in {data}") in err
    assert not out.exists()


def test_a_data_file_carrying_code_is_refused_and_runs_nothing(data_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    target = data_copy / "shard_00000" / "actions.npy"
    # The attacker's file, as np.save writes an object array: a .npy header, then the array's pickle.
    payload = pickle.dumps(np.array([CodeRunningPayload(marker)] * 3, dtype=object), protocol=3)
    assert unpickling_calls_os_system(payload)
    with open(target, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (3,)})
        f.write(payload)
    err = cli_error(capsys, _train_vae(data_copy, tmp_path / "wm.pt"))
    assert str(target) in err and "allow_pickle" in err
    assert "If you trust" not in err and "unsafely" not in err  # numpy's advice to load it anyway is dropped
    assert not marker.exists()
    # Re-running the collection that made the folder treats the shard as broken and writes it again.
    DataCollector("WM-GridWorld-v0", data_copy, seed=1, episodes_per_shard=2, max_steps=8).collect(4, progress=False)
    assert np.load(target, allow_pickle=False).dtype == np.int64
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Nonsense arguments: status 2 and the usage, never a traceback
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["train-vae", "--data", "d", "--out", "o.pt", "--epochs", "banana"],
    ["train-vae", "--data", "d", "--out", "o.pt", "--batch-size", "1.5"],
    ["train-vae", "--out", "o.pt"],  # --data is required
    ["train-vae", "--data", "d", "--out", "o.pt", "--resume=yes"],
    ["train-rnn", "--data", "d"],  # --world-model is required
    ["train-rnn", "--data", "d", "--world-model", "w.pt", "--seq-len", "ten"],
    ["train-controller", "--world-model", "w.pt", "--popsize", "lots"],
    ["train-controller", "--world-model", "w.pt", "--temperature", "warm"],
    ["train-controller"],
    ["evaluate", "--checkpoint", "w.pt", "--episodes", "1e3"],
    ["render", "--frobnicate"],
    ["train-everything"],
    ["--epochs", "3"],
])
def test_nonsense_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: wm-agent" in err and "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("option", ["--seq-len", "--batch-size"])
def test_train_rnn_zero_sizes_are_explained(checkpoint, data, capsys, option):
    err = cli_error(capsys, ["train-rnn", "--data", str(data), "--world-model", str(checkpoint), option, "0",
                             "--no-progress"])
    assert option.lstrip("-").replace("-", "_") in err or option in err


@pytest.mark.parametrize("argv, message", [
    (["train-vae", "--preset", "WM-Pong-v0"], "unknown preset 'WM-Pong-v0'"),
    (["train-vae", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train-vae", "--epochs", "-1"], "--epochs must be >= 0, got -1"),
    (["train-vae", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["train-controller", "--popsize", "1"], "--popsize must be >= 2, got 1"),
    (["train-controller", "--rollouts", "0"], "--rollouts must be >= 1"),
    (["train-controller", "--in", "moon"], "--in must be 'dream' or 'real'"),
    (["train-controller", "--sigma0", "0"], "--sigma0 must be > 0"),
    (["train-controller", "--max-steps", "-1"], "--max-steps must be >= 0"),
    (["train-controller", "--hidden", "-5"], "--hidden must be >= 0"),
    (["train-controller", "--in", "real", "--workers", "0"], "--workers must be >= 1"),
    (["train-controller", "--env", "Nope-v0"], "unknown env 'Nope-v0'"),
    (["evaluate", "--episodes", "0"], "--episodes must be >= 1"),
    (["evaluate", "--env", "Nope-v0"], "unknown env 'Nope-v0'"),
    (["evaluate", "--env", "WM-CarRacing-v0", "--episodes", "1"], "action space Box"),
    (["evaluate", "--max-steps", "-1"], "--max-steps must be >= 0"),
    (["evaluate", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["eval-dream", "--strict-threshold", "0.1"], "--strict-threshold (0.1) must not exceed --threshold (0.01)"),
    (["eval-dream", "--max-frames", "0"], "--max-frames must be >= 1"),
    (["eval-dream", "--temperature", "-1"], "--temperature must be >= 0"),
])
def test_bad_values_are_explained(checkpoint, data, tmp_path, capsys, argv, message):
    command, *rest = argv
    base = {"train-vae": ["--data", str(data), "--out", str(tmp_path / "new.pt"), "--epochs", "1"],
            "train-controller": ["--world-model", str(checkpoint), "--generations", "1"],
            "evaluate": ["--checkpoint", str(checkpoint)],
            "eval-dream": ["--world-model", str(checkpoint), "--data", str(data)]}[command]
    err = cli_error(capsys, [command, *base, *rest, "--no-progress"])
    assert message in err


@pytest.fixture(scope="module")
def car_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("car")
    DataCollector("WM-CarRacing-v0", root, seed=1, max_steps=3).collect(1, progress=False)
    return root


@pytest.mark.parametrize("command", ["train-vae", "train-rnn", "eval-dream"])
def test_data_of_another_env_is_named_not_misread(checkpoint, car_data, tmp_path, capsys, command):
    """A GridWorld model with CarRacing data: the error names both envs, not a tensor shape deep inside."""
    argv = {"train-vae": ["--data", str(car_data), "--out", str(checkpoint), "--resume", "--epochs", "2"],
            "train-rnn": ["--data", str(car_data), "--world-model", str(checkpoint), "--epochs", "1"],
            "eval-dream": ["--world-model", str(checkpoint), "--data", str(car_data)]}[command]
    before = checkpoint.read_bytes()
    err = cli_error(capsys, [command, *argv, "--no-progress"])
    assert f"{car_data} holds WM-CarRacing-v0 data" in err and "built for WM-GridWorld-v0" in err
    assert "Discrete(4)" in err and "Box(" in err
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("command", ["train-rnn", "eval-dream"])
def test_data_of_another_grid_is_refused_though_shapes_match(checkpoint, tmp_path, capsys, command):
    """Frames and actions of the same shapes, but another env id or other gym.make kwargs: M would learn
    (or be scored on) dynamics that are not those of the env the checkpoint names and is evaluated in."""
    gym.register("TestRelOtherGrid-v0", entry_point="envs.gridworld:GridWorldEnv", max_episode_steps=10)
    try:
        for env_id, kwargs, said in (("WM-GridWorld-v0", {"size": 4}, 'collected with --env-kwargs {"size": 4}'),
                                     ("TestRelOtherGrid-v0", {}, "holds TestRelOtherGrid-v0 data")):
            root = tmp_path / f"{env_id}-{len(kwargs)}"
            DataCollector(env_id, root, seed=1, max_steps=4, env_kwargs=kwargs).collect(2, progress=False)
            argv = {"train-rnn": ["--data", str(root), "--world-model", str(checkpoint), "--epochs", "1",
                                  "--overwrite"],
                    "eval-dream": ["--world-model", str(checkpoint), "--data", str(root)]}[command]
            before = checkpoint.read_bytes()
            err = cli_error(capsys, [command, *argv, "--no-progress"])
            assert said in err and "built for WM-GridWorld-v0" in err
            assert checkpoint.read_bytes() == before
    finally:
        gym.registry.pop("TestRelOtherGrid-v0", None)


def test_a_resume_with_other_settings_or_data_is_refused(data, tmp_path, capsys):
    """A resumed run is the saved run: another batch size, seed, sequence length or dataset would be a
    different one, told apart from an uninterrupted run only by its results."""
    out = tmp_path / "wm.pt"
    assert main([*_train_vae(data, out), "--batch-size", "16"]) == 0
    assert main(["train-rnn", "--data", str(data), "--world-model", str(out), "--epochs", "1", "--seq-len", "4",
                 "--no-progress"]) == 0
    other = tmp_path / "other"
    assert main(["collect", "--out", str(other), "--episodes", "2", "--seed", "5", "--max-steps", "5",
                 "--no-progress"]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    vae = ["train-vae", "--out", str(out), "--epochs", "2", "--resume", "--no-progress"]
    rnn = ["train-rnn", "--world-model", str(out), "--epochs", "2", "--resume", "--seq-len", "4", "--no-progress"]
    for argv, said in [
        ([*vae, "--data", str(data)],
         "trained with --batch-size 16, not --batch-size 128; resume with --batch-size 16"),
        ([*vae, "--data", str(data), "--batch-size", "16", "--seed", "3"], "trained with --seed 0, not --seed 3"),
        ([*vae, "--data", str(other), "--batch-size", "16"], "was trained on other data"),
        ([*rnn, "--data", str(data), "--seq-len", "8"], "its MDN-RNN was trained with --seq-len 4, not --seq-len 8"),
        ([*rnn, "--data", str(other)], "its MDN-RNN was trained on other data"),
    ]:
        assert said in cli_error(capsys, argv)
    assert out.read_bytes() == before
    assert main([*vae, "--data", str(data), "--batch-size", "16"]) == 0  # the same run goes on


def test_a_resume_says_where_it_picks_up_and_collect_what_was_there(data, tmp_path, capsys):
    out = tmp_path / "wm.pt"
    assert main(_train_vae(data, out)) == 0
    capsys.readouterr()
    assert main(["train-vae", "--data", str(data), "--out", str(out), "--epochs", "2", "--resume"]) == 0
    assert f"resuming {out}: VQ-VAE at 1 epochs done; training to epoch 2" in capsys.readouterr().out
    folder = tmp_path / "grid"
    argv = ["collect", "--out", str(folder), "--episodes", "4", "--episodes-per-shard", "2", "--max-steps", "5",
            "--no-progress"]
    assert main(argv) == 0
    assert "in 2 shards of WM-GridWorld-v0\n" in capsys.readouterr().out
    shutil.rmtree(folder / "shard_00001")
    assert main(argv) == 0
    assert "in 2 shards of WM-GridWorld-v0 (1 already there, 1 collected now)\n" in capsys.readouterr().out
    argv[argv.index("--episodes") + 1] = "2"
    assert main(argv) == 0
    assert "; the folder holds more than the 2 asked for" in capsys.readouterr().out


def test_eval_dream_on_the_training_episodes_says_they_are_not_held_out(checkpoint, data, tmp_path, capsys):
    assert main(["train-rnn", "--data", str(data), "--world-model", str(checkpoint), "--epochs", "1", "--overwrite",
                 "--batch-size", "2", "--seq-len", "4", "--no-progress"]) == 0
    eval_dream = ["eval-dream", "--world-model", str(checkpoint), "--episodes", "1", "--max-frames", "8",
                  "--no-progress"]
    capsys.readouterr()
    assert main([*eval_dream, "--data", str(data)]) == 0
    assert "are not held-out ones; collect with another --seed" in capsys.readouterr().err
    heldout = tmp_path / "heldout"
    DataCollector("WM-GridWorld-v0", heldout, seed=2, episodes_per_shard=2, max_steps=8).collect(2, progress=False)
    assert main([*eval_dream, "--data", str(heldout)]) == 0
    assert "held-out" not in capsys.readouterr().err


def test_training_v_further_marks_m_and_c_stale(checkpoint, data, capsys):
    wm = WorldModel.load(checkpoint)
    wm.train_state["cmaes"] = {"generation": 1}
    wm.save(checkpoint)
    assert main(["train-vae", "--data", str(data), "--out", str(checkpoint), "--resume", "--epochs", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert "training V further makes its trained MDN-RNN and controller stale" in capsys.readouterr().err
    assert set(WorldModel.load(checkpoint).train_state) == {"vae"}
    # Resuming a V that is already done trains nothing and keeps M and C.
    wm = WorldModel.load(checkpoint)
    wm.train_state.update(rnn={"epoch": 1}, cmaes={"generation": 1})
    wm.save(checkpoint)
    assert main(["train-vae", "--data", str(data), "--out", str(checkpoint), "--resume", "--epochs", "2",
                 "--batch-size", "8", "--no-progress"]) == 0
    assert set(WorldModel.load(checkpoint).train_state) == {"vae", "rnn", "cmaes"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_cuda_device_without_cuda_is_explained(data, tmp_path, capsys):
    err = cli_error(capsys, _train_vae(data, tmp_path / "new.pt") + ["--device", "cuda"])
    assert "--device cuda: this torch build sees no CUDA GPU" in err


def test_a_folder_file_or_shard_in_place_of_the_other_is_named(data, checkpoint, tmp_path, capsys):
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(data), "--no-progress"])
    assert f"{data} is a folder, not a world-model checkpoint file" in err
    err = cli_error(capsys, _train_vae(checkpoint, tmp_path / "new.pt"))
    assert f"{checkpoint} is a file; the data is a folder written by `wm-agent collect`" in err
    err = cli_error(capsys, _train_vae(data / "shard_00000", tmp_path / "new.pt"))
    assert f"{data / 'shard_00000'} is one shard of a dataset; pass its folder, {data}" in err


def test_files_and_folders_in_the_wrong_place_are_explained(data, tmp_path, capsys):
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, _train_vae(data, tmp_path / "folder.pt") + ["--overwrite"])
    assert "folder.pt is a folder; give a file path" in err
    err = cli_error(capsys, _train_vae(data, tmp_path / "afile" / "x.pt"))
    assert "part of its folder path is a file" in err
    err = cli_error(capsys, ["collect", "--env", "WM-GridWorld-v0", "--episodes", "1", "--out", str(tmp_path / "afile"),
                             "--no-progress"])
    assert "afile is a file, not a folder" in err


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--debug"])
    with pytest.raises(ValueError, match="--num-envs must be >= 1"):
        main(["benchmark", "--debug", "dream", "--num-envs", "0"])  # also between benchmark and its subcommand


def test_train_vae_refuses_to_overwrite_a_checkpoint(checkpoint, data, capsys):
    before = checkpoint.read_bytes()
    err = cli_error(capsys, _train_vae(data, checkpoint))
    assert f"{checkpoint} exists" in err and "--resume" in err and "--overwrite" in err
    assert checkpoint.read_bytes() == before


# ------------------------------------------------------------------------------------------------
# A non-finite loss stops training; the last good checkpoint stays as it was
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def vae_after_one_epoch(tmp_path, data):
    """``wm-agent train-vae --resume`` of a tiny model for one good epoch: (checkpoint, its bytes)."""
    path = tmp_path / "wm.pt"
    tiny_model().save(path)
    assert main(_train_vae(data, path) + ["--resume", "--batch-size", "16"]) == 0
    assert WorldModel.load(path).train_state["vae"]["epoch"] == 1
    return path, path.read_bytes()


def _nan_after(monkeypatch, good_batches: int) -> None:
    """VQVAE.forward returns a NaN reconstruction loss after ``good_batches`` good ones."""
    forward = VQVAE.forward
    calls = {"n": 0}

    def poisoned(self, obs):
        x, recon, vq = forward(self, obs)
        calls["n"] += 1
        return (x, recon * float("nan"), vq) if calls["n"] > good_batches else (x, recon, vq)

    monkeypatch.setattr(VQVAE, "forward", poisoned)


def test_a_nan_mid_epoch_leaves_the_last_good_checkpoint_untouched_and_resumable(vae_after_one_epoch, data,
                                                                                 monkeypatch, capsys):
    from wm_agent.training.fit import NonFiniteLoss

    path, good = vae_after_one_epoch
    metrics = Path(str(path) + ".metrics.jsonl")
    lines = metrics.read_text()
    _nan_after(monkeypatch, good_batches=1)  # epoch 2: one optimiser step, then NaN
    try:
        main(_train_vae(data, path) + ["--resume", "--epochs", "3", "--batch-size", "16"])
    except NonFiniteLoss:
        pass  # (checked through the CLI in the next test)
    capsys.readouterr()
    assert path.read_bytes() == good, "the checkpoint of the last good epoch was rewritten"
    assert metrics.read_text() == lines
    assert sorted(p.name for p in path.parent.iterdir()) == ["wm.pt", "wm.pt.metrics.jsonl"]

    monkeypatch.undo()  # the cause is gone: --resume carries on from epoch 1
    assert main(_train_vae(data, path) + ["--resume", "--epochs", "2", "--batch-size", "16"]) == 0
    assert WorldModel.load(path).train_state["vae"]["epoch"] == 2


def test_a_nan_loss_ends_the_cli_with_a_message_not_a_traceback(vae_after_one_epoch, data, monkeypatch, capsys):
    path, good = vae_after_one_epoch
    _nan_after(monkeypatch, good_batches=0)
    err = cli_error(capsys, _train_vae(data, path) + ["--resume", "--epochs", "2", "--batch-size", "16"])
    assert "loss became nan" in err and "last good checkpoint is kept" in err
    assert path.read_bytes() == good
