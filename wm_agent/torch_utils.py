"""Device and precision helpers shared by the models, the world model and the trainers: which device a name
means, the autocast training runs under, seeding torch for a model's device, and one torch thread where
more would only wait (forked workers, batch-of-one steps)."""

from __future__ import annotations

import contextlib
import os

import torch


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


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, with one clear line where torch has none to give ("gpu") or would
    fail later with a bare AssertionError (CUDA asked for without it)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device ('cpu', 'cuda', 'cuda:1', ...): {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but this torch cannot use CUDA here "
                         "(torch.cuda.is_available() is False): use 'cpu'")
    return resolved


def autocast(device: torch.device):
    """The precision V and M train in on ``device``: a bf16 autocast on a GPU, none on the CPU.

    Args:
        device: the device the model's weights are on.

    Returns:
        A ``torch.autocast`` context manager (disabled off CUDA).
    """
    # bf16 autocast pays on GPUs; on CPU it is slower for these small convs, so it is off there.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def seed_torch(seed: int, device: torch.device) -> None:
    """Seed torch's CPU stream and, for a model on a GPU, that GPU's (what the model draws from):
    ``torch.manual_seed`` would reseed every GPU, streams of the caller's on other devices included."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _one_torch_thread_after_fork() -> None:
    # A process forked after torch ran a parallel op (Gymnasium's AsyncVectorEnv forks by default) inherits
    # OpenMP's thread-team state but not its threads, and its first parallel op waits for them forever.
    # One thread per forked process, as PyTorch's own DataLoader workers do, never waits on the team.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_torch_thread_after_fork)


@contextlib.contextmanager
def one_torch_thread():
    """Run a batch-of-one step on one torch thread. Its ops are too small to gain from more, and on a busy
    CPU each parallel op waits for a thread that is not scheduled: a single DreamEnv step ran 2x-30x
    slower with two threads than with one while another process held a core."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
