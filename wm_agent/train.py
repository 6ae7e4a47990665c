"""Training V and M: the loops read top to bottom; the CLI wraps them with data, checkpoints and resume.

Both loops take a ``make_batches(rng)`` callable that yields one epoch of batches, so the same code
trains from an in-memory array (``WorldModel.train_vae``) or from memory-mapped shards (the CLI).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from wm_agent.vqvae import frames_to_tensor
from wm_agent.world_model import MAX_START_FRAMES, STAGES, WorldModel, registered_id

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


class TrainingStopped(KeyboardInterrupt):
    """A stop asked for by Ctrl-C/SIGTERM, taken between two batches: the stage's ``train_state`` holds
    the partial epoch (``"partial"``) and the optimizer as of that batch, so a save here resumes exactly."""


class _StopRequest:
    requested = False


# Set while ``save_on_interrupt`` runs: then a signal only asks the loops to stop at the next batch
# boundary. None (a loop called directly from Python): Ctrl-C raises KeyboardInterrupt wherever it lands.
_stop: _StopRequest | None = None


def _seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU stream and, for a model on a GPU, that GPU's (what the model draws from):
    ``torch.manual_seed`` would reseed every GPU, streams of the caller's on other devices included."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


class _Epoch:
    """One epoch's batches and metric sums, resumable from any batch boundary.

    A fresh epoch seeds torch from (seed, epoch). If ``state["partial"]`` holds a stopped run of this
    epoch, it restores that boundary instead: the torch RNG, the metric sums and counts, and skips the
    batches already trained on (``make_batches`` gets the same ``default_rng([seed, epoch])``, so the
    same batches follow). A partial epoch made with another seed is refused with a ValueError rather
    than restarted: its first batches are already in the weights, and a new order would train some
    frames twice and others not at all. Resuming also needs the same data and batch size, and a
    ``make_batches`` that draws only from the ``rng`` it is given. ``samples``, the count the epoch's
    order is drawn over (frames, windows), tells a data folder that ``collect`` has grown since the
    stop: that epoch's order is another one then, and the epoch starts again (with a warning) rather
    than train some samples twice and skip others.
    """

    def __init__(self, state: dict, opt: torch.optim.Optimizer, seed: int, epoch: int, sums: dict[str, float],
                 counts: dict[str, int], samples: int | None = None, where: str = "this world model"):
        self.state, self.opt, self.seed, self.epoch, self.samples = state, opt, seed, epoch, samples
        self.sums, self.counts, self.done, elapsed = sums, counts, 0, 0.0
        # Same seed + epoch -> same run, also after a resume.
        _seed_torch(seed * 100_003 + epoch, opt.param_groups[0]["params"][0].device)
        partial = state.get("partial")
        if partial is not None:
            if partial["epoch"] != epoch:
                raise ValueError(f"train_state holds a partial epoch {partial['epoch'] + 1} but {epoch} epochs are "
                                 f"finished: the checkpoint is inconsistent")
            if partial["seed"] != seed:
                raise ValueError(f"the checkpoint stopped after {partial['batches']} batches of epoch "
                                 f"{partial['epoch'] + 1} of a run with seed {partial['seed']}; resume it with "
                                 f"seed {partial['seed']} (another seed would not repeat that epoch's batch order)")
            if samples is not None and partial.get("samples", samples) != samples:
                warnings.warn(f"{where}: epoch {epoch + 1} stopped after {partial['batches']} batches over "
                              f"{partial['samples']} samples, and the data now holds {samples}: its batch order is "
                              f"another one, so epoch {epoch + 1} starts again from its first batch", stacklevel=5)
                del state["partial"]
                partial = None
        if partial is not None:
            self.sums, self.counts = dict(partial["sums"]), dict(partial["counts"])
            self.done, elapsed = partial["batches"], partial["seconds"]
        self.partial = partial
        self.t0 = time.perf_counter() - elapsed

    def batches(self, make_batches: Batches) -> Iterator[Any]:
        """The epoch's batches from ``self.done`` on; between two of them, honour a requested stop."""
        batches = iter(make_batches(np.random.default_rng([self.seed, self.epoch])))
        if sum(1 for _ in itertools.islice(batches, self.done)) < self.done:
            raise ValueError(f"cannot resume epoch {self.epoch + 1} after batch {self.done}: the data now has fewer "
                             f"batches (resume with the same data and batch size)")
        if self.partial is not None:  # after the skip: torch draws belong to training, not to the batch source
            torch.set_rng_state(self.partial["torch_rng"])
            cuda_rng = self.partial.get("cuda_rng", [])
            if cuda_rng and torch.cuda.is_available() and len(cuda_rng) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_rng)
        while True:
            # Getting here means the loop has finished the last batch it was given: a consistent point.
            if _stop is not None and _stop.requested:
                self._stop()
            try:
                batch = next(batches)
            except StopIteration:
                return
            except KeyboardInterrupt as exc:  # raised by the batch source, still between two batches
                if _stop is None or _stop.requested:
                    raise
                self._stop(exc)
            yield batch
            self.done += 1

    def _stop(self, cause: BaseException | None = None) -> None:
        self.state["partial"] = {
            "epoch": self.epoch, "seed": self.seed, "batches": self.done, "torch_rng": torch.get_rng_state(),
            "sums": dict(self.sums), "counts": dict(self.counts), "seconds": self.seconds(),
        }
        if self.samples is not None:
            self.state["partial"]["samples"] = self.samples
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.state["partial"]["cuda_rng"] = torch.cuda.get_rng_state_all()
        self.state["optimizer"] = self.opt.state_dict()
        raise TrainingStopped(f"stopped after batch {self.done} of epoch {self.epoch + 1}") from cause

    def finish(self) -> None:
        """Record the epoch as done in ``train_state`` (with the optimizer as of its last batch)."""
        self.state.pop("partial", None)
        self.state.update(epoch=self.epoch + 1, optimizer=self.opt.state_dict())

    def add(self, values: dict[str, float], **counts: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n

    def means(self) -> dict[str, float]:
        return {k: v / max(self.done, 1) for k, v in self.sums.items()}

    def seconds(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)


def _keeps_torch_rng(fit):
    """Run ``fit`` on a copy of torch's global RNG state: each epoch seeds torch for its own order and
    restarts (see ``_Epoch``), which must not reseed the caller's random stream (a library user's next
    ``torch.rand`` would otherwise be the same after every call)."""
    @functools.wraps(fit)
    def wrapper(wm: WorldModel, *args, **kwargs):
        cuda = wm.device.type == "cuda"
        devices = [wm.device.index if wm.device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            return fit(wm, *args, **kwargs)

    return wrapper


def _mark_untrained(wm: WorldModel, stages: list[str], trained: str, where: str) -> None:
    """Forget the training of ``stages``, which learnt from the stage ``trained`` (V or M) that has just
    changed: M learnt the old V's codes, C reads them and M's hidden state."""
    for stage in stages:
        del wm.train_state[stage]
    names = " and ".join(STAGES[s][0] for s in stages)
    commands = " and ".join(f"`wm-agent {STAGES[s][1]}`" for s in stages)
    # stacklevel: the caller of WorldModel.train_vae/train_rnn or of run_train_* (through the fit wrapper)
    warnings.warn(f"{where}: training {trained} further makes its trained {names} stale, now marked untrained (run "
                  f"{commands} again)", stacklevel=5)


@_keeps_torch_rng
def fit_vae(wm: WorldModel, make_batches: Batches, epochs: int, seed: int = 0, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None,
            batches_per_epoch: int | None = None, where: str = "this world model",
            samples: int | None = None) -> list[dict]:
    """Train V for ``epochs`` more epochs (continuing from ``wm.train_state['vae']`` if present, also
    from the middle of an epoch that ``save_on_interrupt`` stopped; see ``_Epoch``). ``batches_per_epoch``,
    when known, gives the progress bar its total and time left; ``samples``, the frames an epoch is
    drawn from, lets a resume tell that the data has changed since."""
    state = wm.train_state.setdefault("vae", {"epoch": 0})
    # Marked untrained at V's first update, not before: a call that fails on its first batch changes nothing.
    stale = [stage for stage in ("rnn", "cmaes") if stage in wm.train_state]
    opt = _optimizer(wm.vae.parameters(), wm.config.learning_rate, state.get("optimizer"))
    history = []
    start = state["epoch"]
    for epoch in range(start, start + epochs):
        run = _Epoch(state, opt, seed, epoch, {"recon_mse": 0.0, "vq_loss": 0.0, "perplexity": 0.0, "usage": 0.0},
                     {"images": 0}, samples, where)
        wm.vae.train()
        bar = progress_bar(run.batches(make_batches), desc=f"train-vae epoch {epoch + 1}", unit="batch",
                           initial=run.done, total=batches_per_epoch, disable=not progress, leave=False)
        for step, batch in enumerate(bar, start=run.done):
            x = frames_to_tensor(batch, wm.device)
            with _autocast(wm.device):
                _, recon, vq = wm.vae(x)
                loss = recon + vq
            _check_finite(loss, "VQ-VAE", epoch + 1, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if stale:
                _mark_untrained(wm, stale, "V", where)
                stale = []
            stats = wm.vae.quantizer.stats
            run.add({"recon_mse": recon.item(), "vq_loss": vq.item(), **stats}, images=len(x))
            bar.set_postfix(mse=f"{recon.item():.5f}", ppl=f"{stats['perplexity']:.2f}",
                            img_s=f"{run.counts['images'] / run.seconds():.0f}")
        metrics = run.means()
        metrics.update(stage="vae", epoch=epoch + 1, images=run.counts["images"], seconds=run.seconds(),
                       images_per_s=run.counts["images"] / run.seconds())
        run.finish()
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(epoch + 1, metrics)
    return history


@_keeps_torch_rng
def fit_rnn(wm: WorldModel, make_batches: Batches, epochs: int, seed: int = 0, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None, clip: float = 1.0,
            events: float = 1.0, batches_per_epoch: int | None = None, samples: int | None = None,
            where: str = "this world model", lr_floor: float = 1.0, total_epochs: int | None = None) -> list[dict]:
    """Train M on batches of code sequences (see ``sequence_batches_from_arrays``), continuing like
    ``fit_vae``; ``events`` weights terminal transitions in the reward/done losses (1 = unweighted, the
    default everywhere: up-weighting makes the heads over-predict rare events, e.g. balanced weights
    (~50x here) gave a +0.3 reward with a 6% done probability next to the goal, which CMA-ES farmed for
    dream returns of up to 3.9).

    ``lr_floor`` < 1 decays the learning rate along a cosine, epoch by epoch, from the config's rate
    at epoch 0 to ``lr_floor`` times it at epoch ``total_epochs`` (default: the epochs done plus these).
    At a constant rate Adam keeps moving every weight by about the rate each step, so the reward head's
    output wanders by as much as the step cost it should predict, a bias every dream step then adds up;
    the decay lets it settle. The rate is a function of the epoch alone, so a resumed run gets the same."""
    state = wm.train_state.setdefault("rnn", {"epoch": 0})
    stale = ["cmaes"] if "cmaes" in wm.train_state else []  # C reads M's hidden state
    opt = _optimizer(wm.rnn.parameters(), wm.config.learning_rate, state.get("optimizer"))
    history = []
    start = state["epoch"]
    total = total_epochs or start + epochs
    wm.vae.eval()
    for epoch in range(start, start + epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_rate(wm.config.learning_rate, lr_floor, epoch, total)
        run = _Epoch(state, opt, seed, epoch, {"loss": 0.0}, {"steps": 0}, samples, where)
        wm.rnn.train()
        bar = progress_bar(run.batches(make_batches), desc=f"train-rnn epoch {epoch + 1}", unit="batch",
                           initial=run.done, total=batches_per_epoch, disable=not progress, leave=False)
        for step, batch in enumerate(bar, start=run.done):
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
            if stale:
                _mark_untrained(wm, stale, "M", where)
                stale = []
            run.add({"loss": loss.item(), **parts}, steps=int(mask.sum()))
            bar.set_postfix(loss=f"{loss.item():.4f}", nll=f"{parts['nll']:.4f}")
        metrics = run.means()
        metrics.update(stage="rnn", epoch=epoch + 1, steps=run.counts["steps"], seconds=run.seconds())
        run.finish()
        history.append(metrics)
        if on_epoch_end:
            on_epoch_end(epoch + 1, metrics)
    return history


def cosine_rate(rate: float, floor: float, epoch: int, total: int) -> float:
    """``rate`` at epoch 0 down a half cosine to ``floor * rate`` at epoch ``total`` (and after)."""
    progress = min(epoch / max(total, 1), 1.0)
    return rate * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


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
    for i in progress_bar(range(0, dataset.num_frames, batch_size), desc="encode frames", unit="batch",
                          disable=not progress, leave=False):
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
    preset: str = doc("config preset: auto (by the data's env id; another env gets WorldModelConfig's defaults), "
                      "WM-GridWorld-v0 or WM-CarRacing-v0", "auto")
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
    lr_floor: float = doc("learning rate at the last epoch as a fraction of the config's: it decays along a cosine "
                          "over --epochs (1: constant)", 0.2)
    seed: int = doc("seed for batch order and initialisation", 0)
    resume: bool = doc("continue an interrupted MDN-RNN run instead of starting it afresh", False)
    overwrite: bool = doc("train a new MDN-RNN even though the checkpoint holds one (its controller goes too)", False)
    device: str = doc("torch device: auto, cpu or cuda", "auto")
    progress: bool = doc("show progress bars", True)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch build sees no CUDA GPU (use --device cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


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
    global _stop
    request, outer = _StopRequest(), _stop

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
    _stop = request
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
        _stop = outer
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


def run_train_vae(cfg: TrainVAEConfig) -> dict:
    from wm_agent.data.dataset import EpisodeDataset

    check_settings((cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                   (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"))
    ds = EpisodeDataset(cfg.data)
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
        wm = WorldModel(config, ds.env_id, device, ds.identity["env_kwargs"])
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
        history = fit_vae(wm, lambda rng: ds.iter_frame_batches(cfg.batch_size, rng), remaining, cfg.seed,
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
    from wm_agent.data.dataset import EpisodeDataset

    check_settings((cfg.seq_len >= 1, f"--seq-len must be >= 1, got {cfg.seq_len}"),
                   (cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}"),
                   (cfg.epochs >= 0, f"--epochs must be >= 0, got {cfg.epochs}"),
                   (0 < cfg.lr_floor <= 1, f"--lr-floor must be in (0, 1], got {cfg.lr_floor}"))
    ds = EpisodeDataset(cfg.data)
    path = Path(cfg.world_model)
    wm = WorldModel.load(path, resolve_device(cfg.device))
    wm.require_trained("vae", str(path))
    check_data_fits(ds, wm, str(path))
    if "rnn" in wm.train_state and not (cfg.resume or cfg.overwrite):
        raise FileExistsError(f"{path} already holds an MDN-RNN ({wm.train_state['rnn'].get('epoch', 0)} epochs done): "
                              "pass --resume to continue it or --overwrite to train a new one")
    if cfg.resume and "rnn" in wm.train_state:
        _say_resuming("rnn", path, cfg.epochs, wm.train_state["rnn"], cfg.progress)
    else:  # a fresh M; an old dream's controller no longer applies
        torch.manual_seed(cfg.seed)
        wm.rnn = wm.new_rnn()
        wm.train_state.pop("rnn", None)
        wm.train_state.pop("cmaes", None)
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
        history = fit_rnn(wm, lambda rng: sequence_batches_from_arrays(win_codes, arrays, cfg.batch_size, rng),
                          max(cfg.epochs - done, 0), cfg.seed, cfg.progress, end_epoch,
                          batches_per_epoch=-(-len(win_codes) // cfg.batch_size), samples=len(win_codes),
                          where=str(path), lr_floor=cfg.lr_floor, total_epochs=cfg.epochs)
    return {"checkpoint": str(path), "epochs_done": wm.train_state["rnn"]["epoch"], "history": history}
