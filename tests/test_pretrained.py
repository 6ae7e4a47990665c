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


@pytest.mark.parametrize("argv, said", [
    (["evaluate", "--pretrained", "carracing"], "no pretrained checkpoint named 'carracing'; the names are: gridworld"),
    (["evaluate"], "give either --checkpoint PATH or --pretrained NAME"),
    (["render", "--checkpoint", "m.pt", "--pretrained", "gridworld", "--out", "a.gif"], "give either"),
    (["play", "--pretrained", "nope"], "the names are: gridworld"),
])
def test_a_bad_choice_of_checkpoint_is_one_line(argv, said, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
