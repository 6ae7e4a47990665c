"""The ray backend (``--backend ray``): the same results as the local pool for a seed (shards, evaluation, a
real-env CMA-ES search), a lost worker's task run again, progress counters, stopping, and the error a missing
Ray gives.

One local Ray session (2 CPUs, loopback only) serves the whole module. Without Ray installed the tests that
need it are skipped (the ``ray_session`` fixture), and the missing-Ray error is still checked."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import tiny_world_model
from wm_agent.backends import make_pool
from wm_agent.data.collect import DataCollector
from wm_agent.ray_pool import INSTALL_RAY, RayNotInstalled
from wm_agent.workers import WorkerDied, WorkerTimeout
from wm_agent.world_model import WorldModel

import pool_tasks

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_session():
    # Ray's processes inherit this environment: its workers import the test modules (pool_tasks, dying_env) by
    # name, and every Ray process listens on loopback only (Ray's own switch for single-machine use).
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        ray = pytest.importorskip("ray")  # read by ray's constants when it is first imported, here
        # "local": a Ray of its own, even where a `ray start` cluster runs on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    yield ray
    ray.shutdown()


# -- the same results as the local backend -------------------------------------------------------------
def _collect(out: Path, backend: str, env: str = "WM-GridWorld-v0", env_kwargs: dict | None = None) -> dict:
    collector = DataCollector(env, out, seed=7, workers=2, episodes_per_shard=4, env_kwargs=env_kwargs,
                              backend=backend)
    return collector.collect(10, progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_collects_the_local_backends_shards(ray_session, tmp_path):
    manifest = _collect(tmp_path / "ray", "ray")
    assert manifest == _collect(tmp_path / "local", "local") and len(manifest["shards"]) == 3
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")  # the manifest and every shard file, byte for byte


def test_a_worker_lost_mid_shard_is_retried_and_the_shards_stay_the_same(ray_session, tmp_path):
    # The env kills its process mid-episode the first time it is stepped anywhere (the marker records it).
    marker = tmp_path / "died"
    kwargs = {"marker": str(marker)}
    manifest = _collect(tmp_path / "ray", "ray", "dying_env:DieOnceGridWorld-v0", kwargs)
    assert marker.exists()  # a worker did die, and its shard was collected again
    assert not [p for p in (tmp_path / "ray").iterdir() if p.name.startswith(".")]  # no half-written shard
    assert manifest == _collect(tmp_path / "local", "local", "dying_env:DieOnceGridWorld-v0", kwargs)
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")


def test_ray_evaluates_as_the_local_backend(ray_session, tmp_path):
    from wm_agent.commands.evaluate import EvaluateConfig, evaluate

    path = tmp_path / "wm.pt"
    tiny_world_model().save(path)
    cfg = dict(checkpoint=str(path), episodes=4, workers=2, max_steps=10, progress=False)
    assert evaluate(EvaluateConfig(**cfg, backend="ray")) == evaluate(EvaluateConfig(**cfg))


def _real_search(path: Path, backend: str) -> tuple[dict, dict]:
    """A tiny real-env CMA-ES search from the checkpoint at ``path`` (changed in place): its log and saved state."""
    from wm_agent.commands.train_controller import ControllerTrainConfig, train_controller

    cfg = ControllerTrainConfig(world_model=str(path), where="real", popsize=4, rollouts=2, generations=2, workers=2,
                                max_steps=10, progress=False, device="cpu", backend=backend)
    log = train_controller(cfg)["log"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in log], WorldModel.load(path).train_state["cmaes"]


def test_a_real_env_search_on_ray_follows_the_local_trajectory(ray_session, tmp_path):
    for backend in ("ray", "local"):
        tiny_world_model().save(tmp_path / f"{backend}.pt")
    ray_log, ray_state = _real_search(tmp_path / "ray.pt", "ray")
    local_log, local_state = _real_search(tmp_path / "local.pt", "local")
    assert ray_log == local_log and len(ray_log) == 2
    for key in ("told", "mean", "best_params"):  # every fitness told to CMA-ES, and where the search went
        assert torch.equal(ray_state[key], local_state[key]), key


# -- the pool itself -----------------------------------------------------------------------------------
def test_a_task_whose_worker_dies_runs_again_within_the_retry_bound(ray_session, tmp_path):
    pool = make_pool("ray", 2)
    try:
        marker = tmp_path / "died"
        tasks = pool.submit_all(pool_tasks.die_once, [(str(marker), "retried"), (str(tmp_path / "x"), "other")])
        assert pool.results(tasks, timeout=120) == ["retried", "other"]  # in submission order
        assert marker.exists()
    finally:
        pool.close()
    from wm_agent.ray_pool import RayPool

    pool = RayPool(1, max_retries=0)
    try:
        with pytest.raises(WorkerDied, match="WorkerCrashedError"):
            pool.result(pool.submit(pool_tasks.die_once, str(tmp_path / "again"), None))
        with pytest.raises(ValueError, match="boom"):  # a task's own error is raised again, not retried
            pool.result(pool.submit(pool_tasks.fail, "boom"))
    finally:
        pool.close()


def _wait_for_counters(pool, expected: list[int]) -> list[int]:
    deadline = time.monotonic() + 60
    while pool.counters() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return pool.counters()


def test_counters_a_timeout_and_a_kill_that_interrupts_the_running_task(ray_session, tmp_path):
    pool = make_pool("ray", 2, counters=4)
    marker = tmp_path / "interrupted"
    try:
        task = pool.submit(pool_tasks.report_then_spin, 1, [5, 6], str(marker))
        assert _wait_for_counters(pool, [0, 5, 6, 0]) == [0, 5, 6, 0]  # the task runs, and said so
        with pytest.raises(WorkerTimeout):
            list(pool.as_completed([task], timeout=0.2))
        started = time.monotonic()
        pool.kill(grace=30)
        # Interrupted as Ctrl-C would (so a shard's temporary files are removed), not killed after the grace.
        assert marker.exists() and time.monotonic() - started < 30
        with pytest.raises(WorkerDied, match="cancelled"):
            pool.result(task)
    finally:
        pool.close()


def test_the_local_pool_shares_its_counters_too(tmp_path):
    pool = make_pool("local", 1, counters=3)
    try:
        pool.submit(pool_tasks.report_then_spin, 0, [7], str(tmp_path / "unused"), 600)
        assert _wait_for_counters(pool, [7, 0, 0]) == [7, 0, 0]
    finally:
        pool.kill()


# -- without Ray ---------------------------------------------------------------------------------------
def test_a_missing_ray_names_the_extra_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(RayNotInstalled, match=f"not installed.*{re.escape(INSTALL_RAY)}") as info:
        make_pool("ray", 2)
    assert isinstance(info.value, ImportError)
    from wm_agent.cli import main

    assert main(["collect", "--out", str(tmp_path / "data"), "--episodes", "2", "--backend", "ray",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert INSTALL_RAY in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # said before anything was written
    tiny_world_model().save(tmp_path / "wm.pt")
    before = (tmp_path / "wm.pt").read_bytes()
    assert main(["train-controller", "--world-model", str(tmp_path / "wm.pt"), "--in", "real", "--backend", "ray",
                 "--no-progress"]) == 1
    assert INSTALL_RAY in capsys.readouterr().err and (tmp_path / "wm.pt").read_bytes() == before


def test_train_controller_takes_the_ray_backend_only_where_it_has_workers(tmp_path):
    from wm_agent.commands.train_controller import ControllerTrainConfig, train_controller

    path = str(tmp_path / "wm.pt")
    with pytest.raises(ValueError, match="needs --in real"):
        train_controller(ControllerTrainConfig(world_model=path, backend="ray"))
    with pytest.raises(ValueError, match="--backend is a setting of --algo cmaes"):
        train_controller(ControllerTrainConfig(world_model=path, where="real", algo="pg", backend="ray"))
