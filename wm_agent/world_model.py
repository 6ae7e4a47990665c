"""The world model as one object: V + M (+ C), a bank of start frames, one checkpoint file.

It is long because its many public methods each document their arguments in Args:/Returns:/Raises: sections
(the one docstring convention, issue 21); the code itself is one job.
"""

from __future__ import annotations

import dataclasses

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wm_agent.config import WorldModelConfig, is_int
from wm_agent.env_ids import env_spec, registered_episode_limit, registered_id, time_limit_of
from wm_agent.io import load_torch, save_torch
from wm_agent.models.controller import Controller
from wm_agent.models.mdnrnn import MDNRNN
from wm_agent.models.vqvae import VQVAE, frames_to_tensor, tensor_to_frames
from wm_agent.torch_utils import usable_device
from wm_agent.training import fit

if TYPE_CHECKING:
    import gymnasium as gym


FORMAT = "wm-agent/world-model"
# Dreams start from banked real first frames; every layout the data has is one more a controller
# trains on (with 256, a 60-generation search met each of them about twice). 1024 code grids of an
# 8x8 latent are 0.5 MB in the checkpoint.
MAX_START_FRAMES = 1024
VERSION = 3  # 2: M reads cells as codes, the keypoint controller; 3: its logit gain


# train_state keys: what each trains and the command that does it
STAGES = {"vae": ("VQ-VAE", "train-vae"), "rnn": ("MDN-RNN", "train-rnn"), "cmaes": ("controller", "train-controller"),
          "pg": ("controller", "train-controller")}
CONTROLLER_STAGES = ("cmaes", "pg")  # one of them trains C (train-controller --algo)
# The stages that learnt from V and from M (with the letter warnings call each), so go stale when it trains
# further: M learnt the old V's codes, C reads them and M's hidden state.
_LEARNT_FROM = {"vae": ("V", ("rnn", *CONTROLLER_STAGES)), "rnn": ("M", CONTROLLER_STAGES)}


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """``module`` in eval mode for the block, then back in the mode it was in.

    V's quantiser updates its EMA codebook on every forward pass in train mode, and a caller's own training
    loop that encodes a validation batch now and then must not find its codebook frozen afterwards.

    Args:
        module: the module to hold in eval mode for the block.

    Returns:
        A context manager that yields ``module``.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def checked_temperature(temperature: float) -> float:
    """A dream temperature, checked.

    Args:
        temperature: >= 0 (0 = each component's most likely mean).

    Returns:
        ``temperature`` itself.

    Raises:
        ValueError: when it is below 0 or NaN (NaN fails here, not later inside torch's sampling).
    """
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return temperature


class WorldModel:
    """VQ-VAE (V), MDN-RNN (M) and controller (C) sharing one config and one ``.pt`` file.

    ``start_codes`` is a small bank of code grids of real first frames, saved with the model, so a
    dream can start from a real-looking frame without any data at hand.
    """

    def __init__(self, config: WorldModelConfig, env_id: str | None = None, device: str | torch.device = "cpu",
                 env_kwargs: dict[str, Any] | None = None):
        self.config = config
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})  # gym.make keyword arguments its data was collected with
        self.device = usable_device(device)
        self.vae = VQVAE(config).to(self.device)
        self.rnn = self.new_rnn()
        self.controller = self.new_controller(config)
        self.start_codes = torch.zeros(0, config.latent_grid, config.latent_grid, dtype=torch.long)
        self.metrics: dict[str, Any] = {}
        self.train_state: dict[str, Any] = {}  # optimiser / CMA-ES state so interrupted runs resume

    def to(self, device: str | torch.device) -> WorldModel:
        """Move V, M and C to ``device``, in place (as ``nn.Module.to`` does).

        Args:
            device: where V, M and C go.

        Returns:
            The model itself.
        """
        self.device = usable_device(device)
        for module in (self.vae, self.rnn, self.controller):
            module.to(self.device)
        return self

    def real_env_id(self, env_id: str | None = None) -> str:
        """The registered id of ``env_id`` when given, else the env this model was trained on (as it was named).

        Args:
            env_id: an env id; None for this model's env.

        Returns:
            The registered id of ``env_id``, or this model's env id as it was named.

        Raises:
            ValueError: a clear error for an env ``gym.make`` could not make here, or when neither names one.
        """
        import gymnasium as gym

        if not (env_id or self.env_id):
            raise ValueError("this world model does not name the env it was trained on: pass --env")
        try:
            spec = env_spec(env_id or self.env_id)
        except (ImportError, gym.error.Error) as exc:
            if env_id:
                raise ValueError(f"unknown env {env_id!r}: {exc}") from None
            raise ValueError(f"this world model was trained on {self.env_id!r}, which cannot be made here ({exc}); "
                             "run from the folder that holds its module, or pass --env") from None
        return spec.id if env_id else self.env_id

    def make_env(self, env_id: str | None = None, **kwargs) -> gym.Env:
        """``gym.make`` of the real env.

        Args:
            env_id: the env (default: the one this model was trained on); when it is that env, it is made with
                the keyword arguments its data was collected with (``collect --env-kwargs``: a discrete
                CarRacing, say).
            **kwargs: ``gym.make`` keyword arguments, on top of those.

        Returns:
            The env.

        Raises:
            ValueError: as ``real_env_id``.
        """
        import gymnasium as gym

        env_id = self.real_env_id(env_id)
        return gym.make(env_id, **{**(self.env_kwargs if self._is_own(env_id) else {}), **kwargs})

    def episode_limit(self, env_id: str | None = None) -> int:
        """Steps in an episode of an env as ``make_env`` makes it; a dream of the env ends there too.

        Args:
            env_id: the env (default: this model's env).

        Returns:
            The data's ``max_episode_steps`` keyword; else, when the data's other keywords may have set a
            limit of their own (``WM-CarRacing-v0``'s ``action_repeat``), the made env's smallest time limit;
            else the env's registered limit (1000 without one).
        """
        env_id = env_id or self.env_id
        if self._is_own(env_id) and self.env_kwargs.get("max_episode_steps"):
            return int(self.env_kwargs["max_episode_steps"])
        if self._is_own(env_id) and self.env_kwargs:
            env = self.make_env(env_id)
            try:
                limit = time_limit_of(env)
            finally:
                env.close()
            if limit:
                return limit
        return registered_episode_limit(env_id, default=1000)

    def _is_own(self, env_id: str | None) -> bool:
        """Whether ``env_id`` names this model's env, however spelled (``envs:WM-GridWorld-v0``); an id that
        cannot be looked up here is only its own spelling."""
        if not env_id or not self.env_id:
            return False
        return env_id == self.env_id or registered_id(env_id) == registered_id(self.env_id)

    def is_trained(self, stage: str) -> bool:
        """Whether a stage finished at least one epoch or generation.

        Args:
            stage: ``"vae"``, ``"rnn"``, ``"cmaes"`` or ``"pg"``.

        Returns:
            True when it did.
        """
        state = self.train_state.get(stage)
        return state is not None and bool(state.get("epoch", state.get("generation", 1)))

    def require_trained(self, stage: str, where: str = "this world model") -> None:
        """Refuse to go on without a trained V or M: an untrained one would give frames or dreams of noise
        without a word.

        Args:
            stage: ``"vae"`` (V) or ``"rnn"`` (M).
            where: what the error message calls the model.

        Raises:
            ValueError: when the stage never trained, or not one epoch of it finished.
        """
        name, command = STAGES[stage]
        if stage not in self.train_state:
            raise ValueError(f"{where} has no trained {name}: run `wm-agent {command}` first")
        if not self.is_trained(stage):  # --epochs 0, or stopped within the first epoch
            raise ValueError(f"{where} has no trained {name}: not one epoch of it finished (run `wm-agent {command}`, "
                             "with --resume to finish a stopped first epoch)")

    def warn_if_untrained(self, where: str = "this world model") -> None:
        """Warn when the controller about to act was never trained (by CMA-ES or pg): its initial parameters would
        otherwise run without a word (a warning, not an error: watching or scoring an untrained agent is
        a fair baseline).

        Args:
            where: what the warning calls the model.
        """
        if not any(stage in self.train_state for stage in CONTROLLER_STAGES):
            warnings.warn(f"{where} has no trained controller: its actions come from untrained initial "
                          "parameters (run `wm-agent train-controller` first)", stacklevel=2)

    # -- V ----------------------------------------------------------------------------------------
    def _as_input(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray) and (isinstance(frames, np.memmap) or not frames.flags.writeable):
            frames = np.array(frames)  # torch would warn on (and must not write into) read-only memory
        t = torch.as_tensor(frames)
        if t.dtype == torch.uint8:
            return frames_to_tensor(t, self.device)
        # float64 is numpy's default float; V's weights are float32 (V still checks the range and shape)
        return t.to(self.device, torch.float32 if t.is_floating_point() else t.dtype)

    def new_rnn(self) -> MDNRNN:
        """A fresh MDN-RNN on this model's device, reading cells through V's codebook."""
        return MDNRNN(self.config, self.vae.quantizer.codebook).to(self.device)

    def new_controller(self, config: WorldModelConfig) -> Controller:
        """A fresh controller on this model's device, reading cells through V's codebook.

        Args:
            config: the controller's config.

        Returns:
            The controller.
        """
        return Controller(config, self.vae.quantizer.codebook).to(self.device)

    def set_action_squash(self, squash: tuple[str, ...]) -> None:
        """Read the controller's parameters and buffers through another ``action_squash`` (the config checks it).

        Args:
            squash: one squash per continuous action (``config.SQUASHES``).
        """
        saved = self.controller.state_dict()
        self.config = dataclasses.replace(self.config, action_squash=tuple(squash))
        self.controller = self.new_controller(self.config)
        self.controller.load_state_dict(saved)

    @torch.no_grad()
    def encode(self, frames, batch_size: int = 1024) -> torch.Tensor:
        """Frames -> flattened quantised latents.

        Args:
            frames: uint8 frames (B, H, W, 3) or float (B, 3, H, W).
            batch_size: frames V encodes at a time.

        Returns:
            Flattened quantised latents (B, Z).
        """
        return self.vae.indices_to_latent(self.encode_indices(frames, batch_size))

    @torch.no_grad()
    def encode_indices(self, frames, batch_size: int = 1024) -> torch.Tensor:
        with evaluating(self.vae):
            out = [self.vae.encode(self._as_input(frames[i : i + batch_size]))
                   for i in range(0, len(frames), batch_size)]
        if not out:
            raise ValueError("encode needs at least one frame")
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Flattened latents -> frames, snapping to the codebook first.

        Args:
            z: flattened float latents (B, Z) (one latent: ``z[None]``).

        Returns:
            uint8 frames (B, H, W, 3).

        Raises:
            ValueError: for latents of another shape or dtype, or with NaN or infinite values.
        """
        z = torch.as_tensor(z)
        size = self.config.z_size
        if z.dim() != 2 or z.shape[1] != size or not z.is_floating_point():
            raise ValueError(f"decode wants float latents of shape (B, {size}), got {z.dtype} {tuple(z.shape)} "
                             "(one latent: z[None])")
        if not torch.isfinite(z).all():  # snapping a NaN picks code 0 and draws a frame anyway
            raise ValueError("decode got latents with NaN or infinite values")
        with evaluating(self.vae):
            return tensor_to_frames(self.vae.decode_latent(z.to(self.device, torch.float32)))

    def snap(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents -> their nearest codes.

        Args:
            z: latents (..., Z).

        Returns:
            Their nearest code indices (..., G, G) and those codes' latents (..., Z): what V can decode.
        """
        codes = self.vae.latent_to_indices(z)
        return codes, self.vae.indices_to_latent(codes)

    def set_start_frames(self, frames, max_frames: int = MAX_START_FRAMES) -> None:
        """Keep up to ``max_frames`` real first frames (as code grids) for dreams to start from.

        Args:
            frames: real first frames, as ``encode`` takes them.
            max_frames: how many of them to keep, at most.
        """
        self.start_codes = self.encode_indices(frames[:max_frames]).cpu()

    # -- training (in memory; the CLI streams from memory-mapped shards through the same loops) ---
    def train_vae(self, observations, epochs: int = 1, batch_size: int = 128, seed: int = 0, progress: bool = False,
                  start_frames=None):
        """Fit V on uint8 frames (N, H, W, 3); returns the per-epoch metrics.

        Dreams start from code grids of real frames, which mean something only to the V that encoded
        them, so afterwards they are encoded again (``set_start_frames``).

        Args:
            observations: uint8 frames (N, H, W, 3).
            epochs: epochs to train (>= 0).
            batch_size: frames per batch (a positive int).
            seed: seed of the batch order.
            progress: whether to show progress.
            start_frames: uint8 (M, H, W, 3), say the episodes' first frames, as the CLI keeps, to encode the
                start frames from; None for the first ``MAX_START_FRAMES`` of ``observations``.

        Returns:
            The per-epoch metrics.

        Raises:
            ValueError: for frames of another shape or dtype, or none, or a bad ``batch_size`` or ``epochs``.
        """
        s = self.config.image_size
        frames = np.asarray(observations)
        start = frames if start_frames is None else np.asarray(start_frames)
        for name, array in (("observations", frames), ("start_frames", start))[: 1 if start is frames else 2]:
            if array.ndim != 4 or array.shape[1:] != (s, s, 3) or array.dtype != np.uint8 or not len(array):
                raise ValueError(f"train_vae needs {name} of at least one uint8 frame of shape ({s}, {s}, 3), got "
                                 f"{array.dtype} of shape {array.shape}")
        if not (is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (is_int(epochs) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        history = self.fit_vae(lambda rng: fit.frame_batches_from_array(frames, batch_size, rng), epochs, seed,
                               progress)
        if history:
            self.set_start_frames(start)
        return history

    def train_rnn(self, sequences: dict[str, np.ndarray], epochs: int = 1, batch_size: int = 16, seed: int = 0,
                  progress: bool = False, lr_floor: float = 1.0):
        """Fit M on episodes.

        Args:
            sequences: ``obs`` (B, T+1, H, W, 3) uint8, ``actions`` (B, T[, A]), ``rewards`` (B, T),
                ``dones`` (B, T) and optionally ``mask`` (B, T).
            epochs: epochs to train (>= 0).
            batch_size: sequences per batch (a positive int).
            seed: seed of the batch order.
            progress: whether to show progress.
            lr_floor: in (0, 1]; < 1 decays the learning rate over these ``epochs`` (see
                ``training.fit.fit_rnn``), as ``wm-agent train-rnn`` does.

        Returns:
            The per-epoch metrics.

        Raises:
            ValueError: for missing sequences or a bad ``batch_size``, ``epochs`` or ``lr_floor``, or without a
                trained V.
        """
        missing = {"obs", "actions", "rewards", "dones"} - set(sequences)
        if missing or not (is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"train_rnn needs sequences with obs, actions, rewards and dones (missing: "
                             f"{sorted(missing) or 'none'}) and a positive int batch_size (got {batch_size!r})")
        if not (is_int(epochs) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if not (isinstance(lr_floor, (int, float)) and 0 < lr_floor <= 1):
            raise ValueError(f"lr_floor must be a number in (0, 1], got {lr_floor!r}")
        self.require_trained("vae")  # M learns V's codes: an untrained V's are noise
        obs = np.asarray(sequences["obs"])
        b, t1 = obs.shape[:2]
        codes = self.encode_indices(obs.reshape(b * t1, *obs.shape[2:])).view(b, t1, *self.start_codes.shape[1:])
        arrays = {k: np.asarray(v) for k, v in sequences.items() if k != "obs"}
        start = self.train_state.get("rnn", {}).get("epoch", 0)
        return self.fit_rnn(lambda rng: fit.sequence_batches_from_arrays(codes, arrays, batch_size, rng), epochs,
                            seed, progress, lr_floor=lr_floor, total_epochs=start + epochs)

    def fit_vae(self, make_batches: fit.Batches, epochs: int, seed: int = 0, progress: bool = True,
                on_epoch_end: Callable[[int, dict], None] | None = None, batches_per_epoch: int | None = None,
                where: str = "this world model", samples: int | None = None) -> list[dict]:
        """Train V for ``epochs`` more epochs on batches of uint8 frames (``training.fit.fit_vae``), continuing
        ``train_state['vae']``; at V's first update, a trained M and C are marked untrained (with a warning).

        Args:
            make_batches: ``make_batches(rng)`` yields one epoch of frame batches (N, H, W, 3).
            epochs, seed, progress, on_epoch_end, batches_per_epoch, where, samples: as ``training.fit.fit_vae``'s.

        Returns:
            The metrics of each epoch trained.
        """
        state = self.train_state.setdefault("vae", {"epoch": 0})
        return fit.fit_vae(self.vae, state, make_batches, epochs, seed, progress, on_epoch_end, batches_per_epoch,
                           where, samples, lr=self.config.learning_rate,
                           on_first_update=self._stale_after("vae", where))

    def fit_rnn(self, make_batches: fit.Batches, epochs: int, seed: int = 0, progress: bool = True,
                on_epoch_end: Callable[[int, dict], None] | None = None, clip: float = 1.0, events: float = 1.0,
                batches_per_epoch: int | None = None, samples: int | None = None, where: str = "this world model",
                lr_floor: float = 1.0, total_epochs: int | None = None) -> list[dict]:
        """Train M for ``epochs`` more epochs on batches of V's code sequences (``training.fit.fit_rnn``),
        continuing ``train_state['rnn']``; at M's first update, a trained C is marked untrained (with a warning)
        unless the state says ``keeps_controller`` (a fine-tune).

        Args:
            make_batches: ``make_batches(rng)`` yields one epoch of ``sequence_batches_from_arrays``'s batches.
            epochs, seed, progress, on_epoch_end, clip, events, batches_per_epoch, samples, where, lr_floor,
                total_epochs: as ``training.fit.fit_rnn``'s.

        Returns:
            The metrics of each epoch trained.
        """
        state = self.train_state.setdefault("rnn", {"epoch": 0})
        # A fine-tune (train-rnn --fine-tune) keeps the controller on purpose: its inputs drift, not change meaning.
        stale = None if state.get("keeps_controller") else self._stale_after("rnn", where)
        return fit.fit_rnn(self.rnn, self.vae, state, make_batches, epochs, seed, progress, on_epoch_end, clip, events,
                           batches_per_epoch, samples, where, lr_floor, total_epochs, lr=self.config.learning_rate,
                           on_first_update=stale)

    def _stale_after(self, trained: str, where: str) -> Callable[[], None]:
        """What the fit loop of ``trained`` (``"vae"``, ``"rnn"``) calls at its first update: it forgets the
        training of the stages that learnt from it (see ``_LEARNT_FROM``), with a warning. Marked then, not
        before: a call that fails on its first batch changes nothing."""
        letter, later = _LEARNT_FROM[trained]
        stages = [stage for stage in later if stage in self.train_state]

        def mark_untrained() -> None:
            if not stages:
                return
            for stage in stages:
                del self.train_state[stage]
            names = " and ".join(STAGES[s][0] for s in stages)
            commands = " and ".join(f"`wm-agent {STAGES[s][1]}`" for s in stages)
            # stacklevel: the caller of train_vae/train_rnn or of run_train_* (through the fit loop and its wrapper)
            warnings.warn(f"{where}: training {letter} further makes its trained {names} stale, now marked untrained "
                          f"(run {commands} again)", stacklevel=6)

        return mark_untrained

    # -- M ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def dream(self, initial_obs, actions, temperature: float = 0.0, seed: int | None = None) -> dict[str, np.ndarray]:
        """Imagine the frames that follow ``initial_obs`` (H, W, 3) uint8 under ``actions`` (T[, A]).

        Args:
            initial_obs: the first frame, (H, W, 3) uint8.
            actions: (T[, A]) actions.
            temperature: the dream temperature (see ``checked_temperature``).
            seed: seed of the sampling; None for torch's global generator.

        Returns:
            ``frames`` (T+1, H, W, 3) uint8 (the decoded first frame, then each imagined one),
            ``rewards`` (T,), ``dones`` (T,) (probabilities) and ``latents`` (T+1, Z).

        Raises:
            ValueError: for a bad temperature, or actions of another shape.
        """
        checked_temperature(temperature)
        self.rnn.eval()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        codes, z = self.snap(self.encode(np.asarray(initial_obs)[None]))  # (1, G, G), (1, Z)
        acts = torch.as_tensor(np.array(actions)).to(self.device)  # a copy: actions may be read-only (memmap)
        want = (acts.shape[0],) if self.config.discrete_actions else (acts.shape[0], self.config.action_dim)
        if acts.dim() == 0 or tuple(acts.shape) != want:
            what = "T discrete actions" if self.config.discrete_actions else f"T x {self.config.action_dim} actions"
            raise ValueError(f"dream wants actions of shape {('T',) + want[1:]} ({what}), got {tuple(acts.shape)}")
        hidden = None
        latents, rewards, dones = [z], [], []
        for a in acts:
            z, codes, reward, done_p, hidden = self.rnn.dream_step(z, codes, a[None], hidden, temperature, gen,
                                                                   self.snap)
            latents.append(z)
            rewards.append(float(reward[0]))
            dones.append(float(done_p[0]))
        zs = torch.cat(latents)
        return {"frames": self.decode(zs), "rewards": np.array(rewards, np.float32),
                "dones": np.array(dones, np.float32), "latents": zs.cpu().numpy()}

    # -- files ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "config": self.config.to_dict(), "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "vae": self.vae.state_dict(), "rnn": self.rnn.state_dict(), "controller": self.controller.state_dict(),
            "start_codes": self.start_codes, "metrics": self.metrics, "train_state": self.train_state,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole model atomically (a crash mid-write leaves the previous file intact).

        Args:
            path: the file to write.

        Raises:
            TypeError: for a value a weights-only load would not read back.
        """
        state = self.state_dict()
        save_torch({k: _to_cpu(v, f"{type(self).__name__}.{k}") for k, v in state.items()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             expect_config: WorldModelConfig | None = None) -> "WorldModel":
        """Load a checkpoint with ``weights_only=True``.

        Args:
            path: the checkpoint file.
            device: where V, M and C go.
            expect_config: when given, the config the checkpoint must have been trained with.

        Returns:
            The world model.

        Raises:
            ValueError: clear errors for foreign, corrupt or mismatched files.
            TypeError: for unusable ``env_kwargs``.
        """
        path = Path(path)
        state = load_torch(path, "world-model checkpoint")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a wm-agent world-model checkpoint (no '{FORMAT}' format tag)")
        if state.get("version") != VERSION:
            raise ValueError(f"{path} has checkpoint version {state.get('version')}; "
                             f"this wm-agent reads version {VERSION}")
        try:
            config = WorldModelConfig.from_dict(state["config"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} carries an unusable config: {exc}") from exc
        if expect_config is not None and expect_config != config:
            diff = {k: (v, getattr(config, k)) for k, v in expect_config.to_dict().items()
                    if config.to_dict()[k] != v}
            raise ValueError(f"{path} was trained with a different config (expected, found): {diff}")
        env_kwargs = state.get("env_kwargs") or {}
        if not isinstance(env_kwargs, dict):
            raise TypeError(f"{path} carries unusable env_kwargs: {env_kwargs!r}")
        wm = cls(config, state.get("env_id"), device, env_kwargs)
        try:
            wm.vae.load_state_dict(state["vae"])
            wm.rnn.load_state_dict(state["rnn"])
            wm.controller.load_state_dict(state["controller"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise ValueError(f"{path}: weights do not match its config: {exc}") from exc
        codes = state.get("start_codes", wm.start_codes)
        g = config.latent_grid
        if (not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dim() != 3
                or tuple(codes.shape[1:]) != (g, g)
                or (codes.numel() and (codes.min() < 0 or codes.max() >= config.num_embeddings))):
            raise ValueError(f"{path}: start_codes must be integer codes in [0, {config.num_embeddings}) "
                             f"of shape (N, {g}, {g})")
        wm.start_codes = codes.long()
        wm.metrics = state.get("metrics", {})
        wm.train_state = state.get("train_state", {})
        return wm


# What a weights-only load reads back besides tensors and containers (torch 2.x's allow-list): anything
# else would make a file that load refuses.
_PLAIN = (str, int, float, bool, complex, bytes, bytearray, type(None), torch.device, torch.dtype)


def _to_cpu(obj, where: str = "the checkpoint"):
    """Tensors to CPU and numpy values to plain types: a weights-only load accepts nothing else, so any
    other value is refused here, by name, before a good file is replaced by one that cannot be loaded."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where} is a numpy array of Python objects; a checkpoint holds numeric arrays only")
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {_to_cpu(k, f"a key of {where}"): _to_cpu(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return type(obj)(_to_cpu(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, _PLAIN):
        return obj
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__} ({obj!r}); a checkpoint loads with "
                    "torch.load(weights_only=True), which reads tensors, numbers, strings, bytes, None, torch "
                    "devices and dtypes, and lists, tuples, sets and dicts of those: store it as one of them (a "
                    "path as str(path), say)")
