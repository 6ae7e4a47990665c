"""--pretrained NAME: checkpoints that ship with the package, for evaluate, render and play."""

import json

import pytest

from wm_agent.cli import main
from wm_agent.pretrained import CHECKPOINTS, checkpoint_path
from wm_agent.world_model import WorldModel


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_each_shipped_checkpoint_loads_with_a_trained_controller(name):
    wm = WorldModel.load(checkpoint_path(None, name))
    assert wm.is_trained("vae") and wm.is_trained("rnn") and wm.is_trained("cmaes")


def test_evaluate_the_pretrained_gridworld_agent(capsys):
    assert main(["evaluate", "--pretrained", "gridworld", "--episodes", "20", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "WM-GridWorld-v0" and result["success_rate"] >= 0.8  # the demo's agent, not a fresh one


def test_render_the_pretrained_agent_beside_its_dream(tmp_path):
    assert main(["render", "--pretrained", "gridworld", "--side-by-side", "--out", str(tmp_path / "a.gif"),
                 "--no-progress"]) == 0
    assert (tmp_path / "a.gif").stat().st_size > 0


def test_the_pretrained_carracing_agent_drives_its_env_at_its_action_repeat(capsys, tmp_path):
    """Its figure over 100 whole tracks is measured by evaluate (docs/benchmarks.md); here: it runs, on its env."""
    wm = WorldModel.load(checkpoint_path(None, "carracing"))
    assert wm.env_id == "WM-CarRacing-v0" and wm.env_kwargs == {"action_repeat": 3}  # its data: 4 (docs/benchmarks.md)
    assert main(["evaluate", "--pretrained", "carracing", "--episodes", "1", "--max-steps", "30", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["env"] == "WM-CarRacing-v0" and result["mean_steps"] == 30
    assert result["min_return"] == result["median_return"] == result["max_return"] == result["mean_return"]
    assert main(["render", "--pretrained", "carracing", "--max-steps", "5", "--out", str(tmp_path / "car.gif"),
                 "--no-progress"]) == 0
    assert (tmp_path / "car.gif").stat().st_size > 0


def test_slim_checkpoint_drops_only_the_optimizer_states(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from helpers import tiny_world_model

    wm = tiny_world_model()
    wm.train_state["vae"]["optimizer"] = {"state": {}, "param_groups": []}
    wm.save(tmp_path / "full.pt")
    script = Path(__file__).resolve().parents[1] / "scripts" / "slim_checkpoint.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "full.pt"), str(tmp_path / "slim.pt")], check=True,
                   capture_output=True)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    slim = torch.load(tmp_path / "slim.pt", weights_only=True)
    assert "optimizer" in full["train_state"]["vae"] and "optimizer" not in slim["train_state"]["vae"]
    assert all(torch.equal(full["vae"][k], slim["vae"][k]) for k in full["vae"])
    assert WorldModel.load(tmp_path / "slim.pt").is_trained("vae")


@pytest.mark.parametrize("argv, said", [
    (["evaluate", "--pretrained", "car"], "no pretrained checkpoint named 'car'; the names are: carracing, gridworld"),
    (["evaluate"], "give either --checkpoint PATH or --pretrained NAME"),
    (["render", "--checkpoint", "m.pt", "--pretrained", "gridworld", "--out", "a.gif"], "give either"),
    (["play", "--pretrained", "nope"], "the names are: carracing, gridworld"),
])
def test_a_bad_choice_of_checkpoint_is_one_line(argv, said, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
