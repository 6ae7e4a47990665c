"""Iterative training: collection driven by a checkpoint's controller (collect --policy controller), and V and M
trained on several collection folders at once (train-vae / train-rnn --data A B)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import test_collect  # noqa: F401  (registers WMTest-Box-v0)
from helpers import tiny_config, tiny_world_model
from wm_agent.cli import main
from wm_agent.commands import train
from wm_agent.commands.train import TrainRNNConfig, TrainVAEConfig, run_train_rnn, run_train_vae
from wm_agent.config import ResumeMismatch
from wm_agent.data.collect import DataCollector
from wm_agent.data.dataset import EpisodeDataset
from wm_agent.data.shard_writer import CollectionError, shard_rngs
from wm_agent.data.union import EpisodeUnion, open_episodes
from wm_agent.rollouts import make_latent_env, run_episode
from wm_agent.training.fit import sequence_windows
from wm_agent.world_model import WorldModel

SMALL = dict(episodes_per_shard=2, max_steps=10)


def _driver(path: Path, seed: int = 0, controller: bool = True, **config) -> Path:
    """A tiny checkpoint whose (random) controller counts as trained, saved at ``path``."""
    wm = tiny_world_model(seed, **config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        with torch.no_grad():
            wm.controller.params.copy_(torch.randn_like(wm.controller.params))
    if controller:
        wm.train_state["cmaes"] = {"generation": 1}
    wm.save(path)
    return path


def _box_driver(path: Path) -> Path:
    wm = WorldModel(tiny_config(action_dim=2, discrete_actions=False, action_low=(-1.0, -1.0),
                                action_high=(1.0, 1.0), controller="linear"), env_id="WMTest-Box-v0")
    wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}, "cmaes": {"generation": 1}}
    wm.save(path)
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("shard_*/*.npy"))}


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    return _driver(tmp_path_factory.mktemp("driver") / "wm.pt")


# -- collect --policy controller ----------------------------------------------------------------------
def test_controller_data_loads_and_is_the_same_in_workers_and_in_process(driver, tmp_path):
    one = DataCollector(None, tmp_path / "one", policy="controller", world_model=driver, seed=5, **SMALL)
    manifest = one.collect(5, progress=False)
    DataCollector(None, tmp_path / "two", policy="controller", world_model=driver, seed=5, workers=2,
                  **SMALL).collect(5, progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    ds = EpisodeDataset(tmp_path / "one")
    assert ds.num_episodes == 5 and ds.env_id == "WM-GridWorld-v0" and ds.frames(np.arange(3)).shape == (3, 64, 64, 3)
    assert manifest["policy"] == "controller" and manifest["policy_world_model"] == str(driver.absolute())
    assert manifest["policy_options"]["noise"] == 0.1 and manifest["policy_options"]["greedy"] is False
    assert len(manifest["policy_options"]["world_model_sha256"]) == 64
    assert ds.identity["policy_options"] == manifest["policy_options"]


@pytest.mark.parametrize("greedy", [False, True])
def test_without_noise_the_actions_are_the_ones_evaluate_takes(driver, tmp_path, greedy):
    DataCollector(None, tmp_path, policy="controller", world_model=driver, seed=3, policy_noise=0.0,
                  greedy=greedy, **SMALL).collect(4, progress=False)
    ds = EpisodeDataset(tmp_path)
    wm = WorldModel.load(driver)
    env = make_latent_env("WM-GridWorld-v0", wm)
    seeds = np.concatenate([shard_rngs(3, i, 2)[0] for i in range(2)])
    for i, seed in enumerate(seeds):
        played = run_episode(env, wm, int(seed), greedy, max_steps=10, record=True)
        episode = ds.episode(i)
        np.testing.assert_array_equal(episode["actions"], played["actions"])
        np.testing.assert_array_equal(episode["obs"], played["frames"])
    env.close()


def test_run_episode_calls_on_step_after_every_step_with_its_reward(driver):
    wm = WorldModel.load(driver)
    env = make_latent_env("WM-GridWorld-v0", wm)
    seen = []
    played = run_episode(env, wm, 5, False, max_steps=10, record=True,
                         on_step=lambda e, reward: seen.append((e is env, reward)))
    assert [same for same, _ in seen] == [True] * played["steps"]
    np.testing.assert_array_equal(np.array([r for _, r in seen], np.float32), played["rewards"])
    env.close()


def test_noise_changes_discrete_actions_and_stays_reproducible(driver, tmp_path):
    runs = {}
    for name, noise in (("calm", 0.0), ("noisy", 1.0), ("noisy_again", 1.0)):
        DataCollector(None, tmp_path / name, policy="controller", world_model=driver, seed=3, policy_noise=noise,
                      **SMALL).collect(4, progress=False)
        runs[name] = EpisodeDataset(tmp_path / name).actions_all()
    assert _files(tmp_path / "noisy") == _files(tmp_path / "noisy_again")
    assert not np.array_equal(runs["calm"][:5], runs["noisy"][:5])


def test_box_actions_get_clipped_gaussian_noise(tmp_path):
    ckpt = _box_driver(tmp_path / "box.pt")
    actions = {}
    for noise in (0.0, 0.5):
        out = tmp_path / f"noise{noise}"
        DataCollector(None, out, policy="controller", world_model=ckpt, seed=1, policy_noise=noise,
                      **SMALL).collect(3, progress=False)
        actions[noise] = EpisodeDataset(out).actions_all()
        assert actions[noise].dtype == np.float32 and np.abs(actions[noise]).max() <= 1.0
    calm = actions[0.0]
    # An untrained linear controller acts alike in every state, so the calm actions hardly move.
    assert np.ptp(calm, axis=0).max() < 0.2 < np.ptp(actions[0.5], axis=0).min()


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "random", "world_model": "x.pt"}, "world_model (--world-model) goes with policy controller"),
    ({"policy": "brownian", "policy_noise": 0.1}, "policy_noise (--policy-noise) goes with policy controller"),
    ({"policy": "random", "greedy": True}, "greedy (--greedy) goes with policy controller"),
    ({"policy": "controller"}, "needs world_model (--world-model)"),
    ({"policy": "controller", "world_model": "DRIVER", "vectorization": "sync"}, "worker processes only"),
    ({"policy": "controller", "world_model": "DRIVER", "backend": "ray"}, "this machine only"),
    ({"policy": "controller", "world_model": "DRIVER", "policy_noise": 1.5}, "policy_noise (--policy-noise) must"),
    ({"policy": "controller", "world_model": "missing.pt"}, "world_model (--world-model) missing.pt is not a file"),
    ({"policy": "controller", "world_model": "DRIVER", "env_id": "WMTest-Box-v0"}, "was trained on WM-GridWorld-v0"),
    ({"policy": "controller", "world_model": "DRIVER", "env_kwargs": {"size": 4}}, "differ from the {}"),
    ({"policy": "controller", "world_model": "UNTRAINED"}, "has no trained controller"),
])
def test_bad_controller_settings_are_refused(driver, tmp_path, kwargs, message):
    names = {"DRIVER": str(driver), "UNTRAINED": str(_driver(tmp_path / "untrained.pt", controller=False))}
    kwargs = {"env_id": None, **kwargs}
    if kwargs.get("world_model") in names:
        kwargs["world_model"] = names[kwargs["world_model"]]
    with pytest.raises(ValueError, match=None) as info:
        DataCollector(out_dir=tmp_path / "out", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_combination_in_one_line(driver, tmp_path, capsys):
    assert main(["collect", "--out", str(tmp_path / "d"), "--policy-noise", "0.2", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "policy_noise (--policy-noise) goes with policy controller" in err and len(err.splitlines()) == 1
    assert main(["collect", "--out", str(tmp_path / "d"), "--policy", "controller", "--world-model", str(driver),
                 "--episodes", "2", "--episodes-per-shard", "2", "--max-steps", "5", "--no-progress"]) == 0
    assert EpisodeDataset(tmp_path / "d").manifest["policy"] == "controller"


def test_a_resume_with_another_driver_or_noise_is_refused_but_a_moved_checkpoint_is_not(driver, tmp_path):
    out = tmp_path / "data"
    DataCollector(None, out, policy="controller", world_model=driver, **SMALL).collect(2, progress=False)
    for other in ({"policy_noise": 0.3}, {"greedy": True},
                  {"world_model": _driver(tmp_path / "other.pt", seed=1)}):
        settings = {"world_model": driver, **other}
        with pytest.raises(ValueError, match="different settings.*policy_options"):
            DataCollector(None, out, policy="controller", **settings, **SMALL).collect(4, progress=False)
    moved = shutil.copy(driver, tmp_path / "moved.pt")
    manifest = DataCollector(None, out, policy="controller", world_model=moved, **SMALL).collect(4, progress=False)
    assert manifest["episodes"] == 4


def test_a_checkpoint_changed_during_a_collection_is_not_mixed_in(driver, tmp_path):
    ckpt = Path(shutil.copy(driver, tmp_path / "wm.pt"))
    collector = DataCollector(None, tmp_path / "data", policy="controller", world_model=ckpt, workers=2, **SMALL)
    _driver(ckpt, seed=2)  # trained further in place before the workers load it
    with pytest.raises(CollectionError, match="changed since this collection started"):
        collector.collect(4, progress=False)


# -- several --data folders -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory, driver) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("folders")
    DataCollector("WM-GridWorld-v0", root / "brownian", policy="brownian", **SMALL).collect(3, progress=False)
    DataCollector(None, root / "driven", policy="controller", world_model=driver, **SMALL).collect(3, progress=False)
    return str(root / "brownian"), str(root / "driven")


def test_a_union_reads_every_folder_in_order(folders):
    a, b = EpisodeDataset(folders[0]), EpisodeDataset(folders[1])
    union = open_episodes(folders)
    assert isinstance(union, EpisodeUnion) and isinstance(open_episodes(folders[0]), EpisodeDataset)
    assert union.num_frames == a.num_frames + b.num_frames and union.num_episodes == 6
    every = [part.frames(np.arange(part.num_frames)) for part in (a, b)]
    np.testing.assert_array_equal(union.frames(np.arange(union.num_frames)), np.concatenate(every))
    np.testing.assert_array_equal(union.actions_all(), np.concatenate([a.actions_all(), b.actions_all()]))
    np.testing.assert_array_equal(union.lengths, np.concatenate([a.lengths, b.lengths]))
    seen = np.concatenate([batch.reshape(len(batch), -1).sum(1) for batch in
                           union.iter_frame_batches(4, np.random.default_rng(0))])
    assert len(seen) == union.num_frames
    assert union.identity == {"folders": [a.identity, b.identity]}


def test_folders_of_different_envs_or_one_given_twice_are_refused(folders, tmp_path):
    other = tmp_path / "small_grid"
    DataCollector("WM-GridWorld-v0", other, env_kwargs={"size": 4}, **SMALL).collect(2, progress=False)
    with pytest.raises(ValueError, match=f"{folders[0]} and {other} differ in --env-kwargs"):
        open_episodes([folders[0], str(other)])
    with pytest.raises(ValueError, match="twice"):
        open_episodes([folders[0], folders[0]])


@pytest.fixture
def tiny_preset(monkeypatch):
    monkeypatch.setitem(train.PRESETS, "WM-GridWorld-v0", tiny_config)


def test_v_and_m_train_on_several_folders_and_resume_only_with_the_same_ones(folders, tmp_path, tiny_preset,
                                                                          monkeypatch):
    ckpt = tmp_path / "wm.pt"
    vae = dict(out=str(ckpt), batch_size=32, progress=False, device="cpu")
    run_train_vae(TrainVAEConfig(data=folders, epochs=1, **vae))
    wm = WorldModel.load(ckpt)
    assert [part["policy"] for part in wm.train_state["vae"]["data"]["folders"]] == ["brownian", "controller"]
    for other in (folders[:1], folders[::-1]):
        with pytest.raises(ResumeMismatch, match="trained on other data"):
            run_train_vae(TrainVAEConfig(data=other, epochs=2, resume=True, **vae))
    assert run_train_vae(TrainVAEConfig(data=folders, epochs=2, resume=True, **vae))["epochs_done"] == 2

    rnn = dict(world_model=str(ckpt), batch_size=4, seq_len=4, progress=False, device="cpu")
    seen = []

    def windows(ds, codes, seq_len):
        seen.append((ds.num_episodes, len(codes)))
        return sequence_windows(ds, codes, seq_len)

    monkeypatch.setattr(train, "sequence_windows", windows)
    assert run_train_rnn(TrainRNNConfig(data=list(folders), epochs=1, **rnn))["epochs_done"] == 1
    assert seen == [(6, open_episodes(folders).num_frames)]  # M read the episodes of both folders
    with pytest.raises(ResumeMismatch, match="trained on other data"):
        run_train_rnn(TrainRNNConfig(data=folders[1], epochs=2, resume=True, **rnn))


def test_the_cli_takes_several_data_folders(folders, tmp_path, tiny_preset, capsys):
    ckpt = tmp_path / "wm.pt"
    assert main(["train-vae", "--data", *folders, "--out", str(ckpt), "--epochs", "0", "--no-progress"]) == 0
    assert main(["train-vae", "--data", folders[0], "--out", str(ckpt), "--epochs", "0", "--no-progress"]) == 1
    assert "pass --resume" in capsys.readouterr().err
    data = json.loads(json.dumps(WorldModel.load(ckpt).train_state["vae"]["data"]))
    assert len(data["folders"]) == 2
