"""The demo end to end at a tiny size: every stage runs and every promised output is written."""

import dataclasses
import json
import math

import pytest

from wm_agent.data.dataset import EpisodeDataset
from wm_agent.commands.demo import DemoConfig, run_demo

OUTPUTS = ["reconstruction_gridworld.png", "training_curves_gridworld.png", "dream_sequence_gridworld.png",
           "real_vs_dream_gridworld.png", "world_model_gridworld.pt", "episode_real_vs_dream_gridworld.mp4",
           "episode_dream_gridworld.mp4", "summary.json"]
KEYS = ["vae_mse", "codebook_perplexity", "dream_fidelity_steps", "success_rate", "mean_return", "oracle_return",
        "real_env_steps_used", "wall_time_s", "dream_return", "random_dream_return", "random_mean_return",
        "random_success_rate", "random_return_vs_oracle"]


def test_tiny_demo_writes_every_output(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "results"), train_episodes=12, heldout_episodes=4, vae_epochs=1,
                     rnn_epochs=1, rnn_batch_size=4, popsize=4, rollouts=2, generations=2, eval_episodes=4,
                     workers=1, progress=False)
    run_demo(cfg)
    out = tmp_path / "results"
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "summary.json").read_text())
    for key in KEYS:
        assert math.isfinite(saved[key]), key
    assert saved["controller_trained_in"] == "dream" and saved["controller_generations"] == 2
    assert saved["eval_episodes"] == 4 and 0.0 <= saved["success_rate"] <= 1.0
    assert 0.0 <= saved["random_success_rate"] <= 1.0 and saved["cpu_capability"]
    # Only the random data touched the real env: as many steps as the training shards hold.
    assert saved["real_env_steps_used"] == EpisodeDataset(out / "data" / "train").num_steps > 0

    # A re-run with another setting: the advice fits the demo, which has no --overwrite or --resume.
    for change, said in (({"rnn_batch_size": 2}, "--rnn-batch-size 4, not --rnn-batch-size 2"),
                         ({"popsize": 6}, "--popsize 4, not --popsize 6")):
        with pytest.raises(ValueError, match="holds a demo run made with other settings") as info:
            run_demo(dataclasses.replace(cfg, **change))
        message = str(info.value)
        assert said in message and "another --out" in message and "--overwrite" not in message, message
