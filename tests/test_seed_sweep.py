"""wm-agent benchmark seeds: parsing, the table, reuse of finished runs and a failed run's message."""

import json

import pytest

from wm_agent.cli import main
from wm_agent.commands.seed_sweep import (COLUMNS, BenchmarkSeedsConfig, benchmark_seeds, parse_kernels, parse_seeds,
                                         passes)


def _summary(success: float, vs_oracle: float) -> dict:
    summary = {key: 1.0 for key, _, _ in COLUMNS}
    summary.update(success_rate=success, return_vs_oracle=vs_oracle, real_env_steps_used=25_000,
                   cpu_capability="AVX2")
    return summary


@pytest.mark.parametrize(("text", "seeds"), [("0-4", [0, 1, 2, 3, 4]), ("3", [3]), ("0,3,7", [0, 3, 7]),
                                             ("2-2", [2])])
def test_seeds_parse(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "4-2", "-1", "1-", "0,,1"])
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError, match="--seeds"):
        parse_seeds(text)


def test_kernels_parse_and_unknown_ones_are_refused():
    assert parse_kernels("default, avx2") == ["default", "avx2"]
    with pytest.raises(ValueError, match="--kernels must list some of default, avx2, avx512"):
        parse_kernels("avx2,sse")


def test_the_bar_is_both_success_and_return():
    assert passes(_summary(0.95, 0.90)) and not passes(_summary(0.94, 0.99)) and not passes(_summary(1.0, 0.89))


def test_finished_runs_are_reused_and_tabled_with_their_spread(tmp_path, capsys):
    for seed, success in ((0, 0.97), (1, 0.5)):
        folder = tmp_path / f"avx2_seed{seed}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(_summary(success, 0.93)))
    result = benchmark_seeds(BenchmarkSeedsConfig(seeds="0-1", kernels="avx2", out=str(tmp_path), progress=False))
    assert result["passed"] == 1 and result["total"] == 2
    rows = result["table"].splitlines()
    assert rows[2].startswith("| avx2 (AVX2) | 0 | 0.970 |") and rows[2].endswith("| yes |")
    assert rows[3].endswith("| NO |")
    assert [row.split(" | ")[0] for row in rows[4:]] == ["| min", "| median", "| max"]
    assert rows[5].split(" | ")[2] == "0.735"  # the median success of 0.97 and 0.5
    assert "1 of 2 runs reach" in (tmp_path / "sweep.md").read_text()
    assert json.loads((tmp_path / "sweep.json").read_text())["passed"] == 1
    assert "avx2 seed 1: success 0.500" in capsys.readouterr().out


def test_a_failed_demo_names_its_log(tmp_path, capsys):
    # A file where the run's demo folder would go: the demo refuses it, the sweep says where to look.
    (tmp_path / "default_seed0").write_text("not a folder")
    assert main(["benchmark", "seeds", "--seeds", "0", "--kernels", "default", "--out", str(tmp_path),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the demo for seed 0 under the default kernels failed" in err and "default_seed0.log" in err
    assert (tmp_path / "default_seed0.log").read_text()
