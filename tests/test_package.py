"""The package's top level: the names users of the original design look for, without paying for torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_world_model

import wm_agent

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, module", sorted(wm_agent._EXPORTS.items()))
def test_each_public_name_is_the_modules_own(name, module):
    import importlib

    assert getattr(wm_agent, name) is getattr(importlib.import_module(f"wm_agent.{module}"), name)
    assert name in wm_agent.__all__ and name in dir(wm_agent)


def test_all_lists_exactly_the_public_names():
    assert sorted(wm_agent.__all__) == sorted(["__version__", *wm_agent._EXPORTS])


def test_import_wm_agent_registers_envs_but_does_not_import_torch():
    code = ("import sys, gymnasium as gym, wm_agent\n"
            "print('torch' in sys.modules, 'WM-GridWorld-v0' in gym.registry)\n"
            "wm_agent.WorldModel\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_envs_stands_alone_and_wm_agent_registers_its_own_dream():
    """`import envs` registers the envs it holds and names no wm_agent module; `import wm_agent` adds the dream."""
    code = ("import sys, gymnasium as gym, envs\n"
            "print(sorted(i for i in gym.registry if i.startswith('WM-')), 'wm_agent' in sys.modules)\n"
            "import wm_agent\n"
            "wm_agent._register_dream()  # idempotent\n"
            "print(gym.spec('WM-Dream-v0').entry_point, gym.spec('WM-Dream-v0').vector_entry_point)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['WM-CarRacing-v0', 'WM-GridWorld-v0', 'WM-Pixels-v0'] False",
        "wm_agent.dream_env:DreamEnv wm_agent.dream_env:DreamVectorEnv",
    ]


def test_a_users_own_envs_package_is_named_when_it_hides_ours(tmp_path):
    """RL projects often have an envs/ folder; run from there, `import envs` would be theirs and nothing registered."""
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("")
    result = subprocess.run([sys.executable, "-c", "import wm_agent"], capture_output=True, text=True,
                            cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert f"'import envs' found {tmp_path / 'envs'}" in result.stderr
    assert "Rename that package, or run from another folder" in result.stderr


def test_submodules_load_on_first_use_and_unknown_names_fail_plainly():
    assert wm_agent.world_model.WorldModel is wm_agent.WorldModel
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        wm_agent.nope  # noqa: B018
    with pytest.raises(AttributeError):
        wm_agent._private  # noqa: B018


README_CHECKPOINT = "world_model_results/world_model_gridworld.pt"


def test_the_readmes_python_examples_run(tmp_path):
    """Every ```python block of the README, run as written (with a tiny checkpoint where it loads the demo's)."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    assert len(blocks) >= 2 and any(README_CHECKPOINT in b for b in blocks)
    (tmp_path / README_CHECKPOINT).parent.mkdir()
    tiny_world_model().save(tmp_path / README_CHECKPOINT)
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(blocks) + "\nprint('README examples ran')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("README examples ran")
