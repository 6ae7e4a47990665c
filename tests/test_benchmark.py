"""The benchmarks count what they time (the figures themselves are measured, not tested)."""

from __future__ import annotations

import pytest

from wm_agent.commands.benchmark import (
    BenchmarkActionRepeatConfig,
    BenchmarkDreamConfig,
    BenchmarkTrainConfig,
    benchmark_action_repeat,
    benchmark_dream,
    benchmark_train,
)
from wm_agent.world_model import WorldModel


def test_benchmark_train_times_every_batch_it_counts_even_past_one_epoch(monkeypatch):
    """With fewer frames than --images, wm-agent's loop must go round the data again, not stop after one
    pass while the images/s divides all of --images by that shorter time (a ratio of 1.4 came from that)."""
    consumed = []
    real_fit_vae = WorldModel.fit_vae

    def counting_fit_vae(wm, batches, *args, **kwargs):
        def counted(rng):
            for batch in batches(rng):
                consumed.append(len(batch))
                yield batch
        return real_fit_vae(wm, counted, *args, **kwargs)

    monkeypatch.setattr(WorldModel, "fit_vae", counting_fit_vae)
    cfg = BenchmarkTrainConfig(batch_size=16, images=16 * 12, episodes=2)  # ~60 frames: 3 batches a pass
    result = benchmark_train(cfg, verbose=False)
    assert result["images"] == 16 * 12
    # Two runs of the loop, each: 5 warm-up batches + the 12 timed ones, all full batches.
    assert consumed == [16] * (2 * (5 + 12))
    assert result["ratio"] > 0


def test_benchmark_train_refuses_data_smaller_than_a_batch():
    with pytest.raises(ValueError, match="fewer than one batch of 4096: use more episodes"):
        benchmark_train(BenchmarkTrainConfig(batch_size=4096, images=4096, episodes=1), verbose=False)


def test_benchmark_dream_runs_on_the_device_asked_and_refuses_an_unknown_one():
    result = benchmark_dream(BenchmarkDreamConfig(num_envs=2, dream_steps=1, real_steps=1, device="cpu"), verbose=False)
    assert result["device"] == "cpu" and result["dream_carracing_steps_per_s"] > 0
    with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N"):
        benchmark_dream(BenchmarkDreamConfig(device="tpu"), verbose=False)
    with pytest.raises(ValueError, match="--device"):
        benchmark_train(BenchmarkTrainConfig(device="gpu"), verbose=False)


def test_benchmark_action_repeat_counts_frames_and_decisions_per_k(monkeypatch):
    """k frames per decision: a k = 4 row's decisions/s is its frames/s over 4, every k timed each round."""
    timed = []
    monkeypatch.setattr("wm_agent.commands.benchmark._repeat_round",
                        lambda k, frames, seed: timed.append((k, seed)) or frames / 100.0)
    result = benchmark_action_repeat(BenchmarkActionRepeatConfig(repeats=[1, 4], frames=8, rounds=2), verbose=False)
    assert sorted(timed) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    one, four = result["repeats"]
    assert one["frames_per_s"] == pytest.approx(100.0) and four["decisions_per_s"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="--repeats"):
        benchmark_action_repeat(BenchmarkActionRepeatConfig(repeats=[0]), verbose=False)


def test_benchmark_action_repeat_steps_the_real_env():
    result = benchmark_action_repeat(BenchmarkActionRepeatConfig(repeats=[2], frames=4, rounds=1), verbose=False)
    assert result["repeats"][0]["frames_per_s"] > 0
