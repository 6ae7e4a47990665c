"""Ctrl-C/SIGTERM in the middle of an epoch: the checkpoint resumes to exactly the uninterrupted run.

The signals are real (``signal.raise_signal``), sent from inside the batch source or the end-of-epoch
callback, so they reach the loops the way a Ctrl-C does: between two Python bytecodes, not as an
exception planted at a convenient place.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from helpers import gridworld_frames_random_walk, gridworld_sequences, tiny_world_model

import wm_agent.training.fit as fit
from wm_agent.commands.train import save_on_interrupt
from wm_agent.training.fit import TrainingStopped, frame_batches_from_array, sequence_batches_from_arrays
from wm_agent.world_model import WorldModel

# The fit loops on a world model's V and M, with its bookkeeping, called as fit_vae(wm, make_batches, ...).
fit_vae, fit_rnn = WorldModel.fit_vae, WorldModel.fit_rnn

EPOCHS = 2
TIMING = {"seconds", "images_per_s"}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return gridworld_frames_random_walk(48)  # 3 batches of 16 per epoch


@pytest.fixture(scope="module")
def sequences() -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Code sequences as ``WorldModel.train_rnn`` builds them: 8 sequences, 4 batches of 2 per epoch."""
    seqs = gridworld_sequences(8, 4)
    wm = tiny_world_model(trained=False)  # the same V as every model these tests build
    obs = seqs["obs"]
    codes = wm.encode_indices(obs.reshape(-1, *obs.shape[2:])).view(*obs.shape[:2], *wm.start_codes.shape[1:])
    return codes, {k: v for k, v in seqs.items() if k != "obs"}


def vae_batches(frames):
    return lambda rng: frame_batches_from_array(frames, 16, rng)


def rnn_batches(sequences):
    codes, arrays = sequences
    return lambda rng: sequence_batches_from_arrays(codes, arrays, 2, rng)


def signalling(make_batches, at: int, signals=(signal.SIGINT,)):
    """``make_batches`` that sends ``signals`` while preparing the ``at``-th batch (1-based, over all epochs)."""
    count = [0]

    def make(rng):
        for batch in make_batches(rng):
            count[0] += 1
            if count[0] == at:
                for s in signals:
                    signal.raise_signal(s)
            yield batch

    return make


def interrupted(fit, make_batches, path, on_epoch_end=None, seed: int = 0) -> WorldModel:
    """Train a fresh tiny model for EPOCHS under ``save_on_interrupt`` (saving to ``path``), expecting a stop."""
    wm = tiny_world_model(trained=False)

    def end_epoch(epoch, metrics):
        wm.save(path)  # what the CLI does after every epoch
        if on_epoch_end:
            on_epoch_end(epoch, metrics)

    with pytest.raises(KeyboardInterrupt), save_on_interrupt(lambda: wm.save(path), str(path)):
        fit(wm, make_batches, EPOCHS, seed, False, end_epoch)
    return WorldModel.load(path)


def assert_same(a, b, where=""):
    """Equal bit for bit: tensors with torch.equal, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def assert_resumes_exactly(fit, stage: str, make_batches, resumed: WorldModel, partial: tuple[int, int] | None):
    """``resumed`` (a loaded checkpoint) trained to EPOCHS ends where an uninterrupted run does."""
    state = resumed.train_state[stage]
    assert (None if "partial" not in state else (state["partial"]["epoch"], state["partial"]["batches"])) == partial
    expected = tiny_world_model(trained=False)
    expected_history = fit(expected, make_batches, EPOCHS, 0, False)

    history = fit(resumed, make_batches, EPOCHS - state["epoch"], 0, False)

    assert "partial" not in resumed.train_state[stage]
    assert resumed.train_state[stage]["epoch"] == EPOCHS
    assert_same(expected.train_state[stage]["optimizer"], resumed.train_state[stage]["optimizer"], "optimizer")
    net = {"vae": lambda wm: wm.vae, "rnn": lambda wm: wm.rnn}[stage]
    assert_same(net(expected).state_dict(), net(resumed).state_dict(), "weights")
    untimed = [{k: v for k, v in m.items() if k not in TIMING} for m in expected_history[-len(history):]]
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in history] == untimed


@pytest.mark.parametrize("at, partial", [(5, (1, 2)), (2, (0, 2))], ids=["epoch-2", "epoch-1"])
def test_vae_ctrl_c_mid_epoch_resumes_exactly(frames, tmp_path, at, partial):
    make = vae_batches(frames)
    resumed = interrupted(fit_vae, signalling(make, at), tmp_path / "wm.pt")
    assert_resumes_exactly(fit_vae, "vae", make, resumed, partial)


def test_rnn_sigterm_mid_epoch_resumes_exactly(sequences, tmp_path):
    make = rnn_batches(sequences)
    resumed = interrupted(fit_rnn, signalling(make, 7, (signal.SIGTERM,)), tmp_path / "wm.pt")
    assert_resumes_exactly(fit_rnn, "rnn", make, resumed, (1, 3))


def test_training_randomness_continues_the_same_torch_stream(frames, tmp_path, monkeypatch):
    """Training that draws from torch's RNG (dropout, noise) draws the same numbers after a resume."""
    from wm_agent.models.vqvae import VQVAE

    forward = VQVAE.forward

    def noisy_forward(self, x):
        x_recon, recon, vq = forward(self, x)
        return x_recon, recon * (1 + 0.1 * torch.rand(())), vq

    monkeypatch.setattr(VQVAE, "forward", noisy_forward)
    make = vae_batches(frames)
    resumed = interrupted(fit_vae, signalling(make, 5), tmp_path / "wm.pt")
    assert_resumes_exactly(fit_vae, "vae", make, resumed, (1, 2))


def test_partial_state_loads_weights_only(frames, tmp_path):
    path = tmp_path / "wm.pt"
    interrupted(fit_vae, signalling(vae_batches(frames), 5), path)
    partial = torch.load(path, map_location="cpu", weights_only=True)["train_state"]["vae"]["partial"]
    assert partial["seed"] == 0 and partial["batches"] == 2 and partial["counts"] == {"images": 32}
    assert isinstance(partial["torch_rng"], torch.Tensor)


@pytest.mark.parametrize("where", ["last-batch", "epoch-end", "last-batch-of-run"])
def test_stop_at_an_epoch_boundary_resumes_exactly(frames, tmp_path, where):
    make = vae_batches(frames)
    path = tmp_path / "wm.pt"
    if where == "epoch-end":  # during the end-of-epoch save: taken before epoch 2's first batch
        resumed = interrupted(fit_vae, make, path, lambda e, m: e == 1 and signal.raise_signal(signal.SIGINT))
        partial = (1, 0)
    else:  # while preparing an epoch's last batch: that batch is trained, the epoch is not closed
        at = 3 if where == "last-batch" else 6
        resumed = interrupted(fit_vae, signalling(make, at), path)
        partial = (at // 3 - 1, 3)
    assert_resumes_exactly(fit_vae, "vae", make, resumed, partial)


def test_stop_after_the_last_epoch_still_saves_and_reports(frames, tmp_path):
    path = tmp_path / "wm.pt"
    resumed = interrupted(fit_vae, vae_batches(frames), path,
                          lambda e, m: e == EPOCHS and signal.raise_signal(signal.SIGINT))
    assert resumed.train_state["vae"]["epoch"] == EPOCHS and "partial" not in resumed.train_state["vae"]


def test_second_ctrl_c_aborts_without_saving_and_handlers_come_back(frames, tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    path = tmp_path / "wm.pt"
    # Epoch 1 is saved by the end-of-epoch callback; the double Ctrl-C lands in epoch 2.
    resumed = interrupted(fit_vae, signalling(vae_batches(frames), 5, (signal.SIGINT, signal.SIGINT)), path)
    assert resumed.train_state["vae"]["epoch"] == 1 and "partial" not in resumed.train_state["vae"]
    assert "not saved" in capsys.readouterr().out
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_resume_with_another_seed_is_refused(frames, tmp_path):
    make = vae_batches(frames)
    resumed = interrupted(fit_vae, signalling(make, 5), tmp_path / "wm.pt")
    with pytest.raises(ValueError, match="seed 0"):
        fit_vae(resumed, make, 1, seed=1, progress=False)


def test_without_save_on_interrupt_ctrl_c_is_a_plain_keyboard_interrupt(frames):
    wm = tiny_world_model(trained=False)
    with pytest.raises(KeyboardInterrupt) as info:
        fit_vae(wm, signalling(vae_batches(frames), 2), EPOCHS, 0, False)
    assert not isinstance(info.value, TrainingStopped)
    assert "partial" not in wm.train_state["vae"]


def test_a_stopped_epoch_on_data_that_has_grown_starts_again(frames, tmp_path):
    """collect grew the folder between the stop and --resume: the epoch's order is another permutation,
    so skipping the batches done would train some frames twice and others never; it starts again."""
    make, path = vae_batches(frames), tmp_path / "wm.pt"
    wm = tiny_world_model(trained=False)
    with pytest.raises(KeyboardInterrupt), save_on_interrupt(lambda: wm.save(path), str(path)):
        fit_vae(wm, signalling(make, 2), 1, 0, False, samples=len(frames))
    stopped = WorldModel.load(path)
    assert stopped.train_state["vae"]["partial"]["samples"] == len(frames)
    same = WorldModel.load(path)
    assert fit_vae(same, make, 1, 0, False, samples=len(frames))[0]["images"] == len(frames)  # continues: 2 batches
    grown = np.concatenate([frames, frames[:16]])
    with pytest.warns(UserWarning, match=f"over {len(frames)} samples, and the data now holds {len(grown)}"):
        history = fit_vae(stopped, vae_batches(grown), 1, 0, False, samples=len(grown))
    assert history[0]["images"] == len(grown)  # every frame of the grown data, once
    assert stopped.train_state["vae"]["epoch"] == 1 and "partial" not in stopped.train_state["vae"]


def test_the_fit_loops_train_bare_modules_as_the_world_model_does(frames, sequences):
    """``training.fit`` takes the modules it trains and a plain state dict: no WorldModel needed, the
    same weights and metrics as ``WorldModel.fit_vae``/``fit_rnn``, and the first update reported once."""
    expected = tiny_world_model(trained=False)
    expected_vae = fit_vae(expected, vae_batches(frames), 1, 0, False)
    expected_rnn = fit_rnn(expected, rnn_batches(sequences), 1, 0, False)
    bare, updates = tiny_world_model(trained=False), []
    vae_state, rnn_state = {}, {}
    vae_history = fit.fit_vae(bare.vae, vae_state, vae_batches(frames), 1, 0, False,
                              on_first_update=lambda: updates.append("vae"))
    rnn_history = fit.fit_rnn(bare.rnn, bare.vae, rnn_state, rnn_batches(sequences), 1, 0, False,
                              on_first_update=lambda: updates.append("rnn"))
    assert updates == ["vae", "rnn"] and vae_state["epoch"] == rnn_state["epoch"] == 1
    for module in ("vae", "rnn"):
        assert_same(getattr(expected, module).state_dict(), getattr(bare, module).state_dict(), module)
    untimed = [{k: v for k, v in m.items() if k not in TIMING} for m in (*vae_history, *rnn_history)]
    assert untimed == [{k: v for k, v in m.items() if k not in TIMING} for m in (*expected_vae, *expected_rnn)]


def test_metrics_rows_start_a_line_of_their_own_after_a_torn_write(tmp_path):
    from wm_agent.commands.train import append_metrics, drop_metrics
    from wm_agent.render.figures import _load_metrics

    path = tmp_path / "wm.pt.metrics.jsonl"
    for row in ({"stage": "vae", "epoch": 1}, {"stage": "rnn", "epoch": 1}, {"stage": "rnn", "epoch": 2}):
        append_metrics(path, row)
    path.write_bytes(path.read_bytes()[:-7])  # killed while writing rnn epoch 2
    append_metrics(path, {"stage": "rnn", "epoch": 2, "loss": 0.5})
    append_metrics(path, {"stage": "rnn", "epoch": 3})
    assert [(r["stage"], r["epoch"]) for r in _load_metrics(path)] == [("vae", 1), ("rnn", 1), ("rnn", 2), ("rnn", 3)]
    drop_metrics(path, "rnn")  # a new M: the old one's curve goes
    assert _load_metrics(path) == [{"stage": "vae", "epoch": 1}]
