"""DataCollector: shard format, determinism across worker counts, resume, and failure handling."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.envs.registration import register, registry

from envs import GridWorldEnv
from wm_agent.data.collect import CollectConfig, DataCollector
from wm_agent.data.frames import BLOB, OFFSETS, CompressedFrames
from wm_agent.data.shard_writer import CollectionError, shard_rngs
from wm_agent.data.shards import SHARD_FILES as FILES


# -- toy envs (registered under this module's name so worker processes can import them) -----------
class ToyBoxEnv(gym.Env):
    """A 64x64 frame whose brightness is a position on [-1, 1]; Box(-1, 1, (2,)) actions move it."""

    observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def _obs(self):
        return np.full((64, 64, 3), int((self._pos + 1) * 127), np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = float(self.np_random.uniform(-0.5, 0.5))
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(np.asarray(action, np.float32)):
            raise ValueError(f"action out of bounds: {action}")
        self._pos = float(np.clip(self._pos + 0.2 * action[0], -1, 1))
        return self._obs(), float(action[1]), abs(self._pos) >= 1, False, {}


class FailingEnv(GridWorldEnv):
    """Raises on its 5th step."""

    def reset(self, *, seed=None, options=None):
        self._steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self._steps += 1
        if self._steps == 5:
            raise RuntimeError("boom at step 5")
        return super().step(action)


class KillingEnv(GridWorldEnv):
    """Kills its own process on the first step inside a worker (like the OOM killer would)."""

    def step(self, action):
        if multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


for _id, _cls, _limit in [("WMTest-Box-v0", "ToyBoxEnv", 12), ("WMTest-Failing-v0", "FailingEnv", 50),
                          ("WMTest-Killing-v0", "KillingEnv", 50)]:
    if _id not in registry:
        register(id=_id, entry_point=f"{__name__}:{_cls}", max_episode_steps=_limit)


def _load(folder: Path) -> dict[str, np.ndarray]:
    """A shard read plainly with np.load, its frames decompressed into ``obs``."""
    arrays = {key: np.load(folder / f"{key}.npy", allow_pickle=False) for key in FILES}
    arrays["obs"] = CompressedFrames(arrays[BLOB], arrays[OFFSETS], (64, 64, 3), folder / f"{BLOB}.npy")[:]
    return arrays


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("shard_*/*.npy"))}


# -- shard format and determinism -------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_workers")
    manifest = DataCollector("WM-GridWorld-v0", out, seed=7, workers=2, episodes_per_shard=2, max_steps=12).collect(
        5, progress=False
    )
    return out, manifest


def test_shards_and_manifest_are_written_and_consistent(two_worker_run):
    out, manifest = two_worker_run
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["env_id"] == "WM-GridWorld-v0" and manifest["policy"] == "random" and manifest["seed"] == 7
    assert manifest["action_space"] == {"type": "discrete", "n": 4, "start": 0}
    assert manifest["observation_shape"] == [64, 64, 3]
    assert [s["name"] for s in manifest["shards"]] == ["shard_00000", "shard_00001", "shard_00002"]
    assert [s["episodes"] for s in manifest["shards"]] == [2, 2, 1] and manifest["episodes"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard_00000", "shard_00001", "shard_00002"]

    for entry in manifest["shards"]:
        a = _load(out / entry["name"])
        lengths = a["lengths"]
        assert lengths.dtype == np.int64 and np.all((lengths >= 1) & (lengths <= 12))
        steps = int(lengths.sum())
        assert entry["steps"] == steps and entry["frames"] == steps + len(lengths)
        assert a["obs"].shape == (steps + len(lengths), 64, 64, 3) and a["obs"].dtype == np.uint8
        assert a["actions"].shape == (steps,) and a["actions"].dtype == np.int64
        assert set(np.unique(a["actions"])) <= {0, 1, 2, 3}
        assert a["rewards"].dtype == np.float32 and a["terminated"].dtype == np.bool_
        # Exactly the last step of each episode ends it: by reaching the goal or by the step cap.
        ends = np.cumsum(lengths) - 1
        done = a["terminated"] | a["truncated"]
        np.testing.assert_array_equal(np.flatnonzero(done), ends)
        np.testing.assert_array_equal(a["truncated"][ends], lengths == 12)  # only the cap truncates
        np.testing.assert_allclose(a["rewards"], np.where(a["terminated"], 0.99, -0.01), atol=1e-6)


@pytest.mark.parametrize("vectorization, workers", [("processes", 1), ("sync", 3), ("async", 2)])
def test_neither_worker_count_nor_vectorization_changes_a_byte(two_worker_run, tmp_path, vectorization, workers):
    out, _ = two_worker_run
    collector = DataCollector("WM-GridWorld-v0", tmp_path, seed=7, workers=workers, episodes_per_shard=2,
                              max_steps=12, vectorization=vectorization)
    manifest = collector.collect(5, progress=False)
    assert _files(tmp_path) == _files(out)
    assert len(_files(out)) == 3 * len(FILES)
    assert manifest["shards"] == json.loads((out / "manifest.json").read_text())["shards"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_vector_env_collects_box_actions_like_the_processes(tmp_path):
    box = f"{__name__}:WMTest-Box-v0"
    DataCollector(box, tmp_path / "p", seed=3, workers=2, episodes_per_shard=2).collect(5, progress=False)
    DataCollector(box, tmp_path / "v", seed=3, workers=2, episodes_per_shard=2, vectorization="sync").collect(
        5, progress=False)
    assert _files(tmp_path / "v") == _files(tmp_path / "p") and len(_files(tmp_path / "p")) == 3 * len(FILES)
    assert _load(tmp_path / "v" / "shard_00000")["actions"].dtype == np.float32


def test_recorded_actions_replay_to_the_recorded_frames(two_worker_run):
    out, manifest = two_worker_run
    a = _load(out / "shard_00001")
    reset_seeds, _ = shard_rngs(seed=7, index=1, episodes_per_shard=2)
    env = gym.make("WM-GridWorld-v0")
    frame = step = 0
    for episode, length in enumerate(a["lengths"]):
        obs, _ = env.reset(seed=int(reset_seeds[episode]))
        np.testing.assert_array_equal(obs, a["obs"][frame])
        for t in range(length):
            obs, reward, terminated, truncated, _ = env.step(int(a["actions"][step]))
            np.testing.assert_array_equal(obs, a["obs"][frame + t + 1])
            assert reward == pytest.approx(a["rewards"][step]) and terminated == a["terminated"][step]
            step += 1
        frame += length + 1


# -- resume -----------------------------------------------------------------------------------------
def _stamps(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("shard_*/*.npy")}


def test_resume_skips_finished_shards_and_extends(tmp_path):
    collector = DataCollector("WM-GridWorld-v0", tmp_path, seed=1, episodes_per_shard=2, max_steps=8)
    collector.collect(4, progress=False)
    before = _stamps(tmp_path)
    assert len(before) == 2 * len(FILES)

    again = collector.collect(4, progress=False)
    assert _stamps(tmp_path) == before and again["episodes"] == 4
    assert collector.stats["shards"] == 0  # nothing was rolled out

    more = DataCollector("WM-GridWorld-v0", tmp_path, seed=1, episodes_per_shard=2, max_steps=8).collect(
        6, progress=False
    )
    after = _stamps(tmp_path)
    assert {k: after[k] for k in before} == before
    assert sorted({Path(k).parent.name for k in after}) == ["shard_00000", "shard_00001", "shard_00002"]
    assert more["episodes"] == 6


def test_a_vector_collection_resumes_where_it_stopped(tmp_path):
    settings = dict(seed=4, workers=2, episodes_per_shard=2, max_steps=8, vectorization="sync")
    DataCollector("WM-GridWorld-v0", tmp_path / "v", **settings).collect(3, progress=False)
    before = _stamps(tmp_path / "v")
    manifest = DataCollector("WM-GridWorld-v0", tmp_path / "v", **settings).collect(7, progress=False)
    after = _stamps(tmp_path / "v")
    # shard_00000 was whole and is kept; shard_00001 held 1 of its 2 episodes and is redone.
    assert ({k: after[k] for k in before if "shard_00000" in k}
            == {k: v for k, v in before.items() if "shard_00000" in k})
    assert manifest["episodes"] == 7 and len(manifest["shards"]) == 4
    DataCollector("WM-GridWorld-v0", tmp_path / "p", **{**settings, "vectorization": "processes"}).collect(
        7, progress=False)
    assert _files(tmp_path / "v") == _files(tmp_path / "p")


def test_a_short_last_shard_is_completed_with_the_same_first_episodes(tmp_path):
    collector = DataCollector("WM-GridWorld-v0", tmp_path, seed=2, episodes_per_shard=3, max_steps=8)
    collector.collect(4, progress=False)  # shard_00001 holds 1 of its 3 episodes
    short = _load(tmp_path / "shard_00001")
    assert len(short["lengths"]) == 1
    manifest = collector.collect(6, progress=False)
    full = _load(tmp_path / "shard_00001")
    assert len(full["lengths"]) == 3 and manifest["episodes"] == 6
    n = int(short["lengths"][0])
    np.testing.assert_array_equal(full["obs"][: n + 1], short["obs"])
    np.testing.assert_array_equal(full["actions"][:n], short["actions"])


@pytest.mark.parametrize("env_id, settings, expected", [
    ("WM-GridWorld-v0", {}, 98),                                # 50-step limit: 98 x 51 frames ~ 5,000
    ("WM-GridWorld-v0", {"max_steps": 20}, 238),                # the cap counts, not only the env's limit
    ("WM-GridWorld-v0", {"env_kwargs": {"max_episode_steps": 500}}, 10),  # never fewer than 10
    ("WM-CarRacing-v0", {}, 10),                                # 1000-step episodes: the old default
])
def test_an_unset_shard_size_follows_the_episode_limit(tmp_path, env_id, settings, expected):
    assert DataCollector(env_id, tmp_path, **settings).episodes_per_shard == expected


def test_a_folder_keeps_its_own_shard_size_when_the_size_is_unset(tmp_path):
    """A folder made with 2 episodes per shard (or before the default changed) is extended with its
    own size, not refused, and holds what a run with that size given throughout would hold."""
    DataCollector("WM-GridWorld-v0", tmp_path / "a", seed=3, episodes_per_shard=2, max_steps=8).collect(
        3, progress=False)
    resumed = DataCollector("WM-GridWorld-v0", tmp_path / "a", seed=3, max_steps=8)
    assert resumed.episodes_per_shard != 2  # what a fresh folder would get
    manifest = resumed.collect(5, progress=False)
    assert manifest["episodes_per_shard"] == 2 and len(manifest["shards"]) == 3
    DataCollector("WM-GridWorld-v0", tmp_path / "b", seed=3, episodes_per_shard=2, max_steps=8).collect(
        5, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    with pytest.raises(ValueError, match="different settings.*episodes_per_shard"):  # a size given must match
        DataCollector("WM-GridWorld-v0", tmp_path / "a", seed=3, episodes_per_shard=3, max_steps=8).collect(
            5, progress=False)


@pytest.mark.parametrize(
    "change, key",
    [({"seed": 1}, "seed"), ({"policy": "brownian"}, "policy"), ({"episodes_per_shard": 3}, "episodes_per_shard"),
     ({"env_kwargs": {"size": 4}}, "env_kwargs"), ({"max_steps": 9}, "max_steps")],
)
def test_different_settings_in_the_same_folder_are_refused(tmp_path, change, key):
    settings = dict(seed=0, episodes_per_shard=2, max_steps=8)
    DataCollector("WM-GridWorld-v0", tmp_path, **settings).collect(2, progress=False)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=f"different settings.*{key}"):
        DataCollector("WM-GridWorld-v0", tmp_path, **{**settings, **change}).collect(2, progress=False)
    assert _files(tmp_path) == before


def test_crash_leftovers_are_cleaned_and_broken_shards_redone(tmp_path):
    collector = DataCollector("WM-GridWorld-v0", tmp_path, episodes_per_shard=2, max_steps=8)
    collector.collect(4, progress=False)
    reference = _files(tmp_path)
    for leftover in (".tmp-shard_00002-4242", ".trash-shard_00000-17"):
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / f"{BLOB}.npy").write_bytes(b"half a file")
    obs = tmp_path / "shard_00001" / f"{BLOB}.npy"
    # As if the machine died before the data reached the disk.
    obs.write_bytes(obs.read_bytes()[: obs.stat().st_size // 2])

    collector.collect(4, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard_00000", "shard_00001"]
    assert _files(tmp_path) == reference


def test_shards_without_a_manifest_are_refused(tmp_path):
    DataCollector("WM-GridWorld-v0", tmp_path, max_steps=5).collect(1, progress=False)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        DataCollector("WM-GridWorld-v0", tmp_path, max_steps=5).collect(1, progress=False)


# -- failures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers, vectorization", [(1, "processes"), (2, "processes"), (2, "sync"), (2, "async")])
def test_a_failing_env_is_reported_with_its_shard(tmp_path, workers, vectorization):
    collector = DataCollector(f"{__name__}:WMTest-Failing-v0", tmp_path, workers=workers, episodes_per_shard=1,
                              vectorization=vectorization)
    with pytest.raises(CollectionError, match=r"shard_0000[01].*RuntimeError.*boom at step 5"):
        collector.collect(2, progress=False)
    assert not list(tmp_path.glob("shard_*"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written shard left


@pytest.mark.parametrize("vectorization, message", [
    ("processes", r"worker process died while collecting shard_0000. \(killed by SIGKILL \(out of memory\?\)\)"),
    ("async", r"stepping the async vector env .* for shard_00000, shard_00001 failed: a sub-env process died "
              r"\(killed by SIGKILL \(out of memory\?\)\)")])
def test_a_killed_worker_raises_instead_of_hanging(tmp_path, vectorization, message):
    collector = DataCollector(f"{__name__}:WMTest-Killing-v0", tmp_path, workers=2, episodes_per_shard=1,
                              vectorization=vectorization)
    with pytest.raises(CollectionError, match=message):
        collector.collect(3, progress=False)
    # The next run starts clean: the dead worker's temporary folder is removed.
    with pytest.raises(CollectionError):
        collector.collect(3, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fewer_shards_than_workers_is_pointed_out_when_planned_not_on_resume(tmp_path):
    with pytest.warns(UserWarning, match=r"3 episodes make 2 shards of up to 2 episodes, so only 2 of 3"):
        DataCollector("WM-GridWorld-v0", tmp_path / "a", workers=3, episodes_per_shard=2, max_steps=4).collect(
            3, progress=False)
    collector = DataCollector("WM-GridWorld-v0", tmp_path / "b", workers=3, episodes_per_shard=2, max_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collector.collect(5, progress=False)  # 3 shards for 3 workers
        shutil.rmtree(tmp_path / "b" / "shard_00001")
        collector.collect(5, progress=False)  # 1 shard left to redo of a plan that fits the workers
    # A size the user never chose is explained as the default it is.
    with pytest.warns(UserWarning, match=r"3 episodes make 1 shard of up to 1000 episodes \(the default for episodes "
                                         r"of up to 4 steps: few shard files, but little parallelism"):
        DataCollector("WM-GridWorld-v0", tmp_path / "c", workers=3, max_steps=4).collect(3, progress=False)


def test_numpy_integers_count_as_ints(tmp_path):
    collector = DataCollector("WM-GridWorld-v0", tmp_path, seed=np.int64(3), workers=np.int64(1),
                              episodes_per_shard=np.int64(2), max_steps=np.int64(4))
    manifest = collector.collect(np.int64(2), progress=False)
    assert manifest["episodes"] == 2 and manifest["seed"] == 3 and type(manifest["seed"]) is int


class _IntBoxEnv(GridWorldEnv):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.action_space = spaces.Box(0, 4, (2,), np.int64)


def test_an_integer_box_action_space_is_refused_by_the_data_policies(tmp_path):
    """Uniform floats truncated to ints never reach the upper bound, and a truncated walk collapses."""
    if "WMTest-IntBox-v0" not in registry:
        register(id="WMTest-IntBox-v0", entry_point=f"{__name__}:_IntBoxEnv", max_episode_steps=5)
    with pytest.raises(ValueError, match="need a float Box"):
        DataCollector("WMTest-IntBox-v0", tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"policy": "greedy"}, "policy must be one of"), ({"workers": 0}, r"workers \(--workers\) must be"),
     ({"episodes_per_shard": 0}, r"episodes_per_shard \(--episodes-per-shard\) must be"),
     ({"seed": -1}, r"seed \(--seed\) must be"), ({"max_steps": 0}, r"max_steps \(--max-steps\) must be"),
     ({"vectorization": "threads"}, "vectorization must be one of"), ({"env_kwargs": {"size": object()}}, "JSON"),
     ({"env_id": "CartPole-v1"}, "ImageObservation"), ({"env_id": "NoSuchEnv-v0"}, "cannot make env")],
)
def test_bad_settings_are_explained(tmp_path, kwargs, message):
    kwargs = {"env_id": "WM-GridWorld-v0", **kwargs}
    with pytest.raises(ValueError, match=message):
        DataCollector(out_dir=tmp_path, **kwargs)


def test_collect_needs_a_positive_episode_count(tmp_path):
    with pytest.raises(ValueError, match=r"episodes \(--episodes\) must be"):
        DataCollector("WM-GridWorld-v0", tmp_path).collect(0)


# -- --pixels: the rendered frames of a state-vector env --------------------------------------------
PIXELS_TINY = ["--episodes", "3", "--max-steps", "2", "--episodes-per-shard", "1", "--workers", "1", "--no-progress"]


def test_pixels_collects_a_state_vector_envs_rendered_frames_that_later_stages_rebuild(tmp_path, capsys):
    from helpers import tiny_config

    from wm_agent.cli import main
    from wm_agent.data.dataset import EpisodeDataset
    from wm_agent.latent_env import LatentObservation, check_data_fits
    from wm_agent.commands.train import action_overrides
    from wm_agent.world_model import WorldModel

    out = tmp_path / "cartpole"
    assert main(["collect", "--env", "CartPole-v1", "--pixels", "--out", str(out), *PIXELS_TINY]) == 0
    assert "3 episodes, 9 frames, 6 steps in 3 shards of WM-Pixels-v0" in capsys.readouterr().out
    ds = EpisodeDataset(out)
    # The env and its wrapper are recorded as what gym.make rebuilds, CartPole's own episode limit with them
    assert ds.env_id == "WM-Pixels-v0"
    assert ds.identity["env_kwargs"] == {"env_id": "CartPole-v1", "max_episode_steps": 500}
    frames = ds.frames(np.arange(ds.num_frames))
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.min() < frames.max()  # a picture (CartPole's cart and pole on white), not a blank
    assert ds.action_space == spaces.Discrete(2)

    # A world model built from this data as train-vae builds it trains on it like on any other (V, then M)
    # and rebuilds the same env: LatentObservation accepts it, and an episode's reset seed gives back the
    # frame stored for it.
    wm = WorldModel(tiny_config(**action_overrides(ds.action_space)), ds.env_id, "cpu", ds.identity["env_kwargs"])
    check_data_fits(ds, wm, "the model")
    assert wm.train_vae(frames, epochs=1, batch_size=9)
    episodes = [ds.episode(i) for i in range(ds.num_episodes)]
    sequences = {key: np.stack([ep[key] for ep in episodes]) for key in ("obs", "actions", "rewards")}
    sequences["dones"] = np.stack([ep["terminated"] for ep in episodes])
    assert wm.train_rnn(sequences, epochs=1, batch_size=3)
    assert wm.episode_limit() == 500  # dreams end where CartPole's episodes do
    env = wm.make_env()
    first_seed = int(shard_rngs(0, 0, 1)[0][0])
    np.testing.assert_array_equal(env.reset(seed=first_seed)[0], ds.frames(np.array([0]))[0])
    obs, info = LatentObservation(env, wm).reset(seed=first_seed)
    assert obs.shape == (wm.config.z_size + wm.config.hidden_size,)
    np.testing.assert_array_equal(info["frame"], frames[0])

    # Spelled out instead of --pixels, the same settings: a re-run resumes (here: finds it complete)
    again = DataCollector("WM-Pixels-v0", out, env_kwargs=ds.identity["env_kwargs"], max_steps=2)
    assert again.collect(3, progress=False)["episodes"] == 3 and again.stats["shards"] == 0
    # and a vector env of the pixel env writes the same bytes
    DataCollector("CartPole-v1", tmp_path / "sync", max_steps=2, workers=2, vectorization="sync", episodes_per_shard=1,
                  pixels=True).collect(3, progress=False)
    assert _files(tmp_path / "sync") == _files(out)


def test_without_pixels_a_state_vector_env_is_refused_pointing_to_pixels(tmp_path, capsys):
    from wm_agent.cli import main

    with pytest.raises(ValueError, match=r"must observe \(H, W, 3\) uint8 images.*pixels \(--pixels\)"):
        DataCollector("CartPole-v1", tmp_path / "api")
    assert main(["collect", "--env", "CartPole-v1", "--out", str(tmp_path / "cli"), *PIXELS_TINY]) == 1
    err = capsys.readouterr().err
    assert "--pixels" in err and "Traceback" not in err


@pytest.mark.parametrize("env_id, env_kwargs, message", [
    # its observations are already frames: its render is another picture (CarRacing's zoomed-out view)
    ("WM-GridWorld-v0", {}, r"already observes \(64, 64, 3\) uint8 images.*drop it"),
    ("CartPole-v1", {"render_mode": "human"}, "not render_mode 'human': drop render_mode"),
])
def test_pixels_with_an_image_env_or_another_render_mode_is_refused(tmp_path, capsys, env_id, env_kwargs, message):
    from wm_agent.cli import main

    with pytest.raises(ValueError, match=message):
        DataCollector(env_id, tmp_path / "api", env_kwargs=env_kwargs, pixels=True)
    argv = ["collect", "--env", env_id, "--pixels", "--env-kwargs", json.dumps(env_kwargs),
            "--out", str(tmp_path / "cli")]
    assert main([*argv, *PIXELS_TINY]) == 1
    assert "pixels (--pixels)" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()  # refused before a folder was made


# -- policies ---------------------------------------------------------------------------------------
def _actions(tmp_path: Path, env_id: str, policy: str) -> tuple[np.ndarray, np.ndarray]:
    manifest = DataCollector(env_id, tmp_path / policy, policy=policy, episodes_per_shard=10).collect(
        10, progress=False
    )
    a = _load(tmp_path / policy / manifest["shards"][0]["name"])
    return a["actions"], a["lengths"]


def _within_episode_diffs(actions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    last_of_episode = np.cumsum(lengths)[:-1] - 1
    keep = np.ones(len(actions) - 1, bool)
    keep[last_of_episode] = False  # do not compare across episode boundaries
    return (actions[1:] - actions[:-1])[keep]


def test_brownian_box_actions_stay_in_bounds_and_drift_slowly(tmp_path):
    box_id = f"{__name__}:WMTest-Box-v0"
    brownian, lengths_b = _actions(tmp_path, box_id, "brownian")
    random, lengths_r = _actions(tmp_path, box_id, "random")
    for actions in (brownian, random):
        assert actions.dtype == np.float32 and actions.shape[1:] == (2,)
        assert actions.min() >= -1 and actions.max() <= 1
    brownian_step = np.abs(_within_episode_diffs(brownian, lengths_b)).mean()
    random_step = np.abs(_within_episode_diffs(random, lengths_r)).mean()
    assert brownian_step < 0.3 * random_step


def test_brownian_discrete_actions_are_sticky(tmp_path):
    brownian, lengths_b = _actions(tmp_path, "WM-GridWorld-v0", "brownian")
    random, lengths_r = _actions(tmp_path, "WM-GridWorld-v0", "random")
    repeat_brownian = np.mean(_within_episode_diffs(brownian, lengths_b) == 0)
    repeat_random = np.mean(_within_episode_diffs(random, lengths_r) == 0)
    assert repeat_brownian > 0.6 and repeat_random < 0.4


@pytest.mark.parametrize("vectorization", ["processes", "sync"])
def test_progress_bar_counts_frames(tmp_path, capsys, vectorization):
    DataCollector("WM-GridWorld-v0", tmp_path, max_steps=5, vectorization=vectorization).collect(2, progress=True)
    err = capsys.readouterr().err
    assert "frame/s" in err and "episodes 2/2" in err


def test_collect_config_defaults_match_the_collector():
    import inspect

    signature = inspect.signature(DataCollector.__init__).parameters
    config = CollectConfig(out="x")
    for name in ("policy", "seed", "workers", "episodes_per_shard", "max_steps", "vectorization", "pixels"):
        assert getattr(config, name) == signature[name].default, name


# -- older data folders ---------------------------------------------------------------------------------
def test_a_folder_of_the_raw_frame_format_is_refused(tmp_path):
    """A folder collected before frames were compressed (manifest format 1, obs.npy) is not mixed
    with new shards: the collector names the difference instead."""
    DataCollector("WM-GridWorld-v0", tmp_path, max_steps=5).collect(1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["frame_codec"]
    manifest["format"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different settings.*frame_codec: None there, 'lz4-block' now"):
        DataCollector("WM-GridWorld-v0", tmp_path, max_steps=5).collect(2, progress=False)


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(), reason="no forkserver")
def test_the_collector_adds_to_a_users_forkserver_preload_list_instead_of_replacing_it(monkeypatch):
    from multiprocessing import forkserver

    from wm_agent.data.shard_writer import _mp_context

    monkeypatch.setattr(forkserver._forkserver, "_preload_modules", ["__main__", "json"])
    _mp_context()
    # "__main__" stays out: preloading a script without a main guard would run it again in the server.
    assert forkserver._forkserver._preload_modules == ["json", "wm_agent.data.shard_writer"]
    _mp_context()  # a second collection does not list the collector twice
    assert forkserver._forkserver._preload_modules == ["json", "wm_agent.data.shard_writer"]
