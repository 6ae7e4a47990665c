"""Draws through wm_agent.sampling: on CPU they are torch's own draws, so seeded streams do not change."""

from __future__ import annotations

import torch

from wm_agent.sampling import multinomial, rand, randn


def test_cpu_draws_are_torchs_own():
    probs = torch.softmax(torch.randn(64, 5, generator=torch.Generator().manual_seed(1)), -1)
    like = torch.zeros(3, dtype=torch.float64)
    cases = [(lambda g: multinomial(probs, g), lambda g: torch.multinomial(probs, 1, generator=g).squeeze(-1)),
             (lambda g: randn((64, 3), g, like), lambda g: torch.randn(64, 3, generator=g, dtype=torch.float64)),
             (lambda g: rand((64, 3), g, like), lambda g: torch.rand(64, 3, generator=g, dtype=torch.float64))]
    for ours, torchs in cases:
        a, b = ours(torch.Generator().manual_seed(7)), torchs(torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and a.device == like.device
        assert not torch.equal(a, ours(torch.Generator().manual_seed(8)))
    assert multinomial(probs, None).shape == (64,) and ((0 <= rand(5, None, like)) & (rand(5, None, like) < 1)).all()


def test_episode_uniforms_follow_the_episode_not_the_batch():
    from wm_agent.sampling import EpisodeUniforms

    wide, narrow = EpisodeUniforms([5, 6, 7], block=256), EpisodeUniforms([6], block=3)
    for t in range(10):  # crosses the narrow one's block boundaries
        a, b = wide.at(t, [1]), narrow.at(t, [0])
        assert torch.equal(a, b) and 0 <= float(a) < 1
    same = EpisodeUniforms([6, 6]).at(0, [0, 1])
    assert same[0] == same[1]  # one reset seed, one stream: common random numbers
    assert EpisodeUniforms([5]).at(0, [0]) != EpisodeUniforms([6]).at(0, [0])
