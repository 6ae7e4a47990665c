"""The ``train-vae`` and ``train-rnn`` commands: their settings, and the jobs that wrap the fit loops with
data, checkpoints, metrics files and resume."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wm_agent.config import (
    PRESETS,
    ResumeMismatch,
    WorldModelConfig,
    check_settings,
    doc,
    refuse_other_settings,
)
from wm_agent.io import make_parent
from wm_agent.latent_env import check_data_fits
from wm_agent.progress import progress_bar
from wm_agent.torch_utils import resolve_device
from wm_agent.training.fit import TrainingStopped, sequence_batches_from_arrays, sequence_windows, stop_requests
from wm_agent.env_ids import registered_id
from wm_agent.world_model import CONTROLLER_STAGES, MAX_START_FRAMES, STAGES, WorldModel


DATA_HELP = ("one or more folders of episode shards written by `wm-agent collect`, trained on as one (all of the same "
             "env: brownian and --policy controller data, say); a --resume needs the same folders in the same order")


@dataclass
class TrainVAEConfig:
    """wm-agent train-vae: fit the VQ-VAE on collected frames."""

    data: tuple[str, ...] = doc(DATA_HELP)
    out: str = doc("world-model checkpoint to write (.pt); metrics go to <out>.metrics.jsonl")
    epochs: int = doc("epochs over all frames", 5)
    batch_size: int = doc("frames per batch", 128)
    seed: int = doc("seed for batch order and initialisation", 0)
    resume: bool = doc("continue an interrupted run from the checkpoint at --out", False)
    overwrite: bool = doc("replace an existing checkpoint at --out instead of refusing", False)
    preset: str = doc("config preset: auto (by the data's env id; another env gets WorldModelConfig's defaults), "
                      "WM-GridWorld-v0 or WM-CarRacing-v0", "auto")
    device: str = doc("torch device: auto, cpu or cuda", "auto")
    progress: bool = doc("show progress bars", True)


@dataclass
class TrainRNNConfig:
    """wm-agent train-rnn: fit the MDN-RNN on the VQ-VAE's codes of collected episodes."""

    data: tuple[str, ...] = doc(DATA_HELP)
    world_model: str = doc("checkpoint with a trained VQ-VAE; the MDN-RNN is saved into it")
    epochs: int = doc("epochs over all sequences", 20)
    batch_size: int = doc("sequences per batch", 16)
    seq_len: int = doc("transitions per training sequence (episodes are cut into windows of this length)", 50)
    lr_floor: float = doc("learning rate at the last epoch as a fraction of the config's: it decays along a cosine "
                          "over --epochs (1: constant)", 0.2)
    seed: int = doc("seed for batch order and initialisation", 0)
    resume: bool = doc("continue an interrupted MDN-RNN run instead of starting it afresh", False)
    overwrite: bool = doc("train a new MDN-RNN even though the checkpoint holds one (its controller goes too)", False)
    fine_tune: bool = doc("train the checkpoint's MDN-RNN on from its own weights, a new run of --epochs (on a "
                          "driver's episodes beside the first data, say: iterative training), and keep its "
                          "controller: the hidden state it reads changes only as far as M does, where a new M's "
                          "would mean nothing to it. An interrupted fine-tune continues with --resume", False)
    device: str = doc("torch device: auto, cpu or cuda", "auto")
    progress: bool = doc("show progress bars", True)



def append_metrics(path: str | os.PathLike, metrics: dict) -> None:
    """Append one row to a ``.metrics.jsonl``; a torn last line (a run killed mid-write) is dropped
    first, so the new row starts a line of its own instead of being glued to it."""
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(max(end - 1, 0))
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.write((json.dumps(metrics) + "\n").encode())


def drop_metrics(path: str | os.PathLike, stage: str) -> None:
    """Remove ``stage``'s rows from a ``.metrics.jsonl`` (that stage starts again: its old curve would be
    drawn as the new one's); torn or unreadable lines go too."""
    from wm_agent.io import atomic_path

    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("stage") != stage:
                kept.append(line)
        except (json.JSONDecodeError, AttributeError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))


@contextmanager
def save_on_interrupt(save: Callable[[], None], what: str):
    """Ctrl-C (or SIGTERM) stops training between two batches, calls ``save`` and re-raises KeyboardInterrupt.

    The first signal only asks to stop: ``fit_vae``/``fit_rnn`` finish the batch in hand, record the
    partial epoch in ``train_state`` and raise ``TrainingStopped``, so the saved checkpoint continues with
    --resume exactly where it stopped (the same weights as an uninterrupted run with the same seed).
    A second signal aborts at once without saving: a torn batch is not worth keeping, and the checkpoint
    on disk still holds the last save. A signal that the caller ignores (SIG_IGN) stays ignored; the
    previous handlers come back on exit.
    """
    with stop_requests() as request:  # the fit loops stop at the next batch boundary once it is requested

        def ask_to_stop(signum, frame) -> None:
            request.requested = True
            for s in previous:  # the next signal means "now": the default KeyboardInterrupt, wherever it lands
                signal.signal(s, signal.default_int_handler)
            # os.write, not print: the signal may land inside a print to stderr (tqdm), which print would re-enter.
            os.write(2, b"\nstopping after this batch to save a resumable checkpoint "
                        b"(press Ctrl-C again to quit at once without saving)\n")

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(s) is not signal.SIG_IGN}
        for s in previous:
            signal.signal(s, ask_to_stop)
        try:
            yield
            if request.requested:  # it came after the loop's last batch: nothing left to finish, but still a stop
                raise TrainingStopped("stopped after the last batch")
        except KeyboardInterrupt as exc:
            if request.requested and not isinstance(exc, TrainingStopped):
                print(f"\ninterrupted again: not saved; {what} keeps its last save")
                raise
            save()
            print(f"\ninterrupted: {what} saved; it resumes from that batch")
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def run_train_vae(cfg: TrainVAEConfig) -> dict:
    """Train (or resume) V on the frames of ``cfg.data``'s folders, saving the checkpoint and a metrics row each epoch.

    Args:
        cfg: the command's settings.

    Returns:
        ``checkpoint`` (its path), ``epochs_done`` and ``history`` (the metrics of each epoch trained).
    """
    from wm_agent.data.union import open_episodes

    check_settings((cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                   (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"))
    ds = open_episodes(cfg.data)
    out = Path(cfg.out)
    make_parent(out)  # a folder at --out, or a file in its path, is named before any training
    device = resolve_device(cfg.device)
    if out.exists() and cfg.resume:
        wm = WorldModel.load(out, device)
        check_data_fits(ds, wm, str(out))
        _say_resuming("vae", out, cfg.epochs, wm.train_state.get("vae"), cfg.progress)
    elif out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists: pass --resume to continue it or --overwrite to start again")
    else:
        if cfg.preset == "auto":  # by the registered id, so "envs:WM-CarRacing-v0" gets CarRacing's too
            preset = PRESETS.get(registered_id(ds.env_id), WorldModelConfig)
        elif cfg.preset in PRESETS:
            preset = PRESETS[cfg.preset]
        else:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose auto or one of {sorted(PRESETS)}")
        config = preset(**action_overrides(ds.action_space))
        torch.manual_seed(cfg.seed)  # the initial weights too: same seed, same checkpoint
        wm = WorldModel(config, ds.env_id, device, ds.env_kwargs)
        Path(str(out) + ".metrics.jsonl").unlink(missing_ok=True)
    _same_run("vae", out, wm.train_state.setdefault("vae", {"epoch": 0}), ds, cfg.resume,
              {"--batch-size": cfg.batch_size, "--seed": cfg.seed})
    done = wm.train_state["vae"]["epoch"]
    remaining = max(cfg.epochs - done, 0)
    metrics_path = str(out) + ".metrics.jsonl"

    start_frames = ds.frames(np.asarray(ds.frame_offsets[:MAX_START_FRAMES]))

    def end_epoch(epoch: int, metrics: dict) -> None:
        wm.metrics["vae"] = metrics
        wm.set_start_frames(start_frames)  # encoded by THIS epoch's encoder: dreams start from real codes
        wm.save(out)
        append_metrics(metrics_path, metrics)
        if cfg.progress:
            print(f"vae epoch {epoch}/{cfg.epochs}: recon_mse={metrics['recon_mse']:.5f} "
                  f"perplexity={metrics['perplexity']:.2f} usage={metrics['usage']:.2f} "
                  f"({metrics['images_per_s']:.0f} images/s)")

    with save_on_interrupt(lambda: wm.save(out), str(out)):
        history = wm.fit_vae(lambda rng: ds.iter_frame_batches(cfg.batch_size, rng), remaining, cfg.seed,
                             cfg.progress, end_epoch, batches_per_epoch=-(-ds.num_frames // cfg.batch_size),
                             where=str(out), samples=ds.num_frames)
    if not history and not out.exists():
        wm.set_start_frames(start_frames)
        wm.save(out)
    return {"checkpoint": str(out), "epochs_done": wm.train_state["vae"]["epoch"], "history": history}


def _same_run(stage: str, path, state: dict | None, ds, resume: bool, settings: dict[str, float]) -> None:
    """On --resume, refuse settings or data other than the saved run's (a resumed run is that run, the
    same as if it had never stopped); then record this run's, for the next --resume to check."""
    if resume and state:
        refuse_other_settings(path, stage, f"its {STAGES[stage][0]} was trained with", state.get("settings", {}),
                              settings)
        from wm_agent.data.dataset import same_episodes

        if state.get("data") is not None and not same_episodes(state["data"], ds.identity):
            def said(identity: dict) -> str:
                if "folders" in identity:
                    return "; ".join(said(part) for part in identity["folders"])
                return ", ".join(f"{k} {v}" for k, v in identity.items() if v not in (None, {}))

            raise ResumeMismatch(path, f"its {STAGES[stage][0]} was trained on other data ({said(state['data'])}), not "
                                       f"{ds.root}'s ({said(ds.identity)})", "resume with that data")
    if state is not None:
        state.update(settings=dict(settings), data=ds.identity)


def _say_resuming(stage: str, path, epochs: int, state: dict | None, progress: bool) -> None:
    """One line on where a --resume picks up (the bar alone would not tell a fresh run from a resumed one)."""
    if not progress or not state:
        return
    done, partial = int(state.get("epoch", 0)), state.get("partial")
    where = f", {partial['batches']} batches into epoch {done + 1}" if partial else ""
    left = "nothing left to train" if done >= epochs else f"training to epoch {epochs}"
    print(f"resuming {path}: {STAGES[stage][0]} at {done} epochs done{where}; {left}")


def action_overrides(space) -> dict:
    """Config fields that follow from the env's action space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:  # the model's actions are 0..n-1; the data's would be read as those
            raise ValueError(f"discrete actions must start at 0, got {space}: wrap the env in a "
                             "gymnasium.ActionWrapper that numbers its actions from 0")
        # No bounds for discrete actions, also where a preset made for a continuous env brings some.
        return {"action_dim": int(space.n), "discrete_actions": True, "action_low": (), "action_high": ()}
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return {"action_dim": int(space.shape[0]), "discrete_actions": False,
                "action_low": tuple(float(v) for v in space.low), "action_high": tuple(float(v) for v in space.high)}
    raise ValueError(f"unsupported action space {space}: use Discrete(n) or a 1-D Box")


def run_train_rnn(cfg: TrainRNNConfig) -> dict:
    """Train (or resume) M on the codes V gives the episodes of ``cfg.data``'s folders, saving it into the
    checkpoint each epoch.

    Args:
        cfg: the command's settings.

    Returns:
        ``checkpoint`` (its path), ``epochs_done`` and ``history`` (the metrics of each epoch trained).
    """
    from wm_agent.data.union import open_episodes

    check_settings((cfg.seq_len >= 1, f"--seq-len must be >= 1, got {cfg.seq_len}"),
                   (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                   (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"),
                   (0 < cfg.lr_floor <= 1, f"--lr-floor must be in (0, 1], got {cfg.lr_floor}"),
                   (not (cfg.fine_tune and cfg.resume), "--fine-tune starts a new run on the checkpoint's M: an "
                                                         "interrupted one continues with --resume alone"),
                   (not (cfg.fine_tune and cfg.overwrite), "--fine-tune trains the checkpoint's M on; --overwrite "
                                                           "trains a new one: pass one of them"))
    ds = open_episodes(cfg.data)
    path = Path(cfg.world_model)
    wm = WorldModel.load(path, resolve_device(cfg.device))
    wm.require_trained("vae", str(path))
    check_data_fits(ds, wm, str(path))
    if cfg.fine_tune and "rnn" not in wm.train_state:
        raise ValueError(f"{path} holds no trained MDN-RNN to fine-tune: run `wm-agent train-rnn` without --fine-tune")
    if "rnn" in wm.train_state and not (cfg.resume or cfg.overwrite or cfg.fine_tune):
        raise FileExistsError(f"{path} already holds an MDN-RNN ({wm.train_state['rnn'].get('epoch', 0)} epochs done): "
                              "pass --resume to continue it, --fine-tune to train it on as a new run or --overwrite "
                              "to train a new one")
    if cfg.resume and "rnn" in wm.train_state:
        _say_resuming("rnn", path, cfg.epochs, wm.train_state["rnn"], cfg.progress)
    elif cfg.fine_tune:  # the same M, a new run: its epochs, optimiser and learning-rate schedule start again
        wm.train_state["rnn"] = {"epoch": 0, "keeps_controller": True}
    else:  # a fresh M; an old dream's controller no longer applies
        torch.manual_seed(cfg.seed)
        wm.rnn = wm.new_rnn()
        for stage in ("rnn", *CONTROLLER_STAGES):
            wm.train_state.pop(stage, None)
        drop_metrics(str(path) + ".metrics.jsonl", "rnn")
    # The data identity also tells eval-dream which episodes M learnt from, to warn when shown them again.
    _same_run("rnn", path, wm.train_state.setdefault("rnn", {"epoch": 0}), ds, cfg.resume,
              {"--batch-size": cfg.batch_size, "--seed": cfg.seed, "--seq-len": cfg.seq_len,
               "--lr-floor": cfg.lr_floor})
    done = wm.train_state["rnn"]["epoch"]
    codes = encode_dataset(wm, ds, progress=cfg.progress)
    win_codes, arrays = sequence_windows(ds, codes, cfg.seq_len)
    metrics_path = str(path) + ".metrics.jsonl"

    def end_epoch(epoch: int, metrics: dict) -> None:
        wm.metrics["rnn"] = metrics
        wm.save(path)
        append_metrics(metrics_path, metrics)
        if cfg.progress:
            print(f"rnn epoch {epoch}/{cfg.epochs}: loss={metrics['loss']:.4f} nll={metrics['nll']:.4f} "
                  f"reward_mse={metrics['reward_mse']:.5f} done_bce={metrics['done_bce']:.4f}")

    with save_on_interrupt(lambda: wm.save(path), str(path)):
        history = wm.fit_rnn(lambda rng: sequence_batches_from_arrays(win_codes, arrays, cfg.batch_size, rng),
                             max(cfg.epochs - done, 0), cfg.seed, cfg.progress, end_epoch,
                             batches_per_epoch=-(-len(win_codes) // cfg.batch_size), samples=len(win_codes),
                             where=str(path), lr_floor=cfg.lr_floor, total_epochs=cfg.epochs)
    return {"checkpoint": str(path), "epochs_done": wm.train_state["rnn"]["epoch"], "history": history}


def encode_dataset(wm: WorldModel, dataset, batch_size: int = 1024, progress: bool = True) -> np.ndarray:
    """Every frame of a (memory-mapped) dataset -> code grids (N, G, G), read sequentially in chunks."""
    dtype = np.uint8 if wm.config.num_embeddings <= 256 else np.int16
    g = wm.config.latent_grid
    codes = np.empty((dataset.num_frames, g, g), dtype=dtype)
    for i in progress_bar(range(0, dataset.num_frames, batch_size), desc="encode frames", unit="batch",
                          disable=not progress, leave=False):
        idx = np.arange(i, min(i + batch_size, dataset.num_frames))
        codes[idx] = wm.encode_indices(dataset.frames(idx)).cpu().numpy().astype(dtype)
    return codes

