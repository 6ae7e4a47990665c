"""Training V and M: the loops read top to bottom; the CLI wraps them with data, checkpoints and resume.

Both loops take a ``make_batches(rng)`` callable that yields one epoch of batches, so the same code
trains from an in-memory array (``WorldModel.train_vae``) or from memory-mapped shards (the CLI).
"""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from wm_agent.config import PRESETS, WorldModelConfig, doc
from wm_agent.vqvae import frames_to_tensor
from wm_agent.world_model import MAX_START_FRAMES, WorldModel

Batches = Callable[[np.random.Generator], Iterable[Any]]


class NonFiniteLoss(FloatingPointError):
    """Training produced NaN/inf; the last good checkpoint is kept untouched."""


def _check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"{stage} loss became {loss.item()} at epoch {epoch}, batch {step}; "
                            f"stopped without saving these weights (the last good checkpoint is kept)")


def _autocast(device: torch.device):
    # bf16 autocast pays on GPUs; on CPU it is slower for these small convs, so it is off there.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _optimizer(params, lr: float, state: dict | None) -> torch.optim.Adam:
    opt = torch.optim.Adam(params, lr=lr)
    if state:
        opt.load_state_dict(state)
    return opt


def fit_vae(wm: WorldModel, make_batches: Batches, epochs: int, seed: int = 0, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train V for ``epochs`` more epochs (continuing from ``wm.train_state['vae']`` if present)."""
    state = wm.train_state.setdefault("vae", {"epoch": 0})
    opt = _optimizer(wm.vae.parameters(), wm.config.learning_rate, state.get("optimizer"))
    history = []
    start = state["epoch"]
    for epoch in range(start, start + epochs):
        torch.manual_seed(seed * 100_003 + epoch)  # same seed + epoch -> same run, also after a resume
        rng = np.random.default_rng([seed, epoch])
        wm.vae.train()
        sums = {"recon_mse": 0.0, "vq_loss": 0.0, "perplexity": 0.0, "usage": 0.0}
        n_batches = n_images = 0
        t0 = time.perf_counter()
        bar = tqdm(make_batches(rng), desc=f"train-vae epoch {epoch + 1}", unit="batch", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            x = frames_to_tensor(batch, wm.device)
            with _autocast(wm.device):
                _, recon, vq = wm.vae(x)
                loss = recon + vq
            _check_finite(loss, "VQ-VAE", epoch + 1, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stats = wm.vae.quantizer.stats
            for k, v in (("recon_mse", recon.item()), ("vq_loss", vq.item()), *stats.items()):
                sums[k] += v
            n_batches += 1
            n_images += len(x)
            bar.set_postfix(mse=f"{recon.item():.5f}", ppl=f"{stats['perplexity']:.2f}",
                            img_s=f"{n_images / (time.perf_counter() - t0):.0f}")
        metrics = {k: v / max(n_batches, 1) for k, v in sums.items()}
        metrics.update(stage="vae", epoch=epoch + 1, images=n_images, seconds=time.perf_counter() - t0,
                       images_per_s=n_images / max(time.perf_counter() - t0, 1e-9))
        state.update(epoch=epoch + 1, optimizer=opt.state_dict())
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(epoch + 1, metrics)
    return history


def fit_rnn(wm: WorldModel, make_batches: Batches, epochs: int, seed: int = 0, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None, clip: float = 1.0,
            events: float = 1.0) -> list[dict]:
    """Train M on batches of code sequences (see ``sequence_batches_from_arrays``); ``events`` weights
    terminal transitions in the reward/done losses (1 = unweighted, the default everywhere: up-weighting
    makes the heads over-predict rare events, e.g. balanced weights (~50x here) gave a +0.3 reward
    with a 6% done probability next to the goal, which CMA-ES farmed for dream returns of up to 3.9)."""
    state = wm.train_state.setdefault("rnn", {"epoch": 0})
    opt = _optimizer(wm.rnn.parameters(), wm.config.learning_rate, state.get("optimizer"))
    history = []
    start = state["epoch"]
    wm.vae.eval()
    for epoch in range(start, start + epochs):
        torch.manual_seed(seed * 100_003 + epoch)
        rng = np.random.default_rng([seed, epoch])
        wm.rnn.train()
        sums: dict[str, float] = {"loss": 0.0}
        n_batches = n_steps = 0
        t0 = time.perf_counter()
        bar = tqdm(make_batches(rng), desc=f"train-rnn epoch {epoch + 1}", unit="batch", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            with torch.no_grad():
                z = wm.vae.indices_to_latent(batch["codes"].to(wm.device))
            mask = batch["mask"].to(wm.device)
            with _autocast(wm.device):
                params, _ = wm.rnn(z[:, :-1], batch["actions"].to(wm.device))
            params = {k: v.float() for k, v in params.items()}
            loss, parts = wm.rnn.loss(params, z[:, 1:], batch["rewards"].to(wm.device),
                                      batch["dones"].to(wm.device), mask, events)
            _check_finite(loss, "MDN-RNN", epoch + 1, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clip the dynamics and the reward/done heads apart: one joint norm, dominated by the
            # mixture NLL, would shrink the heads' updates to nothing.
            torch.nn.utils.clip_grad_norm_(wm.rnn.dynamics_parameters(), clip)
            torch.nn.utils.clip_grad_norm_(wm.rnn.head_parameters(), clip)
            opt.step()
            sums["loss"] += loss.item()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            n_steps += int(mask.sum())
            bar.set_postfix(loss=f"{loss.item():.4f}", nll=f"{parts['nll']:.4f}")
        metrics = {k: v / max(n_batches, 1) for k, v in sums.items()}
        metrics.update(stage="rnn", epoch=epoch + 1, steps=n_steps, seconds=time.perf_counter() - t0)
        state.update(epoch=epoch + 1, optimizer=opt.state_dict())
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(epoch + 1, metrics)
    return history


# -- batch sources ---------------------------------------------------------------------------------
def frame_batches_from_array(frames: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(len(frames))
    for i in range(0, len(order), batch_size):
        yield frames[np.sort(order[i : i + batch_size])]


def sequence_batches_from_arrays(codes: torch.Tensor, arrays: dict[str, np.ndarray], batch_size: int,
                                 rng: np.random.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """``codes`` (N, T+1, G, G); ``arrays``: actions (N, T[, A]), rewards, dones, optional mask (N, T)."""
    n, t = codes.shape[0], codes.shape[1] - 1
    mask = arrays.get("mask")
    if mask is None:
        mask = np.ones((n, t), dtype=bool)
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield {
            "codes": torch.as_tensor(codes[idx]).long(),
            "actions": torch.as_tensor(arrays["actions"][idx]),
            "rewards": torch.as_tensor(arrays["rewards"][idx]).float(),
            "dones": torch.as_tensor(arrays["dones"][idx]).float(),
            "mask": torch.as_tensor(mask[idx]),
        }


def encode_dataset(wm: WorldModel, dataset, batch_size: int = 1024, progress: bool = True) -> np.ndarray:
    """Every frame of a (memory-mapped) dataset -> code grids (N, G, G), read sequentially in chunks."""
    dtype = np.uint8 if wm.config.num_embeddings <= 256 else np.int16
    g = wm.config.latent_grid
    codes = np.empty((dataset.num_frames, g, g), dtype=dtype)
    for i in tqdm(range(0, dataset.num_frames, batch_size), desc="encode frames", unit="batch", disable=not progress,
                  leave=False):
        idx = np.arange(i, min(i + batch_size, dataset.num_frames))
        codes[idx] = wm.encode_indices(dataset.frames(idx)).cpu().numpy().astype(dtype)
    return codes


def sequence_windows(dataset, codes: np.ndarray, seq_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut every episode into windows of ``seq_len`` transitions, padded and masked at the end."""
    actions, rewards, dones = dataset.actions_all(), dataset.rewards_all(), dataset.terminated_all()
    windows = [(f0 + s, s0 + s, min(seq_len, t - s))
               for f0, s0, t in zip(dataset.frame_offsets, dataset.step_offsets, dataset.lengths)
               for s in range(0, int(t), seq_len)]
    n = len(windows)
    if n == 0:
        raise ValueError("the dataset has no transitions to train the MDN-RNN on")
    out_codes = np.zeros((n, seq_len + 1, *codes.shape[1:]), dtype=codes.dtype)
    out = {
        "actions": np.zeros((n, seq_len, *actions.shape[1:]), dtype=actions.dtype),
        "rewards": np.zeros((n, seq_len), np.float32),
        "dones": np.zeros((n, seq_len), np.float32),
        "mask": np.zeros((n, seq_len), bool),
    }
    for w, (f, s, length) in enumerate(windows):
        out_codes[w, : length + 1] = codes[f : f + length + 1]
        out["actions"][w, :length] = actions[s : s + length]
        out["rewards"][w, :length] = rewards[s : s + length]
        out["dones"][w, :length] = dones[s : s + length]
        out["mask"][w, :length] = True
    return out_codes, out


# -- command-line jobs -----------------------------------------------------------------------------
@dataclass
class TrainVAEConfig:
    """wm-agent train-vae: fit the VQ-VAE on collected frames."""

    data: str = doc("folder of episode shards written by `wm-agent collect`")
    out: str = doc("world-model checkpoint to write (.pt); metrics go to <out>.metrics.jsonl")
    epochs: int = doc("epochs over all frames", 5)
    batch_size: int = doc("frames per batch", 128)
    seed: int = doc("seed for batch order and initialisation", 0)
    resume: bool = doc("continue an interrupted run from the checkpoint at --out", False)
    overwrite: bool = doc("replace an existing checkpoint at --out instead of refusing", False)
    preset: str = doc("config preset: auto (by the data's env id), WM-GridWorld-v0 or WM-CarRacing-v0", "auto")
    device: str = doc("torch device: auto, cpu or cuda", "auto")
    progress: bool = doc("show progress bars", True)


@dataclass
class TrainRNNConfig:
    """wm-agent train-rnn: fit the MDN-RNN on the VQ-VAE's codes of collected episodes."""

    data: str = doc("folder of episode shards written by `wm-agent collect`")
    world_model: str = doc("checkpoint with a trained VQ-VAE; the MDN-RNN is saved into it")
    epochs: int = doc("epochs over all sequences", 20)
    batch_size: int = doc("sequences per batch", 16)
    seq_len: int = doc("transitions per training sequence (episodes are cut into windows of this length)", 50)
    seed: int = doc("seed for batch order and initialisation", 0)
    resume: bool = doc("continue an interrupted MDN-RNN run instead of starting it afresh", False)
    device: str = doc("torch device: auto, cpu or cuda", "auto")
    progress: bool = doc("show progress bars", True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def append_metrics(path: str | os.PathLike, metrics: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(metrics) + "\n")


@contextmanager
def save_on_interrupt(save: Callable[[], None], what: str):
    """Ctrl-C (or SIGTERM) saves the latest weights before leaving, so --resume loses at most one epoch's order."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    except KeyboardInterrupt:
        save()
        print(f"\ninterrupted: {what} saved; continue with --resume")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_train_vae(cfg: TrainVAEConfig) -> dict:
    from wm_agent.dataset import EpisodeDataset

    if cfg.batch_size < 1 or cfg.epochs < 0:
        raise ValueError("--batch-size must be >= 1 and --epochs >= 0")
    ds = EpisodeDataset(cfg.data)
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    if out.exists() and cfg.resume:
        wm = WorldModel.load(out, device)
    elif out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists: pass --resume to continue it or --overwrite to start again")
    else:
        if cfg.preset == "auto":
            preset = PRESETS.get(ds.env_id, WorldModelConfig)
        elif cfg.preset in PRESETS:
            preset = PRESETS[cfg.preset]
        else:
            raise ValueError(f"unknown preset {cfg.preset!r}; choose auto or one of {sorted(PRESETS)}")
        config = preset(**action_overrides(ds.action_space))
        torch.manual_seed(cfg.seed)  # the initial weights too: same seed, same checkpoint
        wm = WorldModel(config, ds.env_id, device)
        Path(str(out) + ".metrics.jsonl").unlink(missing_ok=True)
    done = wm.train_state.get("vae", {}).get("epoch", 0)
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
        history = fit_vae(wm, lambda rng: ds.iter_frame_batches(cfg.batch_size, rng), remaining, cfg.seed,
                          cfg.progress, end_epoch)
    if not history and not out.exists():
        wm.set_start_frames(start_frames)
        wm.save(out)
    return {"checkpoint": str(out), "epochs_done": wm.train_state["vae"]["epoch"], "history": history}


def action_overrides(space) -> dict:
    """Config fields that follow from the env's action space."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"action_dim": int(space.n), "discrete_actions": True}
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return {"action_dim": int(space.shape[0]), "discrete_actions": False,
                "action_low": tuple(float(v) for v in space.low), "action_high": tuple(float(v) for v in space.high)}
    raise ValueError(f"unsupported action space {space}: use Discrete(n) or a 1-D Box")


def run_train_rnn(cfg: TrainRNNConfig) -> dict:
    from wm_agent.dataset import EpisodeDataset

    if cfg.seq_len < 1 or cfg.batch_size < 1 or cfg.epochs < 0:
        raise ValueError("--seq-len and --batch-size must be >= 1 and --epochs >= 0")
    ds = EpisodeDataset(cfg.data)
    path = Path(cfg.world_model)
    wm = WorldModel.load(path, resolve_device(cfg.device))
    if "vae" not in wm.train_state:
        raise ValueError(f"{path} has no trained VQ-VAE yet: run `wm-agent train-vae` first")
    if not cfg.resume or "rnn" not in wm.train_state:  # a fresh M; an old dream's controller no longer applies
        torch.manual_seed(cfg.seed)
        wm.rnn = wm.new_rnn()
        wm.train_state.pop("rnn", None)
        wm.train_state.pop("cmaes", None)
    done = wm.train_state.get("rnn", {}).get("epoch", 0)
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
        history = fit_rnn(wm, lambda rng: sequence_batches_from_arrays(win_codes, arrays, cfg.batch_size, rng),
                          max(cfg.epochs - done, 0), cfg.seed, cfg.progress, end_epoch)
    return {"checkpoint": str(path), "epochs_done": wm.train_state["rnn"]["epoch"], "history": history}
