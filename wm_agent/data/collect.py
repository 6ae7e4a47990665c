"""Roll out a data policy in a real env and store the episodes as memory-mappable shards (their format:
``wm_agent.data.shards``).

Speed: GridWorld steps at tens of thousands of frames per second, so nothing crosses a process
boundary per step. Each worker process builds its env once and turns one task (a whole shard) into
files on its own (``wm_agent.data.shard_writer``); the main process only sees a small summary per shard.
Raw frames are ~12 KB, so two GridWorld workers would produce ~800 MB/s, twice what this project's disks
sustain; compressed as they are produced (~200 bytes, ~3 us each) they are a few MB/s.
``vectorization="async"|"sync"`` drives one Gymnasium vector env instead (``wm_agent.data.vector``:
per-step messages, slower for fast envs, same shards).

Determinism: shard ``i`` draws its reset seeds and its policy's random numbers from
``SeedSequence([seed, i])``, so a command produces byte-identical shards whatever the worker count,
and a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import warnings
from pathlib import Path

from wm_agent.backends import BACKENDS, make_pool
from wm_agent.config import is_int
from wm_agent.env_ids import episode_limit
from wm_agent.data.episodes import _observes_frames, make_env, pixel_env
from wm_agent.data.frames import CODEC
from wm_agent.data.collect_config import VECTORIZATIONS, CollectConfig, Vectorization
from wm_agent.data.policies import POLICIES, _check_action_space, check_policy_arguments
from wm_agent.data.shard_sync import _ShardSyncer
from wm_agent.data.shard_writer import (CollectionError, _close_cached_envs, _collect_shard, _collect_shard_for_driver,
                                        _mp_context, _place_shard, _remove_temporary, _shard_failed, _ShardTask)
from wm_agent.data.shards import (_SHARD_RE, _TMP_PREFIX, _TRASH_PREFIX, IDENTITY_KEYS, MANIFEST, MANIFEST_FORMAT,
                                  _set_shards, _shard_entry, describe_space, open_shard, shard_name)
from wm_agent.data.vector import run_vector
from wm_agent.progress import progress_bar
from wm_agent.workers import WorkerDied

# wm_agent.io is imported where it is used, by the main process only: workers never write a manifest,
# and every import delays each worker's start.

__all__ = ["VECTORIZATIONS", "CollectConfig", "DataCollector", "Vectorization", "default_episodes_per_shard"]


# Shard size when none is given: at least MIN_EPISODES_PER_SHARD episodes, and enough to hold about
# SHARD_FRAMES frames if every episode ran to the env's limit. Each shard costs milliseconds of file
# creation (seven files and a folder) whatever it holds: shards of 10 GridWorld episodes (~440 frames)
# halved the collector's rate. CarRacing (1000-step episodes) keeps 10.
MIN_EPISODES_PER_SHARD = 10
DEFAULT_ENV = "WM-GridWorld-v0"
SHARD_FRAMES = 5_000


def default_episodes_per_shard(episode_limit: int | None) -> int:
    """Episodes per shard when none is given.

    Args:
        episode_limit: the longest an episode can run, in steps (None: unknown).

    Returns:
        At least 10, more for short episodes (about 5,000 frames' worth).
    """
    if episode_limit is None:
        return MIN_EPISODES_PER_SHARD
    return max(MIN_EPISODES_PER_SHARD, round(SHARD_FRAMES / (int(episode_limit) + 1)))


def _named(argument: str) -> str:
    """``episodes_per_shard (--episodes-per-shard)``: an argument as the API and the CLI spell it."""
    return f"{argument} (--{argument.replace('_', '-')})"


class DataCollector:
    """Collect episodes of a data policy into resumable shards (see the module docstring).

    Args:
        env_id: a registered Gymnasium id (``"WM-GridWorld-v0"``, ``"WM-CarRacing-v0"``, or
            ``"module:Id"``); the env must emit ``(H, W, 3)`` uint8 observations, unless ``pixels``.
        out_dir: output folder; re-running into it resumes, a different configuration is refused.
        policy: ``"random"`` (uniform actions), ``"brownian"`` (clipped random walk for Box actions,
            actions held 1..8 steps for Discrete ones), or ``"controller"``: ``world_model``'s controller
            drives, reading V's and M's (z, h) as in ``wm-agent evaluate``, plus exploration noise
            (``wm_agent.data.controller_policy``).
        seed: base seed; shard ``i`` is seeded from ``(seed, i)``.
        workers: parallel envs: worker processes, or sub-envs of the vector env (see ``vectorization``).
        episodes_per_shard: episodes per shard (memory per worker grows with it). None (the default):
            at least 10, more for short episodes (about 5,000 frames' worth at the env's episode limit:
            98 for GridWorld, 10 for CarRacing); a folder being resumed keeps the size it was made with.
        env_kwargs: keyword arguments of ``gym.make`` (JSON-serialisable; stored in the manifest).
        max_steps: optional cap on episode length, on top of the env's own time limit.
        vectorization: how the ``workers`` envs run in parallel. ``"processes"`` (the default and the
            fastest): worker processes that each roll out whole shards, so nothing crosses a process
            boundary per step (``workers=1`` collects in this process). ``"async"`` / ``"sync"``: one
            Gymnasium vector env (``gym.make_vec`` with that ``vectorization_mode``) of ``workers``
            sub-envs, stepped in lockstep by this process; per-step messages make it slower for fast
            envs like GridWorld, but any env ``gym.make_vec`` can build works. All three write the same
            shards for the same seed.
        pixels: collect ``env_id``'s ``rgb_array`` render as 64x64 frames, for an env whose observations
            are not images (``CartPole-v1``). The data is then recorded as ``WM-Pixels-v0`` with ``env_id``
            in its keyword arguments (``env_id`` and ``env_kwargs`` as ``pixel_env`` gives them).
        backend: where the worker processes run (``wm_agent.backends``): ``"local"``, or ``"ray"``: Ray tasks
            (on the cluster at ``ray_address``), always, even for one worker. Ray's workers may be other
            machines, so each sends its shard's files back and this process writes them into ``out_dir``:
            the same shards, with no shared filesystem needed. ``vectorization`` must be ``"processes"``.
        ray_address: the Ray cluster to join (``wm_agent.ray_pool.RayPool``; None: start or join a local one).
        world_model: the checkpoint whose controller drives ``policy="controller"`` (trained V, M and C);
            each worker process loads it once. ``env_id`` None: collect from its env with its ``env_kwargs``;
            an ``env_id`` (and ``env_kwargs``) given must be the same.
        policy_noise: ``policy="controller"`` only: Box actions get Gaussian noise of std
            ``policy_noise * (high - low) / 2``, clipped into the bounds; a discrete action is replaced by a
            uniformly random one with probability ``policy_noise``. In [0, 1]; None: 0.1.
        greedy: ``policy="controller"`` only: argmax discrete actions instead of sampling from the
            controller's softmax (as ``evaluate --greedy``).
    """

    def __init__(
        self,
        env_id: str | None,
        out_dir: str | os.PathLike,
        policy: str = "random",
        seed: int = 0,
        workers: int = 1,
        episodes_per_shard: int | None = None,
        env_kwargs: dict | None = None,
        max_steps: int | None = None,
        vectorization: str = "processes",
        pixels: bool = False,
        backend: str = "local",
        ray_address: str | None = None,
        world_model: str | os.PathLike | None = None,
        policy_noise: float | None = None,
        greedy: bool = False,
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        check_policy_arguments(policy, world_model, policy_noise, greedy, vectorization, backend)
        if vectorization not in VECTORIZATIONS:
            raise ValueError(f"vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{_named('backend')} must be one of {BACKENDS}, got {backend!r}")
        if backend != "local" and vectorization != "processes":
            raise ValueError(f"{_named('backend')} {backend} runs whole shards in its workers (vectorization "
                             f"'processes'); vectorization {vectorization!r} steps one vector env in this process")
        if backend == "ray":  # a missing Ray is said before any folder is made
            from wm_agent.ray_pool import import_ray

            import_ray()
        # Each message names the argument and its command-line option, read by users of either.
        if not is_int(workers) or workers < 1:
            raise ValueError(f"{_named('workers')} must be a positive int, got {workers!r}")
        if episodes_per_shard is not None and (not is_int(episodes_per_shard) or episodes_per_shard < 1):
            raise ValueError(f"{_named('episodes_per_shard')} must be a positive int (or None / 0 on the command "
                             f"line: sized by the env's episode limit), got {episodes_per_shard!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"{_named('seed')} must be a non-negative int, got {seed!r}")
        if max_steps is not None and (not is_int(max_steps) or max_steps < 1):
            raise ValueError(f"{_named('max_steps')} must be a positive int (or None / 0 on the command line: "
                             f"the env's own limit), got {max_steps!r}")
        workers, seed = int(workers), int(seed)  # JSON takes no np.int64
        max_steps = None if max_steps is None else int(max_steps)
        env_kwargs = dict(env_kwargs or {})
        try:
            env_kwargs = json.loads(json.dumps(env_kwargs))  # the manifest stores them as JSON
        except TypeError as exc:
            raise ValueError(f"env_kwargs must be JSON-serialisable: {exc}") from None
        self.policy_options = None
        if policy == "controller":
            from wm_agent.data.controller_policy import prepare_driver

            env_id, env_kwargs, self.policy_options = prepare_driver(world_model, env_id, env_kwargs, pixels,
                                                                     policy_noise, greedy)
        elif env_id is None:
            env_id = DEFAULT_ENV
        if pixels and policy != "controller":
            env_id, env_kwargs = pixel_env(env_id, env_kwargs)

        env = make_env(env_id, env_kwargs)
        try:
            obs_space, action_space, spec = env.observation_space, env.action_space, env.spec
            if self.policy_options is not None and _observes_frames(obs_space):
                from wm_agent.data.controller_policy import check_driver_fits

                check_driver_fits(env, self.policy_options)
        finally:
            env.close()
        if not _observes_frames(obs_space):
            raise ValueError(
                f"{env_id} must observe (H, W, 3) uint8 images, got {obs_space}; set {_named('pixels')} to "
                "collect its rgb_array render as 64x64 frames, or wrap it in envs.ImageObservation"
            )
        _check_action_space(action_space)

        self.env_id = env_id
        self.out_dir = Path(out_dir)
        self.policy = policy
        self.seed = seed
        self.workers = workers
        # Fixed by the caller, or by an existing folder when collect() reads its manifest; until then an
        # unset size is the default a new folder gets.
        self._shard_size_fixed = episodes_per_shard is not None
        self._episode_limit = episode_limit(spec, max_steps)
        self.episodes_per_shard = (int(episodes_per_shard) if self._shard_size_fixed
                                   else default_episodes_per_shard(self._episode_limit))
        self.env_kwargs = env_kwargs
        self.max_steps = max_steps
        self.vectorization = vectorization
        self.backend, self.ray_address = backend, ray_address
        self.observation_shape = tuple(obs_space.shape)
        self.action_space = action_space
        # Filled by collect(): shards written and the CPU seconds workers spent on them.
        self.stats: dict[str, float] = {"shards": 0, "worker_cpu_seconds": 0.0}

    @classmethod
    def from_config(cls, config: "CollectConfig") -> "DataCollector":
        """A collector for a ``wm-agent collect`` configuration.

        Args:
            config: the configuration; its 0s for ``episodes_per_shard`` and ``max_steps`` mean None.

        Returns:
            The collector.
        """
        return cls(config.env, config.out, policy=config.policy, seed=config.seed, workers=config.workers,
                   episodes_per_shard=config.episodes_per_shard or None,  # 0: sized by the env's limit
                   env_kwargs=config.env_kwargs,
                   max_steps=config.max_steps or None,  # as everywhere on the command line: 0 = the env's limit
                   vectorization=config.vectorization, pixels=config.pixels, backend=config.backend,
                   ray_address=config.ray_address, world_model=config.world_model,
                   policy_noise=config.policy_noise, greedy=config.greedy)

    # -- manifest ---------------------------------------------------------------------------------
    def _identity(self) -> dict:
        identity = {"frame_codec": CODEC, "env_id": self.env_id, "env_kwargs": self.env_kwargs, "policy": self.policy,
                    "seed": self.seed, "episodes_per_shard": self.episodes_per_shard, "max_steps": self.max_steps}
        if self.policy_options is not None:  # the driver by its bytes, not its path: a moved checkpoint is the same
            options = self.policy_options
            identity["policy_options"] = {"world_model_sha256": options["sha256"], "noise": options["noise"],
                                          "greedy": options["greedy"]}
        return identity

    def _new_manifest(self, shards: list[dict]) -> dict:
        extra = {} if self.policy_options is None else {"policy_world_model": self.policy_options["world_model"]}
        manifest = {"format": MANIFEST_FORMAT, **self._identity(), **extra,
                    "observation_shape": list(self.observation_shape), "observation_dtype": "uint8",
                    "action_space": describe_space(self.action_space), "shards": []}
        _set_shards(manifest, shards)
        return manifest

    def _check_existing_manifest(self) -> None:
        """Refuse to mix data: an existing manifest must agree on everything that shapes the shards."""
        path = self.out_dir / MANIFEST
        if not path.exists():
            if any(_SHARD_RE.match(p.name) for p in self.out_dir.iterdir()):
                raise ValueError(
                    f"{self.out_dir} holds shard folders but no {MANIFEST}, so their settings are unknown; "
                    "collect into an empty folder"
                )
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        if not isinstance(old, dict):
            raise ValueError(f"{path} is not a wm-agent manifest")  # noqa: TRY004 (every bad manifest is a ValueError)
        if not self._shard_size_fixed and is_int(old.get("episodes_per_shard")) and old["episodes_per_shard"] >= 1:
            self.episodes_per_shard = int(old["episodes_per_shard"])  # e.g. made before the default changed
            self._shard_size_fixed = True
        mine = self._identity()
        diffs = [f"{k}: {old.get(k)!r} there, {mine.get(k)!r} now" for k in IDENTITY_KEYS
                 if old.get(k) != mine.get(k)]
        if diffs:
            raise ValueError(
                f"{self.out_dir} already holds data collected with different settings ({'; '.join(diffs)}); "
                "use another --out folder, or delete this one to start over"
            )

    def _scan(self) -> dict[int, dict]:
        """Finished shards on disk by index, after deleting a crashed run's temporary folders."""
        found = {}
        for path in self.out_dir.iterdir():
            if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)) and path.is_dir():
                shutil.rmtree(path)
                continue
            match = _SHARD_RE.match(path.name)
            if match and path.is_dir():
                entry = self._finished_shard(path)
                if entry is not None:
                    found[int(match.group(1))] = entry
        return found

    def _finished_shard(self, folder: Path) -> dict | None:
        """The manifest entry of a valid shard folder, or None if it must be collected again (its
        files were cut short, e.g. by a machine crash before the main process synced them)."""
        try:
            arrays = open_shard(folder, self.observation_shape, self.action_space)
        except (FileNotFoundError, ValueError):
            return None
        lengths = arrays["lengths"]
        return _shard_entry(folder.name, len(lengths), int(lengths.sum()))

    # -- running --------------------------------------------------------------------------------
    def collect(self, episodes: int, progress: bool = True) -> dict:
        """Make sure the folder holds the first ``episodes`` episodes.

        Shards already on disk with (at least) their planned episodes are skipped, so re-running an
        interrupted command resumes it. Shards beyond the plan are kept and listed.

        Args:
            episodes: how many episodes the folder should hold (a positive int).
            progress: show a progress bar.

        Returns:
            The manifest, as written to the folder.
        """
        if not is_int(episodes) or episodes < 1:
            raise ValueError(f"{_named('episodes')} must be a positive int, got {episodes!r}")
        episodes = int(episodes)
        from wm_agent.io import make_folder, save_json

        self.stats = {"shards": 0, "worker_cpu_seconds": 0.0}
        make_folder(self.out_dir)
        self._check_existing_manifest()
        finished = self._scan()
        manifest = self._new_manifest(list(finished.values()))
        save_json(manifest, self.out_dir / MANIFEST)

        plan = [(i, min(self.episodes_per_shard, episodes - i * self.episodes_per_shard))
                for i in range(math.ceil(episodes / self.episodes_per_shard))]
        tasks = [
            _ShardTask(i, n, str(self.out_dir), self.env_id, self.env_kwargs, self.policy, self.seed,
                       self.episodes_per_shard, self.max_steps, self.policy_options)
            for i, n in plan
            if finished.get(i, {}).get("episodes", 0) < n
        ]
        if not tasks:
            return manifest
        if len(plan) < self.workers:
            # A shard is one worker's unit of work: fewer shards than workers leaves workers idle.
            why = "" if self._shard_size_fixed else (
                f" (the default for episodes of up to {self._episode_limit} steps: few shard files, but little "
                "parallelism for a small collection)")
            warnings.warn(
                f"{episodes} episodes make {len(plan)} shard{'s' * (len(plan) != 1)} of up to "
                f"{self.episodes_per_shard} episodes{why}, so only {len(plan)} of {self.workers} workers can run; "
                "fewer episodes per shard (episodes_per_shard, "
                "--episodes-per-shard) would use them all", stacklevel=2)

        def record(entries: list[dict]) -> None:
            for entry in entries:
                self.stats["shards"] += 1
                self.stats["worker_cpu_seconds"] += entry.pop("cpu_seconds", 0.0)  # worker processes report it
                finished[int(_SHARD_RE.match(entry["name"]).group(1))] = entry
            _set_shards(manifest, list(finished.values()))
            save_json(manifest, self.out_dir / MANIFEST)

        bar = progress_bar(desc=f"collect {self.env_id}", unit="frame", unit_scale=True, disable=not progress,
                           dynamic_ncols=True)
        syncer = _ShardSyncer(self.out_dir, record)
        try:
            if self.vectorization != "processes":
                self._run_vector(tasks, syncer.submit, bar)
            elif self.backend == "local" and (self.workers == 1 or len(tasks) == 1):
                self._run_here(tasks, syncer.submit, bar)
            else:
                self._run_pool(tasks, syncer.submit, bar)
        finally:
            bar.close()
            sync_error = syncer.close()  # finished shards still reach the manifest if a worker failed
            if self.policy_options is not None:
                from wm_agent.data.controller_policy import forget_drivers

                forget_drivers()
        if sync_error is not None:
            raise sync_error
        return manifest

    def _run_here(self, tasks: list[_ShardTask], record, bar) -> None:
        total_episodes = sum(t.episodes for t in tasks)
        done_frames = done_episodes = 0

        def on_progress(frames: int, eps: int) -> None:  # totals within the current shard
            bar.update(done_frames + frames - bar.n)
            bar.set_postfix_str(f"episodes {done_episodes + eps}/{total_episodes}", refresh=False)

        try:
            for task in tasks:
                try:
                    entry = _collect_shard(task, on_progress)
                except Exception as exc:
                    raise _shard_failed(task, exc) from exc
                record(entry)
                done_frames += entry["frames"]
                done_episodes += entry["episodes"]
        finally:
            _close_cached_envs()

    def _run_pool(self, tasks: list[_ShardTask], record, bar) -> None:
        total_episodes = sum(t.episodes for t in tasks)
        # Shard i's running frames and episodes go to counters 2i and 2i+1.
        pool = make_pool(self.backend, min(self.workers, len(tasks)), address=self.ray_address,
                         context=_mp_context() if self.backend == "local" else None,
                         counters=2 * (max(t.index for t in tasks) + 1))
        # Workers that may not see this machine's files (a Ray cluster's) send each shard back instead.
        collect_shard = _collect_shard if pool.same_filesystem else _collect_shard_for_driver
        # Two tasks per worker in flight, the next submitted as one finishes: with every task submitted
        # at once, each wait() below walked all of them, and with hundreds of small shards that main-
        # process work took CPU from the workers.
        backlog = iter(tasks)
        running: dict = {}  # a submitted task's handle -> its shard

        def submit(count: int) -> None:
            shards = list(itertools.islice(backlog, count))
            running.update(zip(pool.submit_all(collect_shard, [(task,) for task in shards]), shards))

        done_frames = done_episodes = 0
        try:
            submit(2 * self.workers)  # the workers start here; Ctrl-C reaches them through pool.kill
            while running:
                done, _ = pool.wait(running, timeout=0.25)
                for handle in done:
                    task = running.pop(handle)
                    try:
                        entry = pool.result(handle)
                    except WorkerDied as exc:
                        raise CollectionError(
                            f"a worker process died while collecting {shard_name(task.index)} ({exc.reason}); "
                            f"finished shards are kept in {self.out_dir}: re-run the same command to resume"
                        ) from exc
                    except Exception as exc:
                        raise _shard_failed(task, exc, " in a worker") from exc
                    if "files" in entry:  # sent back by a worker that may not see this folder
                        entry = _place_shard(self.out_dir, entry)
                    record(entry)
                    done_frames += entry["frames"]
                    done_episodes += entry["episodes"]
                    submit(1)
                # In-flight shards report running totals through the counters: no per-step messages.
                counts = pool.counters()
                frames = done_frames + sum(counts[2 * t.index] for t in running.values())
                eps = done_episodes + sum(counts[2 * t.index + 1] for t in running.values())
                bar.update(frames - bar.n)
                bar.set_postfix_str(f"episodes {eps}/{total_episodes}")
        except BaseException:
            pool.kill(grace=10)  # SIGTERM, then SIGKILL for a worker that ignores it for 10 s
            _remove_temporary(self.out_dir)
            raise
        finally:
            pool.close()

    def _run_vector(self, tasks: list[_ShardTask], record, bar) -> None:
        """The ``async``/``sync`` vectorizations: one vector env of ``workers`` sub-envs (``run_vector``)."""
        run_vector(tasks, record, bar, env_id=self.env_id, env_kwargs=self.env_kwargs, workers=self.workers,
                   vectorization=self.vectorization, observation_shape=self.observation_shape,
                   action_space=self.action_space)
