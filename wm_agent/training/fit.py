"""The fit loops of V and M, read top to bottom, and the batch sources they draw from.

Both loops take the modules they train, the stage's resumable ``state`` (a dict they update in place:
epochs done, optimizer, a stopped epoch) and a ``make_batches(rng)`` callable that yields one epoch of
batches, so the same code trains from an in-memory array (``WorldModel.train_vae``) or from memory-mapped
shards (the ``train-vae``/``train-rnn`` commands). The world model keeps its own bookkeeping (which stages
are trained, start frames): ``WorldModel.fit_vae``/``fit_rnn`` call these loops, which tell it of their
first update through ``on_first_update``.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from wm_agent.models.mdnrnn import MDNRNN
from wm_agent.models.vqvae import VQVAE, frames_to_tensor
from wm_agent.progress import progress_bar
from wm_agent.torch_utils import autocast, seed_torch

Batches = Callable[[np.random.Generator], Iterable[Any]]


class NonFiniteLoss(FloatingPointError):
    """Training produced NaN/inf; the last good checkpoint is kept untouched."""


def _check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"{stage} loss became {loss.item()} at epoch {epoch}, batch {step}; "
                            f"stopped without saving these weights (the last good checkpoint is kept)")


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


# Set while ``stop_requests`` runs (inside ``save_on_interrupt``): then a signal only asks the loops to stop at the
# next batch boundary. None (a loop called directly from Python): Ctrl-C raises KeyboardInterrupt wherever it lands.
_stop: _StopRequest | None = None


@contextmanager
def stop_requests() -> Iterator[_StopRequest]:
    """While the block runs, the loops check the ``_StopRequest`` it yields between two batches: one whose
    ``requested`` is set (by a signal handler, say) makes them stop there with ``TrainingStopped``, the
    partial epoch recorded in the stage's state. Outside such a block a Ctrl-C is a plain KeyboardInterrupt.

    Returns:
        A context manager that yields the request (the one before it comes back on exit).
    """
    global _stop
    request, outer = _StopRequest(), _stop
    _stop = request
    try:
        yield request
    finally:
        _stop = outer



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
        seed_torch(seed * 100_003 + epoch, opt.param_groups[0]["params"][0].device)
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
                              f"another one, so epoch {epoch + 1} starts again from its first batch",
                              stacklevel=6)  # the caller of WorldModel.train_vae/train_rnn or of run_train_*
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



def _device_of(module: torch.nn.Module) -> torch.device:
    """The device ``module``'s weights are on (where its batches go and its torch draws come from)."""
    return next(module.parameters()).device


def _keeps_torch_rng(fit):
    """Run ``fit`` on a copy of torch's global RNG state: each epoch seeds torch for its own order and
    restarts (see ``_Epoch``), which must not reseed the caller's random stream (a library user's next
    ``torch.rand`` would otherwise be the same after every call)."""
    @functools.wraps(fit)
    def wrapper(module: torch.nn.Module, *args, **kwargs):
        device = _device_of(module)
        cuda = device.type == "cuda"
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            return fit(module, *args, **kwargs)

    return wrapper


@_keeps_torch_rng
def fit_vae(vae: VQVAE, state: dict, make_batches: Batches, epochs: int, seed: int = 0, progress: bool = True,
            on_epoch_end: Callable[[int, dict], None] | None = None, batches_per_epoch: int | None = None,
            where: str = "this world model", samples: int | None = None, *, lr: float | None = None,
            on_first_update: Callable[[], None] | None = None) -> list[dict]:
    """Train V for ``epochs`` more epochs, continuing from ``state`` (also from the middle of an epoch that
    ``save_on_interrupt`` stopped; see ``_Epoch``).

    Args:
        vae: the VQ-VAE to train, in place.
        state: the stage's resumable state (``WorldModel.train_state['vae']``): ``epoch`` (epochs done),
            the ``optimizer``'s state and a stopped epoch (``partial``); updated in place.
        make_batches: ``make_batches(rng)`` yields one epoch of uint8 frame batches (N, H, W, 3).
        epochs: epochs to train on top of those done.
        seed: seeds each epoch's batch order and torch draws, from (seed, epoch).
        progress: show a progress bar.
        on_epoch_end: called with (epochs done, that epoch's metrics) after each epoch.
        batches_per_epoch: when known, gives the progress bar its total and time left.
        where: how messages name the model being trained.
        samples: the frames an epoch is drawn from, to tell on a resume that the data has changed since.
        lr: Adam's learning rate (default: the config's ``learning_rate``).
        on_first_update: called once, right after V's first update (the model has changed from then on).

    Returns:
        The metrics of each epoch trained.
    """
    device = _device_of(vae)
    opt = _optimizer(vae.parameters(), vae.config.learning_rate if lr is None else lr, state.get("optimizer"))
    history = []
    start = state.setdefault("epoch", 0)
    for epoch in range(start, start + epochs):
        run = _Epoch(state, opt, seed, epoch, {"recon_mse": 0.0, "vq_loss": 0.0, "perplexity": 0.0, "usage": 0.0},
                     {"images": 0}, samples, where)
        vae.train()
        bar = progress_bar(run.batches(make_batches), desc=f"train-vae epoch {epoch + 1}", unit="batch",
                           initial=run.done, total=batches_per_epoch, disable=not progress, leave=False)
        for step, batch in enumerate(bar, start=run.done):
            x = frames_to_tensor(batch, device)
            with autocast(device):
                _, recon, vq = vae(x)
                loss = recon + vq
            _check_finite(loss, "VQ-VAE", epoch + 1, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_first_update is not None:
                on_first_update()
                on_first_update = None
            stats = vae.quantizer.stats
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
def fit_rnn(rnn: MDNRNN, vae: VQVAE, state: dict, make_batches: Batches, epochs: int, seed: int = 0,
            progress: bool = True, on_epoch_end: Callable[[int, dict], None] | None = None, clip: float = 1.0,
            events: float = 1.0, batches_per_epoch: int | None = None, samples: int | None = None,
            where: str = "this world model", lr_floor: float = 1.0, total_epochs: int | None = None, *,
            lr: float | None = None, on_first_update: Callable[[], None] | None = None) -> list[dict]:
    """Train M on batches of code sequences (see ``sequence_batches_from_arrays``), continuing like
    ``fit_vae``; ``events`` weights terminal transitions in the reward/done losses (1 = unweighted, the
    default everywhere: up-weighting makes the heads over-predict rare events, e.g. balanced weights
    (~50x here) gave a +0.3 reward with a 6% done probability next to the goal, which CMA-ES farmed for
    dream returns of up to 3.9).

    ``lr_floor`` < 1 decays the learning rate along a cosine, epoch by epoch, from the config's rate
    at epoch 0 to ``lr_floor`` times it at epoch ``total_epochs`` (default: the epochs done plus these).
    At a constant rate Adam keeps moving every weight by about the rate each step, so the reward head's
    output wanders by as much as the step cost it should predict, a bias every dream step then adds up;
    the decay lets it settle. The rate is a function of the epoch alone, so a resumed run gets the same.

    Args:
        rnn: the MDN-RNN to train, in place.
        vae: the VQ-VAE whose codes the batches hold (M reads their latents); put in eval mode, not trained.
        state: the stage's resumable state (``WorldModel.train_state['rnn']``), as ``fit_vae``'s.
        make_batches: ``make_batches(rng)`` yields one epoch of ``sequence_batches_from_arrays``'s batches.
        epochs: epochs to train on top of those done.
        seed: seeds each epoch's batch order and torch draws, from (seed, epoch).
        progress: show a progress bar.
        on_epoch_end: called with (epochs done, that epoch's metrics) after each epoch.
        clip: the gradient norm each of the dynamics and the reward/done heads is clipped to.
        events: the weight of terminal transitions in the reward/done losses.
        batches_per_epoch: when known, gives the progress bar its total and time left.
        samples: the windows an epoch is drawn from, to tell on a resume that the data has changed since.
        where: how messages name the model being trained.
        lr_floor: the learning rate at epoch ``total_epochs`` as a fraction of ``lr``.
        total_epochs: the epoch the cosine decay ends at.
        lr: Adam's learning rate at epoch 0 (default: the config's ``learning_rate``).
        on_first_update: called once, right after M's first update (the model has changed from then on).

    Returns:
        The metrics of each epoch trained.
    """
    device = _device_of(rnn)
    rate = rnn.config.learning_rate if lr is None else lr
    opt = _optimizer(rnn.parameters(), rate, state.get("optimizer"))
    history = []
    start = state.setdefault("epoch", 0)
    total = total_epochs or start + epochs
    vae.eval()
    for epoch in range(start, start + epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_rate(rate, lr_floor, epoch, total)
        run = _Epoch(state, opt, seed, epoch, {"loss": 0.0}, {"steps": 0}, samples, where)
        rnn.train()
        bar = progress_bar(run.batches(make_batches), desc=f"train-rnn epoch {epoch + 1}", unit="batch",
                           initial=run.done, total=batches_per_epoch, disable=not progress, leave=False)
        for step, batch in enumerate(bar, start=run.done):
            with torch.no_grad():
                z = vae.indices_to_latent(batch["codes"].to(device))
            mask = batch["mask"].to(device)
            with autocast(device):
                params, _ = rnn(z[:, :-1], batch["actions"].to(device))
            params = {k: v.float() for k, v in params.items()}
            loss, parts = rnn.loss(params, z[:, 1:], batch["rewards"].to(device),
                                   batch["dones"].to(device), mask, events)
            _check_finite(loss, "MDN-RNN", epoch + 1, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Clip the dynamics and the reward/done heads apart: one joint norm, dominated by the
            # mixture NLL, would shrink the heads' updates to nothing.
            torch.nn.utils.clip_grad_norm_(rnn.dynamics_parameters(), clip)
            torch.nn.utils.clip_grad_norm_(rnn.head_parameters(), clip)
            opt.step()
            if on_first_update is not None:
                on_first_update()
                on_first_update = None
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
    """One epoch of ``frames`` (N, H, W, 3) in batches of ``batch_size``, in an order drawn from ``rng``
    (each batch's frames in index order)."""
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


def sequence_windows(dataset, codes: np.ndarray, seq_len: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cut every episode into windows of ``seq_len`` transitions, padded and masked at the end.

    Args:
        dataset: an ``EpisodeDataset`` (or anything with its ``frame_offsets``, ``step_offsets``, ``lengths``
            and ``actions_all``/``rewards_all``/``terminated_all``).
        codes: the code grids (N, G, G) of every frame of ``dataset``, in its order.
        seq_len: transitions per window.

    Returns:
        The windows' codes (W, seq_len + 1, G, G) and their ``actions``, ``rewards``, ``dones`` and ``mask``
        (W, seq_len[, A]), as ``sequence_batches_from_arrays`` takes them.
    """
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

