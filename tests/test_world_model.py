"""WorldModel: checkpoints (and their failure modes), config validation, dreams and the training jobs."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import (
    CodeRunningPayload,
    gridworld_frames,
    gridworld_sequences,
    tiny_config,
    tiny_world_model,
    unpickling_calls_os_system,
)

import wm_agent.commands.train as train
from wm_agent.data.collect import DataCollector
from wm_agent.commands.train import (
    TrainRNNConfig,
    TrainVAEConfig,
    run_train_rnn,
    run_train_vae,
)
from wm_agent.config import WorldModelConfig
from wm_agent.dream_env import DreamEnv
from wm_agent.models.mdnrnn import MDNRNN
from wm_agent.models.vqvae import VQVAE
from wm_agent.training.fit import NonFiniteLoss
from wm_agent.world_model import FORMAT, VERSION, WorldModel


def _outputs(wm: WorldModel, frames: np.ndarray) -> dict[str, torch.Tensor]:
    """Everything a checkpoint must reproduce, for the same inputs (at least two frames)."""
    with torch.no_grad():
        z = wm.encode(frames)  # (N, Z)
        seq = z[None].expand(2, -1, -1)  # two identical sequences of N steps
        actions = torch.arange(len(frames))[None].expand(2, -1) % wm.config.action_dim
        params, hidden = wm.rnn.eval()(seq, actions)
        h = hidden[0][0]  # (2, H)
        return {"z": z, "mu": params["mu"], "pi": params["pi"], "reward": params["reward"], "h": h,
                "recon": torch.as_tensor(wm.decode(z)),
                "controller": wm.controller.from_obs(torch.cat([z[:2], h], -1))}


@pytest.fixture
def saved(tmp_path):
    wm = tiny_world_model(seed=1)
    wm.controller.set_flat(np.random.default_rng(0).normal(size=wm.controller.num_params))
    wm.controller.fit_normalizer(torch.randn(50, wm.controller.in_dim) * 3 + 1)
    wm.metrics = {"vae": {"recon_mse": 0.5}}
    path = tmp_path / "wm.pt"
    wm.save(path)
    return wm, path


# -- save / load -------------------------------------------------------------------------------------
def test_save_load_round_trip(saved):
    wm, path = saved
    loaded = WorldModel.load(path)
    assert loaded.config == wm.config
    assert loaded.env_id == "WM-GridWorld-v0"
    assert torch.equal(loaded.start_codes, wm.start_codes) and loaded.start_codes.dtype == torch.long
    assert loaded.metrics == wm.metrics
    assert loaded.train_state == wm.train_state
    frames = gridworld_frames(4, first_seed=20)
    for name, (a, b) in {k: (v, _outputs(loaded, frames)[k]) for k, v in _outputs(wm, frames).items()}.items():
        assert torch.equal(a, b), name
    for module in ("vae", "rnn", "controller"):
        sa, sb = getattr(wm, module).state_dict(), getattr(loaded, module).state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), module


def test_save_is_atomic_and_replaces(saved, tmp_path):
    wm, path = saved
    wm.metrics = {"changed": 1}
    wm.save(path)
    assert WorldModel.load(path).metrics == {"changed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm.pt"]  # no temporary files left behind


def test_numpy_values_in_metrics_survive_a_round_trip(saved):
    wm, path = saved
    wm.metrics["eval"] = {"mean_return": np.float64(0.5), "returns": np.array([0.25, 0.75])}
    wm.save(path)
    loaded = WorldModel.load(path)
    assert float(loaded.metrics["eval"]["mean_return"]) == 0.5
    assert list(np.asarray(loaded.metrics["eval"]["returns"])) == [0.25, 0.75]


def test_checkpoint_loads_with_plain_weights_only_torch_load(saved):
    wm, path = saved
    state = torch.load(path, weights_only=True)
    assert state["format"] == FORMAT and state["version"] == VERSION
    assert WorldModelConfig.from_dict(state["config"]) == wm.config
    assert set(state) >= {"vae", "rnn", "controller", "start_codes", "config"}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        WorldModel.load(tmp_path / "nope.pt")


def test_truncated_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="wm.pt"):
        WorldModel.load(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="garbage.pt"):
        WorldModel.load(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        WorldModel.load(path)


@pytest.mark.parametrize("obj", [{"weights": torch.zeros(3)}, [1, 2, 3], torch.zeros(2)])
def test_torch_file_without_the_format_tag(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match="format tag"):
        WorldModel.load(path)


def _rewrite(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_wrong_version(saved):
    _, path = saved
    _rewrite(path, lambda s: s.update(version=VERSION + 1))
    with pytest.raises(ValueError, match="version"):
        WorldModel.load(path)


def test_config_with_unknown_fields(saved):
    _, path = saved
    _rewrite(path, lambda s: s["config"].update(frobnication=3))
    with pytest.raises(ValueError, match="frobnication"):
        WorldModel.load(path)


def test_config_that_is_invalid(saved):
    _, path = saved
    _rewrite(path, lambda s: s["config"].update(image_size=60))
    with pytest.raises(ValueError, match="unusable config"):
        WorldModel.load(path)


def test_weights_that_do_not_match_the_config(saved):
    _, path = saved
    _rewrite(path, lambda s: s["config"].update(hidden_size=32))
    with pytest.raises(ValueError, match="weights do not match"):
        WorldModel.load(path)


def test_expect_config(saved):
    wm, path = saved
    assert WorldModel.load(path, expect_config=tiny_config()).config == wm.config
    with pytest.raises(ValueError, match="num_mixtures"):
        WorldModel.load(path, expect_config=tiny_config(num_mixtures=3))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(CodeRunningPayload(marker)))
    else:  # a real torch zip file with a format tag, and code inside
        torch.save({"format": FORMAT, "version": VERSION, "config": {}, "x": CodeRunningPayload(marker)}, path)
    assert unpickling_calls_os_system(path.read_bytes())  # armed: the marker's absence below means something
    with pytest.raises(ValueError, match="evil.pt"):
        WorldModel.load(path)
    assert not marker.exists()


# -- config validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=60), "image_size"),
        (dict(latent_grid=16), "2\\*\\*len\\(channels\\)"),
        (dict(channels=(4, 4)), "2\\*\\*len\\(channels\\)"),
        (dict(latent_grid=0), "latent_grid"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(num_embeddings=0), "num_embeddings"),
        (dict(num_mixtures=0), "num_mixtures"),
        (dict(hidden_size=-1), "hidden_size"),
        (dict(action_dim=0), "action_dim"),
        (dict(kernel_size=3), "kernel_size"),
        (dict(min_log_sigma=1.0, max_log_sigma=1.0), "min_log_sigma"),
        (dict(action_dim=3, discrete_actions=False, action_low=(-1.0, 0.0), action_high=(1.0, 1.0)), "action_low"),
        (dict(action_dim=2, discrete_actions=False, action_low=(-1.0, 0.0)), "action_low"),
        (dict(latent_dim=64, hidden_size=2048), "controller"),
        (dict(controller_hidden=64, hidden_size=512, max_controller_params=5000), "controller"),
    ],
)
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldModelConfig(**kwargs)


def test_config_controller_error_explains_itself():
    with pytest.raises(ValueError) as exc:
        WorldModelConfig(latent_dim=64, hidden_size=2048)
    msg = str(exc.value)
    n = (8 * 8 * 64 + 2048) * 4 + 4
    assert str(n) in msg and "max_controller_params" in msg


def test_config_dict_round_trip():
    for cfg in (WorldModelConfig(), tiny_config(), WorldModelConfig.car_racing()):
        d = cfg.to_dict()
        assert json.loads(json.dumps(d)) == d  # plain JSON values
        assert WorldModelConfig.from_dict(d) == cfg
    assert WorldModelConfig(channels=[4, 4, 4]).channels == (4, 4, 4)


def test_presets_are_valid():
    assert WorldModelConfig.gridworld().discrete_actions and WorldModelConfig.gridworld().action_dim == 4
    car = WorldModelConfig.car_racing()
    assert not car.discrete_actions and car.action_dim == 3 and len(car.action_low) == 3
    for cfg in (WorldModelConfig.gridworld(), car):
        assert cfg.controller_params <= cfg.max_controller_params
        assert cfg.image_size // cfg.latent_grid == 2 ** len(cfg.channels)


# -- dream -------------------------------------------------------------------------------------------
def test_dream_shapes_discrete():
    wm = tiny_world_model()
    frame = gridworld_frames(1, first_seed=30)[0]
    out = wm.dream(frame, np.array([0, 1, 2, 3, 0]))
    t, z = 5, wm.config.z_size
    assert out["frames"].shape == (t + 1, 64, 64, 3) and out["frames"].dtype == np.uint8
    assert out["rewards"].shape == (t,) and out["rewards"].dtype == np.float32
    assert out["dones"].shape == (t,) and ((out["dones"] >= 0) & (out["dones"] <= 1)).all()
    assert out["latents"].shape == (t + 1, z)
    np.testing.assert_array_equal(out["latents"][0], wm.encode(frame[None])[0].numpy())
    np.testing.assert_array_equal(out["frames"][0], wm.decode(wm.encode(frame[None]))[0])
    # every imagined latent lies on the codebook
    lat = torch.as_tensor(out["latents"])
    torch.testing.assert_close(wm.vae.indices_to_latent(wm.vae.latent_to_indices(lat)), lat, rtol=0, atol=0)


def test_dream_shapes_continuous():
    wm = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    frame = gridworld_frames(1)[0]
    out = wm.dream(frame, np.random.default_rng(0).uniform(0, 1, (4, 3)).astype(np.float32), temperature=1.0, seed=0)
    assert out["frames"].shape == (5, 64, 64, 3) and out["latents"].shape == (5, wm.config.z_size)
    assert out["rewards"].shape == out["dones"].shape == (4,)


def test_dream_is_deterministic_at_temperature_zero_and_seeded_above():
    wm = tiny_world_model()
    frame = gridworld_frames(1)[0]
    actions = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    a, b = wm.dream(frame, actions), wm.dream(frame, actions)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    s1, s2 = wm.dream(frame, actions, 1.0, seed=5), wm.dream(frame, actions, 1.0, seed=5)
    for k in s1:
        np.testing.assert_array_equal(s1[k], s2[k])
    s3 = wm.dream(frame, actions, 1.0, seed=6)
    assert not np.array_equal(s1["latents"], s3["latents"])


def test_dream_rejects_invalid_actions():
    wm = tiny_world_model()
    with pytest.raises(ValueError):
        wm.dream(gridworld_frames(1)[0], np.array([0, 7]))


# -- training in memory ------------------------------------------------------------------------------
def test_train_vae_and_rnn_in_memory():
    wm = tiny_world_model(trained=False)
    frames = gridworld_frames(16)
    history = wm.train_vae(frames, epochs=2, batch_size=8)
    assert [h["epoch"] for h in history] == [1, 2] and wm.train_state["vae"]["epoch"] == 2
    for h in history:
        assert h["stage"] == "vae" and h["images"] == 16
        assert np.isfinite(h["recon_mse"]) and 1 <= h["perplexity"] <= wm.config.num_embeddings
        assert 0 < h["usage"] <= 1
    history = wm.train_rnn(gridworld_sequences(4, 5), epochs=2, batch_size=2)
    assert [h["epoch"] for h in history] == [1, 2] and wm.train_state["rnn"]["epoch"] == 2
    for h in history:
        assert h["stage"] == "rnn" and all(np.isfinite(h[k]) for k in ("loss", "nll", "reward_mse", "done_bce"))
    seqs = gridworld_sequences(4, 5)
    assert history[0]["steps"] == int(seqs["mask"].sum())  # masked steps are not counted
    with pytest.warns(UserWarning, match="training V further makes its trained MDN-RNN stale"):
        wm.train_vae(frames, epochs=1, batch_size=8)
    assert wm.train_state["vae"]["epoch"] == 3  # continues the count


def _trained(seed: int, train_seed: int) -> WorldModel:
    wm = tiny_world_model(seed=seed, trained=False)
    wm.train_vae(gridworld_frames(6), epochs=2, batch_size=3, seed=train_seed)
    wm.train_rnn(gridworld_sequences(3, 3), epochs=2, batch_size=2, seed=train_seed)
    return wm


def _same_weights(a: WorldModel, b: WorldModel) -> bool:
    sa = {**{f"v.{k}": v for k, v in a.vae.state_dict().items()},
          **{f"m.{k}": v for k, v in a.rnn.state_dict().items()}}
    sb = {**{f"v.{k}": v for k, v in b.vae.state_dict().items()},
          **{f"m.{k}": v for k, v in b.rnn.state_dict().items()}}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_reproducible():
    a, b, c = _trained(0, 3), _trained(0, 3), _trained(0, 4)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


# -- the command-line jobs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    DataCollector("WM-GridWorld-v0", out, episodes_per_shard=2, max_steps=8).collect(4, progress=False)
    return str(out)


@pytest.fixture
def tiny_preset(monkeypatch):
    """`train-vae --preset auto` picks the tiny sizes for GridWorld."""
    monkeypatch.setitem(train.PRESETS, "WM-GridWorld-v0", tiny_config)


def _vae_cfg(dataset, out, **kw):
    return TrainVAEConfig(data=dataset, out=str(out), batch_size=16, progress=False, device="cpu", **kw)


def _rnn_cfg(dataset, ckpt, **kw):
    return TrainRNNConfig(data=dataset, world_model=str(ckpt), batch_size=4, seq_len=4, progress=False,
                          device="cpu", **kw)


def _metrics(ckpt) -> list[dict]:
    return [json.loads(line) for line in Path(f"{ckpt}.metrics.jsonl").read_text().splitlines()]


def test_run_train_vae_and_rnn_write_checkpoint_and_metrics(dataset, tiny_preset, tmp_path):
    ckpt = tmp_path / "wm.pt"
    result = run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    assert result["epochs_done"] == 1 and ckpt.exists()
    wm = WorldModel.load(ckpt)
    assert wm.config == tiny_config() and wm.env_id == "WM-GridWorld-v0"
    assert wm.train_state["vae"]["epoch"] == 1 and len(wm.start_codes) == 4  # one start frame per episode
    assert [(m["stage"], m["epoch"]) for m in _metrics(ckpt)] == [("vae", 1)]

    # resume continues the epoch count and appends to the metrics
    result = run_train_vae(_vae_cfg(dataset, ckpt, epochs=2, resume=True))
    assert result["epochs_done"] == 2 and len(result["history"]) == 1
    assert WorldModel.load(ckpt).train_state["vae"]["epoch"] == 2
    assert [(m["stage"], m["epoch"]) for m in _metrics(ckpt)] == [("vae", 1), ("vae", 2)]

    # nothing left to do: no epoch runs
    result = run_train_vae(_vae_cfg(dataset, ckpt, epochs=2, resume=True))
    assert result["history"] == [] and result["epochs_done"] == 2

    result = run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1))
    assert result["epochs_done"] == 1
    wm = WorldModel.load(ckpt)
    assert wm.train_state["rnn"]["epoch"] == 1 and wm.train_state["vae"]["epoch"] == 2
    assert "rnn" in wm.metrics and "vae" in wm.metrics
    assert [(m["stage"], m["epoch"]) for m in _metrics(ckpt)][-1] == ("rnn", 1)

    result = run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=2, resume=True))
    assert result["epochs_done"] == 2 and len(result["history"]) == 1
    assert WorldModel.load(ckpt).train_state["rnn"]["epoch"] == 2

    # without --resume it is refused (the trained M would be lost); with --overwrite it starts again from epoch 0
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds an MDN-RNN \(2 epochs done\): pass --resume"):
        run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1))
    assert ckpt.read_bytes() == before
    result = run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, overwrite=True))
    assert result["epochs_done"] == 1 and [h["epoch"] for h in result["history"]] == [1]


def test_run_train_vae_same_seed_same_weights(dataset, tiny_preset, tmp_path):
    torch.manual_seed(1)  # whatever the process did before must not matter
    run_train_vae(_vae_cfg(dataset, tmp_path / "a.pt", epochs=1, seed=0))
    torch.manual_seed(2)
    run_train_vae(_vae_cfg(dataset, tmp_path / "b.pt", epochs=1, seed=0))
    assert _same_weights(WorldModel.load(tmp_path / "a.pt"), WorldModel.load(tmp_path / "b.pt"))


def test_run_train_rnn_fresh_start_is_reproducible_and_drops_the_old_controller_search(dataset, tiny_preset,
                                                                                      tmp_path):
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, seed=5))
    first = {k: v.clone() for k, v in WorldModel.load(ckpt).rnn.state_dict().items()}
    wm = WorldModel.load(ckpt)
    wm.train_state["cmaes"] = {"generation": 3}  # stands in for a controller searched in this dream
    wm.save(ckpt)
    run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, seed=5, overwrite=True))  # a fresh M, same seed
    wm = WorldModel.load(ckpt)
    assert all(torch.equal(first[k], v) for k, v in wm.rnn.state_dict().items())
    assert "cmaes" not in wm.train_state


def test_run_train_rnn_fine_tune_trains_the_same_m_on_and_keeps_the_controller(dataset, tiny_preset, tmp_path):
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    with pytest.raises(ValueError, match="holds no trained MDN-RNN to fine-tune"):
        run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, fine_tune=True))
    run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=2, seed=5))
    wm = WorldModel.load(ckpt)
    wm.train_state["cmaes"] = {"generation": 3}  # stands in for a controller searched on this M's hidden state
    with torch.no_grad():
        wm.controller.params.copy_(torch.arange(wm.controller.num_params) / 100)
    wm.save(ckpt)
    trained = {k: v.clone() for k, v in wm.rnn.state_dict().items()}
    for flag in ("resume", "overwrite"):
        with pytest.raises(ValueError, match="--fine-tune"):
            run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, fine_tune=True, **{flag: True}))

    run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=0, fine_tune=True))  # starts from the trained M, not a new one
    assert all(torch.equal(trained[k], v) for k, v in WorldModel.load(ckpt).rnn.state_dict().items())
    result = run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1, seed=5, fine_tune=True))
    assert [h["epoch"] for h in result["history"]] == [1]  # a new run of --epochs
    wm = WorldModel.load(ckpt)
    assert not all(torch.equal(trained[k], v) for k, v in wm.rnn.state_dict().items())
    assert wm.train_state["cmaes"] == {"generation": 3} and wm.train_state["rnn"]["keeps_controller"]
    assert torch.equal(wm.controller.params.detach(), torch.arange(wm.controller.num_params) / 100)
    # an interrupted fine-tune goes on with --resume, its controller still kept
    result = run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=2, seed=5, resume=True))
    assert result["epochs_done"] == 2 and "cmaes" in WorldModel.load(ckpt).train_state


def test_run_train_vae_start_codes_are_the_trained_encoders(dataset, tiny_preset, tmp_path, monkeypatch):
    from wm_agent.data.dataset import EpisodeDataset

    fit = WorldModel.fit_vae

    def fit_that_reassigns_codes(wm, make_batches, epochs, seed=0, progress=True, on_epoch_end=None, **kw):
        """Real training, plus a sure change of code assignments each epoch (tiny models barely move):
        rolling the codebook by one row turns every code index i into i + 1."""
        def end_epoch(epoch, metrics):
            q = wm.vae.quantizer
            with torch.no_grad():
                for buf in (q.codebook, q.embed_avg, q.cluster_size, q.usage):
                    buf.copy_(buf.roll(1, 0))
            if on_epoch_end:
                on_epoch_end(epoch, metrics)
        return fit(wm, make_batches, epochs, seed, progress, end_epoch, **kw)

    monkeypatch.setattr(WorldModel, "fit_vae", fit_that_reassigns_codes)
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=2))
    wm = WorldModel.load(ckpt)
    ds = EpisodeDataset(dataset)
    first_frames = ds.frames(np.asarray(ds.frame_offsets[:256]))
    assert torch.equal(wm.start_codes, wm.encode_indices(first_frames))


def test_run_train_vae_refuses_to_overwrite(dataset, tiny_preset, tmp_path):
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match="--resume|--overwrite"):
        run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    assert ckpt.read_bytes() == before
    result = run_train_vae(_vae_cfg(dataset, ckpt, epochs=1, overwrite=True, seed=1))
    assert result["epochs_done"] == 1  # started again rather than continued
    assert [m["epoch"] for m in _metrics(ckpt)] == [1]


def test_run_train_vae_rejects_an_unknown_preset(dataset, tmp_path):
    with pytest.raises(ValueError, match="preset"):
        run_train_vae(_vae_cfg(dataset, tmp_path / "wm.pt", epochs=1, preset="WM-Pong-v0"))


def test_run_train_rnn_needs_a_trained_vae(dataset, tmp_path):
    ckpt = tmp_path / "fresh.pt"
    tiny_world_model(trained=False).save(ckpt)
    with pytest.raises(ValueError, match="train-vae"):
        run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_the_real_env_is_made_with_the_datas_env_kwargs(tiny_preset, tmp_path):
    """collect --env-kwargs (a 4x4 grid here, a discrete CarRacing in the README) carries on to every
    command that makes the real env: evaluate, render, play, train-controller --in real."""
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    data = tmp_path / "small"
    DataCollector("WM-GridWorld-v0", data, episodes_per_shard=2, max_steps=8,
                  env_kwargs={"size": 4}).collect(2, progress=False)
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(str(data), ckpt, epochs=1))
    wm = WorldModel.load(ckpt)
    assert wm.env_kwargs == {"size": 4}
    assert wm.make_env().unwrapped.size == 4
    assert wm.make_env("envs:WM-GridWorld-v0").unwrapped.size == 4  # the same env, however it is named
    assert wm.make_env(max_episode_steps=3).spec.max_episode_steps == 3
    gym.register("TestOtherGrid-v0", entry_point="envs.gridworld:GridWorldEnv")
    try:
        assert wm.make_env("TestOtherGrid-v0").unwrapped.size == 8  # another env: not its kwargs
    finally:
        del gym.registry["TestOtherGrid-v0"]
    wm.train_state["rnn"] = {"epoch": 1}
    made = []
    original = wm.make_env
    wm.make_env = lambda *a, **kw: made.append(original(*a, **kw)) or made[-1]
    evaluate(EvaluateConfig(checkpoint=str(ckpt), episodes=2, progress=False), wm)
    assert made and all(env.unwrapped.size == 4 for env in made)


def test_nonfinite_vae_loss_keeps_the_previous_checkpoint(dataset, tiny_preset, tmp_path, monkeypatch):
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    before, metrics_before = ckpt.read_bytes(), _metrics(ckpt)
    forward = VQVAE.forward

    def nan_forward(self, obs):
        x, recon, vq = forward(self, obs)
        return x, recon * float("nan"), vq

    monkeypatch.setattr(VQVAE, "forward", nan_forward)
    with pytest.raises(NonFiniteLoss, match="VQ-VAE"):
        run_train_vae(_vae_cfg(dataset, ckpt, epochs=3, resume=True))
    assert ckpt.read_bytes() == before
    assert _metrics(ckpt) == metrics_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm.pt", "wm.pt.metrics.jsonl"]


def test_nonfinite_rnn_loss_keeps_the_previous_checkpoint(dataset, tiny_preset, tmp_path, monkeypatch):
    ckpt = tmp_path / "wm.pt"
    run_train_vae(_vae_cfg(dataset, ckpt, epochs=1))
    run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=1))
    before = ckpt.read_bytes()
    loss = MDNRNN.loss

    def inf_loss(self, *args, **kwargs):
        total, parts = loss(self, *args, **kwargs)
        return total + float("inf"), parts

    monkeypatch.setattr(MDNRNN, "loss", inf_loss)
    with pytest.raises(NonFiniteLoss, match="MDN-RNN"):
        run_train_rnn(_rnn_cfg(dataset, ckpt, epochs=3, resume=True))
    assert ckpt.read_bytes() == before


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_nonfinite_loss_in_memory_leaves_weights_and_epoch(monkeypatch):
    wm = tiny_world_model(trained=False)
    monkeypatch.setattr(MDNRNN, "loss", lambda self, *a, **k: (torch.tensor(float("nan"), requires_grad=True), {}))
    wm.train_vae(gridworld_frames(4), epochs=1, batch_size=4)
    weights = {k: v.clone() for k, v in wm.rnn.state_dict().items()}
    with pytest.raises(NonFiniteLoss):
        wm.train_rnn(gridworld_sequences(2, 3), epochs=1)
    assert wm.train_state["rnn"]["epoch"] == 0
    assert all(torch.equal(weights[k], v) for k, v in wm.rnn.state_dict().items())


def test_world_model_config_is_a_dataclass_with_help():
    for f in dataclasses.fields(WorldModelConfig):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize("ema", [True, False])
def test_encode_builds_no_autograd_graph(ema):
    """Encoding is inference: with a learnt (non-EMA) codebook the latents must not drag a graph along."""
    wm = tiny_world_model(trained=False, ema=ema)
    z = wm.encode(gridworld_frames(3))
    assert not z.requires_grad and z.grad_fn is None


def _parallel_torch_op() -> None:
    torch.randn(1 << 20).exp().sum()  # large enough for an OpenMP parallel region


def test_a_process_forked_after_torch_ran_in_parallel_does_not_hang():
    """AsyncVectorEnv forks; a child's first parallel op used to wait forever on the parent's OpenMP team."""
    import multiprocessing as mp

    _parallel_torch_op()
    child = mp.get_context("fork").Process(target=_parallel_torch_op)
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0


def test_training_from_python_explains_bad_input():
    wm = tiny_world_model(trained=False)
    for frames, kw, said in [(np.zeros((0, 64, 64, 3), np.uint8), {}, "at least one uint8 frame"),
                             (np.zeros((4, 32, 32, 3), np.uint8), {}, "shape \\(64, 64, 3\\)"),
                             (gridworld_frames(4), {"batch_size": 0}, "batch_size must be a positive int"),
                             (gridworld_frames(4), {"batch_size": 2.5}, "batch_size must be a positive int"),
                             (gridworld_frames(4).astype(np.float32) / 255, {}, "uint8 frame"),
                             (gridworld_frames(4), {"start_frames": gridworld_frames(2)[..., 0]}, "start_frames")]:
        with pytest.raises(ValueError, match=said):
            wm.train_vae(frames, **kw)
    assert "vae" not in wm.train_state  # nothing counted as trained
    sequences = gridworld_sequences(2, 3)
    with pytest.raises(ValueError, match="missing: \\['dones'\\]"):
        wm.train_rnn({k: v for k, v in sequences.items() if k != "dones"})
    with pytest.raises(ValueError, match="positive int batch_size"):
        wm.train_rnn(sequences, batch_size=0)
    with pytest.raises(ValueError, match="no trained VQ-VAE"):  # M would learn an untrained V's noise codes
        wm.train_rnn(sequences)


def test_a_box_env_with_other_bounds_or_a_discrete_one_from_1_is_refused():
    """Same shape is not the same actions: the model's [-2, 2] would be sent to an env of [-1, 1]."""
    from gymnasium import spaces

    from wm_agent.latent_env import check_env_fits
    from wm_agent.commands.train import action_overrides

    wm = tiny_world_model(discrete_actions=False, action_dim=1, action_low=(-2.0,), action_high=(2.0,))

    class _Env(gym.Env):
        observation_space = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    with pytest.raises(ValueError, match="differs from the world model's"):
        check_env_fits(_Env(), wm)
    with pytest.raises(ValueError, match="discrete actions must start at 0"):
        action_overrides(spaces.Discrete(4, start=1))


def test_auto_preset_and_key_maps_see_an_env_however_it_is_spelled():
    from wm_agent.env_ids import registered_id

    assert registered_id("envs:WM-CarRacing-v0") == registered_id("WM-CarRacing-v0") == "WM-CarRacing-v0"
    assert registered_id("no_such_module:Nothing-v0") == "no_such_module:Nothing-v0"


def test_dream_explains_actions_of_the_wrong_shape():
    wm = tiny_world_model(discrete_actions=False, action_dim=1, action_low=(-2.0,), action_high=(2.0,))
    frame = gridworld_frames(1)[0]
    with pytest.raises(ValueError, match=r"dream wants actions of shape \('T', 1\).*got \(3,\)"):
        wm.dream(frame, np.zeros(3, np.float32))
    assert wm.dream(frame, np.zeros((3, 1), np.float32))["frames"].shape[0] == 4
    with pytest.raises(ValueError, match="temperature must be >= 0, got nan"):
        gym.make("WM-Dream-v0", world_model=wm, temperature=float("nan"))


def test_training_in_memory_leaves_the_global_torch_stream_as_it_was():
    wm = tiny_world_model(trained=False)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    wm.train_vae(gridworld_frames(4), epochs=1, batch_size=4)
    wm.train_rnn(gridworld_sequences(2, 3), epochs=1, batch_size=2)
    assert torch.equal(torch.rand(3), expected)


def test_a_failing_train_vae_keeps_the_trained_m_and_c():
    wm = tiny_world_model()
    wm.train_state["cmaes"] = {"generation": 3}
    before = dict(wm.train_state)
    with pytest.raises(ValueError, match="uint8"):
        wm.train_vae(gridworld_frames(4).astype(np.float32) / 255)
    with pytest.raises(ValueError, match="batch_size"):
        wm.train_vae(gridworld_frames(4), batch_size=2.5)
    assert wm.train_state == before


def test_training_m_further_marks_the_controller_untrained():
    wm = tiny_world_model()
    wm.train_state["cmaes"] = {"generation": 3}
    with pytest.warns(UserWarning, match="training M further makes its trained controller stale"):
        wm.train_rnn(gridworld_sequences(2, 3), epochs=1, batch_size=2)
    assert "cmaes" not in wm.train_state and wm.train_state["rnn"]["epoch"] == 2


def test_train_vae_encodes_the_start_frames_again_with_the_new_v():
    wm = tiny_world_model(trained=False)
    frames, starts = gridworld_frames(12), gridworld_frames(3, first_seed=50)
    wm.train_vae(frames, epochs=1, batch_size=4, start_frames=starts)
    assert torch.equal(wm.start_codes, wm.encode_indices(starts).cpu())
    wm.train_vae(frames, epochs=1, batch_size=4)  # no start_frames: the first frames given
    assert torch.equal(wm.start_codes, wm.encode_indices(frames).cpu())
    wm.train_rnn(gridworld_sequences(2, 3), epochs=1, batch_size=2)
    obs, _ = DreamEnv(wm).reset(seed=0)  # dreams start without a set_start_frames call
    assert np.isfinite(obs).all()


def test_encode_and_decode_leave_v_in_the_mode_they_found_it():
    wm = tiny_world_model()
    frames = gridworld_frames(2)
    wm.vae.train()
    z = wm.encode(frames)
    assert wm.vae.training
    wm.decode(z)
    assert wm.vae.training
    wm.vae.eval()
    wm.encode(frames)
    assert not wm.vae.training


def test_encode_takes_numpys_default_float64_frames():
    wm = tiny_world_model()
    frames = gridworld_frames(2)
    as_float64 = frames.transpose(0, 3, 1, 2) / 255.0
    assert as_float64.dtype == np.float64
    assert torch.equal(wm.encode(as_float64), wm.encode(frames))


@pytest.mark.parametrize("bad, said", [
    (lambda z: z[0], "shape \\(B, "),
    (lambda z: z * float("nan"), "NaN"),
    (lambda z: z.long(), "float latents"),
])
def test_decode_refuses_latents_it_cannot_draw(bad, said):
    wm = tiny_world_model()
    z = wm.encode(gridworld_frames(2))
    assert wm.decode(z.numpy()).shape == (2, 64, 64, 3)  # numpy latents are fine
    with pytest.raises(ValueError, match=said):
        wm.decode(bad(z))


@pytest.mark.parametrize("temperature", [float("nan"), -1.0])
def test_dream_refuses_temperatures_that_the_dream_env_refuses(temperature):
    wm = tiny_world_model()
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        wm.dream(gridworld_frames(1)[0], np.array([0, 1]), temperature)


@pytest.mark.parametrize("value, named", [
    (Path("data/grid"), "metrics\\['data_dir'\\] is a pathlib"),
    ({"when": np.dtype("float32")}, "metrics\\['data_dir'\\]\\['when'\\] is a numpy"),
    (np.array([object()]), "array of Python objects"),
])
def test_save_refuses_what_a_weights_only_load_would_refuse_and_keeps_the_old_file(tmp_path, value, named):
    path = tmp_path / "wm.pt"
    wm = tiny_world_model()
    wm.save(path)
    before = path.read_bytes()
    wm.metrics["data_dir"] = value
    with pytest.raises(TypeError, match=named):
        wm.save(path)
    assert path.read_bytes() == before
    wm.metrics["data_dir"] = str(value)
    wm.save(path)
    assert WorldModel.load(path).metrics["data_dir"] == str(value)


def test_to_moves_the_model_and_bad_devices_are_named():
    wm = tiny_world_model()
    assert wm.to("cpu") is wm and wm.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in wm.rnn.parameters())
    with pytest.raises(ValueError, match="'gpu' is not a torch device"):
        WorldModel(tiny_config(), device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cannot use CUDA here"):
            wm.to("cuda")


def test_training_a_cpu_model_leaves_every_gpus_stream_alone(monkeypatch):
    """torch.manual_seed reseeds every GPU (lazily, without one): a CPU model's epochs seed the CPU only."""
    def reseeds_gpus(seed):
        raise AssertionError("a CPU model's training reseeded the GPUs' streams")

    wm = tiny_world_model(trained=False)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeds_gpus)
    monkeypatch.setattr(torch.cuda, "manual_seed", reseeds_gpus)
    wm.train_vae(gridworld_frames(4), epochs=1, batch_size=4)
    wm.train_rnn(gridworld_sequences(2, 3), epochs=1, batch_size=2)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_v_training_that_fails_on_its_first_batch_keeps_m_and_c(monkeypatch):
    wm = tiny_world_model()
    wm.train_state["cmaes"] = {"generation": 3}
    before = {k: dict(v) for k, v in wm.train_state.items()}
    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(VQVAE, "forward", lambda self, x: (None, nan, torch.zeros(())))
    with pytest.raises(NonFiniteLoss):
        wm.train_vae(gridworld_frames(4), epochs=1, batch_size=4)
    assert set(wm.train_state) == set(before) and wm.train_state["cmaes"] == before["cmaes"]
