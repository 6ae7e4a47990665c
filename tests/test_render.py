"""Figures, videos, episode recorders, `render` and `play` on a tiny untrained world model."""

from __future__ import annotations

import json
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import wm_agent  # noqa: F401
from wm_agent.config import WorldModelConfig
from wm_agent.commands.play import PlayConfig, continuous_action, run_play
from wm_agent.commands.render import RenderConfig, run_render
from wm_agent.render.episodes import record_dream_episode, record_real_episode, record_side_by_side
from wm_agent.render.figures import Visualizer
from wm_agent.render.video import compose_frame, write_video
from wm_agent.world_model import WorldModel

ENV = "WM-GridWorld-v0"


def _frames(n: int, seed: int = 0) -> np.ndarray:
    env = gym.make(ENV)
    frames = [env.reset(seed=seed + i)[0] for i in range(n)]
    env.close()
    return np.stack(frames)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    wm = WorldModel(WorldModelConfig.gridworld(channels=(4, 4, 4), hidden_size=16, head_hidden=8, context_channels=4),
                    env_id=ENV)
    wm.set_start_frames(_frames(4))
    wm.train_state = {"vae": {"epoch": 1}, "rnn": {"epoch": 1}}
    path = tmp_path_factory.mktemp("wm") / "tiny.pt"
    wm.save(path)
    return wm, path


def _png(path) -> np.ndarray:
    img = iio.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.dtype == np.uint8
    return img


# -- figures ---------------------------------------------------------------------------------------
def test_figures_survive_pygame_being_quit_and_reinitialised(tmp_path, tiny):
    """A window elsewhere in the program (render --human, play) may quit and re-init pygame; fonts
    cached before that are dead, and the next figure must not fail on them."""
    import pygame

    wm, _ = tiny
    real = _frames(2)
    vis = Visualizer(tmp_path / "figs", scale=2)
    vis.reconstruction(real, real)
    pygame.quit()
    pygame.init()
    assert _png(vis.reconstruction(real, real)).shape[0] > 2 * 128


def test_reconstruction_figure(tmp_path, tiny):
    wm, _ = tiny
    real = _frames(4)
    vis = Visualizer(tmp_path / "figs", scale=3)
    path = vis.reconstruction(real, wm.decode(wm.encode(real)))
    assert path == tmp_path / "figs" / "reconstruction_gridworld.png"
    img = _png(path)
    # two rows of 4 frames at 3x (192 px each), plus labels and title
    assert img.shape[1] > 4 * 192 and img.shape[0] > 2 * 192
    # the real frames are pasted unchanged (nearest-neighbour x3): find frame 0's top-left cell
    assert (img[..., :3] == real[0][0, 0]).all(-1).sum() > 0
    with pytest.raises(ValueError, match="same non-empty shape"):
        vis.reconstruction(real, real[:2])


def test_dream_sequence_wraps_into_rows(tmp_path, tiny):
    wm, _ = tiny
    dream = wm.dream(_frames(1)[0], np.array([1, 2, 3, 0, 1, 2, 3]))["frames"]  # 8 frames
    one_row = _png(Visualizer(tmp_path, columns=10).dream_sequence(dream, name="a.png"))
    two_rows = _png(Visualizer(tmp_path, columns=4).dream_sequence(dream, name="b.png"))
    assert one_row.shape[1] > 8 * 192 > two_rows.shape[1] > 4 * 192
    assert two_rows.shape[0] > one_row.shape[0] + 192


def test_real_vs_dream_figure(tmp_path, tiny):
    wm, _ = tiny
    ep = record_real_episode(wm, ENV, seed=3, max_steps=5)
    dream = wm.dream(ep["frames"][0], ep["actions"])["frames"]
    path = Visualizer(tmp_path).real_vs_dream(ep["frames"], dream)
    assert path.name == "real_vs_dream_gridworld.png"
    img = _png(path)
    assert img.shape[1] > len(dream) * 192 and img.shape[0] > 2 * 192
    with pytest.raises(ValueError):
        Visualizer(tmp_path).real_vs_dream(ep["frames"], dream[:-1])


def test_training_curves_from_jsonl_and_list(tmp_path):
    rows = [{"stage": "vae", "epoch": e, "recon_mse": 0.1 / e, "vq_loss": 0.01, "perplexity": 4.0, "usage": 0.5}
            for e in range(1, 6)]
    rows += [{"stage": "rnn", "epoch": e, "loss": 2.0 - e, "nll": 1.5 - e, "reward_mse": 0.1, "done_bce": 0.3}
             for e in range(1, 4)]
    jsonl = tmp_path / "ckpt.pt.metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "rnn", "ep')  # truncated last line
    log = [{"generation": g, "best": g * 0.1, "mean": g * 0.05, "worst": 0.0, "sigma": 0.1, "seconds": 1.0}
           for g in range(1, 8)]
    vis = Visualizer(tmp_path)
    path = vis.training_curves(jsonl, cmaes_log=log)
    assert path.name == "training_curves_gridworld.png"
    full = _png(path)
    assert full.shape[0] >= 300 and full.shape[1] >= 3 * 400
    empty = _png(vis.training_curves([], name="empty.png"))
    assert empty.shape == full.shape
    # drawn curves put coloured pixels on the chart; the empty figure has none of the series colours
    blue = np.array([31, 119, 180])
    assert (np.abs(full[..., :3].astype(int) - blue).sum(-1) < 10).sum() > 100
    assert (np.abs(empty[..., :3].astype(int) - blue).sum(-1) < 10).sum() == 0
    with pytest.raises(FileNotFoundError):
        vis.training_curves(tmp_path / "missing.jsonl")


def test_line_chart_draws_each_series_and_refuses_mismatched_lengths(tmp_path):
    vis = Visualizer(tmp_path)
    path = vis.line_chart([("training", [0, 1e6, 2e6], [-50.0, 100.0, 300.0]), ("whole tracks", [2e6], [250.0])],
                          "real frames", "learning curve", name="curve.png")
    img = _png(path)
    assert path.name == "curve.png" and img.shape[1] >= 760
    for colour in ((31, 119, 180), (214, 39, 40)):  # both series drawn
        assert (np.abs(img[..., :3].astype(int) - np.array(colour)).sum(-1) < 10).sum() > 10
    with pytest.raises(ValueError, match="one length"):
        vis.line_chart([("bad", [0, 1], [1.0])], "x", "t")


def test_training_curves_count_values_that_are_not_finite_instead_of_dropping_them_unseen(tmp_path):
    from wm_agent.render.figures import _legend, _points, _series

    rows = [{"stage": "rnn", "epoch": 1, "loss": 2.0}, {"stage": "rnn", "epoch": 2, "loss": float("nan")},
            {"stage": "rnn", "epoch": 3, "loss": None}, {"stage": "rnn", "epoch": 4, "loss": 1.5},
            {"stage": "rnn", "epoch": 5, "loss": float("inf")}]
    xs, ys = _series(rows, "rnn", "loss")
    assert xs.tolist() == [1, 2, 4, 5]  # the absent value is skipped; NaN and inf are kept, to be counted
    assert _legend("loss", ys) == "loss: 1.50 (2 not finite)"
    assert _legend("loss", np.array([0.25])) == "loss: 0.2500"
    assert _legend("best", np.array([np.nan, np.nan])) == "best: - (2 not finite)"
    gens, best = _points(np.arange(1.0, 4.0), [0.5, None, np.nan])
    assert gens.tolist() == [1.0, 3.0] and best[0] == 0.5 and np.isnan(best[1])
    log = [{"generation": 1, "best": float("nan"), "mean": float("nan")}]  # only non-finite values: still a figure
    path = Visualizer(tmp_path).training_curves(rows, cmaes_log=log, name="nan.png")
    assert _png(path).shape[1] >= 4 * 400


def test_training_curves_draw_m_loss_and_nll_apart_and_take_odd_rows(tmp_path):
    """M's loss (~0.006) and NLL (~-3) on one axis drew the loss as a flat line: each gets a panel."""
    rows = [{"stage": "rnn", "epoch": e, "loss": 0.006 / e, "nll": -3.0 - e} for e in range(1, 4)]
    vis = Visualizer(tmp_path)
    four = _png(vis.training_curves(rows, cmaes_log=[{"generation": 1, "best": None, "mean": 0.5}], name="c.png"))
    assert four.shape[1] >= 4 * 400
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[1, 2]\n{"stage": "vae", "epoch": 1, "recon_mse": 0.1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 is not a metrics row"):
        vis.training_curves(bad)
    with pytest.raises(ValueError, match="figures are written as PNG"):
        vis.training_curves(rows, name="curves.jpg")


# -- video -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_write_video_frame_count_and_size(tmp_path, ext):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 33, 47, 3), dtype=np.uint8)  # odd sizes on purpose
    path = write_video(frames, tmp_path / f"clip{ext}", fps=5)
    assert path.is_file() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    back = iio.imread(path)
    assert back.shape[0] == 6
    if ext == ".gif":
        assert back.shape[1:3] == (33, 47)
    else:
        assert back.shape[1:3] == (34, 48)  # padded to even sides, not rescaled


def test_write_video_streams_an_iterable(tmp_path):
    frames = (np.full((16, 16, 3), 10 * i, np.uint8) for i in range(5))
    assert iio.imread(write_video(frames, tmp_path / "gen.mp4", fps=4)).shape == (5, 16, 16, 3)
    mixed = [np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)]
    with pytest.raises(ValueError, match="one size"):
        write_video(mixed, tmp_path / "mixed.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.mp4"]  # the failed write left nothing behind


def test_write_video_streams_a_gif_exactly(tmp_path):
    """A GIF from a generator: frames decode to the exact colours, a repeat is merged into one frame that
    plays twice as long, the animation loops; a frame of another size mid-stream leaves no file."""
    from PIL import Image

    colours = [0, 60, 60, 120, 250]  # frames 1 and 2 are the same
    frames = (np.full((8, 12, 3), (c, 255 - c, c // 2), np.uint8) for c in colours)
    path = write_video(frames, tmp_path / "gen.gif", fps=4)
    back = iio.imread(path)
    assert back.shape == (4, 8, 12, 3)
    assert [tuple(int(v) for v in f[0, 0]) for f in back] == [(c, 255 - c, c // 2) for c in (0, 60, 120, 250)]
    with Image.open(path) as gif:
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
        assert durations == [250, 500, 250, 250] and gif.info["loop"] == 0
    mixed = (np.zeros(shape, np.uint8) for shape in [(8, 8, 3), (8, 8, 3), (4, 4, 3)])
    with pytest.raises(ValueError, match="one size"):
        write_video(mixed, tmp_path / "mixed.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.gif"]


def test_write_video_rejects_bad_input(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        write_video(frames, tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="uint8"):
        write_video(frames.astype(np.float32), tmp_path / "clip.gif")
    assert not list(tmp_path.iterdir())


def test_compose_frame_sizes_and_text():
    real = _frames(1)[0]
    single = compose_frame(real, step=3, reward=-0.01, scale=4)
    both = compose_frame(real, real, step=3, reward=-0.01, scale=4)
    assert single.dtype == np.uint8 and single.shape[1] == 256 and single.shape[0] > 256
    assert both.shape == (single.shape[0], 512, 3)
    band = single.shape[0] - 256
    assert (single[:band] > 200).any()  # white text was drawn in the band
    assert np.array_equal(single[band:band + 4, :4], np.broadcast_to(real[0, 0], (4, 4, 3)))


# -- episodes --------------------------------------------------------------------------------------
def test_recorders(tiny):
    wm, _ = tiny
    real = record_real_episode(wm, ENV, seed=1, max_steps=6)
    assert real["frames"].shape[1:] == (64, 64, 3) and len(real["frames"]) == len(real["rewards"]) + 1 <= 7
    dream = record_dream_episode(wm, seed=1, temperature=1.0, max_steps=5)
    assert len(dream["frames"]) == len(dream["rewards"]) + 1 <= 6 and dream["frames"].dtype == np.uint8
    side = record_side_by_side(wm, ENV, seed=1, max_steps=4, scale=2)
    n = len(side["real"])
    assert side["frames"].shape[0] == n == len(side["dream"]) == len(side["mse"]) and side["frames"].shape[2] == 256
    # same seed, same sampling: the real episode replays identically
    assert np.array_equal(record_real_episode(wm, ENV, seed=1, max_steps=6)["frames"], real["frames"])


# -- wm-agent render -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,ext", [("real", ".mp4"), ("dream", ".gif"), ("side-by-side", ".mp4")])
def test_run_render_modes(tmp_path, tiny, mode, ext):
    _, ckpt = tiny
    out = tmp_path / f"ep{ext}"
    cfg = RenderConfig(checkpoint=str(ckpt), out=str(out), dream=mode == "dream", side_by_side=mode == "side-by-side",
                       episodes=2, max_steps=3, scale=2, fps=10)
    result = run_render(cfg)
    assert result["out"] == str(out) and result["mode"] == mode and len(result["returns"]) == 2
    video = iio.imread(out)
    assert video.shape[0] == result["frames"] and 4 <= result["frames"] <= 8  # 2 episodes of <= 3 steps
    assert video.shape[2] == (256 if mode == "side-by-side" else 128)


@pytest.mark.parametrize("progress", [True, False])
def test_run_render_shows_a_progress_bar_unless_told_not_to(tmp_path, tiny, capsys, progress):
    _, ckpt = tiny
    run_render(RenderConfig(checkpoint=str(ckpt), out=str(tmp_path / "ep.gif"), max_steps=3, scale=1,
                            progress=progress))
    err = capsys.readouterr().err
    assert ("render (real)" in err and "frame" in err) == progress


@pytest.mark.parametrize("mode", ["dream", "side_by_side"])
def test_render_refuses_to_film_a_dream_without_a_trained_m(tmp_path, tiny, mode):
    wm, _ = tiny
    v_only = tmp_path / "v_only.pt"
    saved = wm.train_state
    wm.train_state = {"vae": {"epoch": 1}}
    try:
        wm.save(v_only)
    finally:
        wm.train_state = saved
    with pytest.raises(ValueError, match=r"v_only.pt has no trained MDN-RNN: run `wm-agent train-rnn` first"):
        run_render(RenderConfig(checkpoint=str(v_only), out=str(tmp_path / "ep.gif"), max_steps=2, **{mode: True}))
    assert not (tmp_path / "ep.gif").exists()
    # The real env needs only V (and warns about the untrained controller).
    with pytest.warns(UserWarning, match="no trained controller"):
        run_render(RenderConfig(checkpoint=str(v_only), out=str(tmp_path / "real.gif"), max_steps=2, progress=False))


def test_run_render_human_and_bad_args(tmp_path, tiny, monkeypatch):
    _, ckpt = tiny
    human = RenderConfig(checkpoint=str(ckpt), human=True, max_steps=2, fps=200, out="ignored.txt")
    with pytest.raises(ValueError, match="render --human needs a display.*'dummy'.*leave out --human"):
        run_render(human)  # headless: frames shown to no one would be a silent success
    monkeypatch.setattr("wm_agent.commands.render.require_screen", lambda *a: None)  # as if there were a screen
    shown = run_render(human)
    assert shown["out"] is None and 2 <= shown["frames"] <= 3
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        run_render(RenderConfig(checkpoint=str(ckpt), out=str(tmp_path / "ep.avi")))
    with pytest.raises(ValueError, match="one of"):
        run_render(RenderConfig(checkpoint=str(ckpt), out=str(tmp_path / "ep.mp4"), dream=True, side_by_side=True))
    with pytest.raises(ValueError, match="--temperature is the dream's: add --dream or --side-by-side"):
        run_render(RenderConfig(checkpoint=str(ckpt), out=str(tmp_path / "ep.mp4"), temperature=0.5))
    assert not list(tmp_path.iterdir())


# -- wm-agent play ---------------------------------------------------------------------------------
def test_run_play_scripted(tiny):
    wm, ckpt = tiny
    # done_threshold 2: the untrained done head cannot end the dream early
    cfg = PlayConfig(checkpoint=str(ckpt), fps=200, scale=2, temperature=0.0, done_threshold=2.0)
    summary = run_play(cfg, ["right", "down", "left", "noop", "quit", "up"])
    assert summary["steps"] == 3 and summary["quit"] and summary["episodes"] == 1
    assert summary["frames"] == 4  # the first frame + one per step
    reset = run_play(cfg, ["right", "r", "up", "up"], wm=wm)
    assert reset["steps"] == 3 and reset["episodes"] == 2 and not reset["quit"] and len(reset["episode_returns"]) == 2
    real = run_play(PlayConfig(checkpoint=str(ckpt), dream=False, fps=200, scale=2), ["left", "left", "esc"])
    assert real["steps"] == 2 and abs(real["total_reward"]) > 0  # the real GridWorld charges every step
    # a dream that always ends: moves after the end are ignored until R
    ended = run_play(PlayConfig(checkpoint=str(ckpt), fps=200, scale=2, done_threshold=0.0),
                     ["up", "up", "left", "r", "down", "q"], wm=wm)
    assert ended["steps"] == 2 and ended["episodes"] == 2 and ended["quit"]
    # a threshold below 0 (every dream over after one step) and a temperature for the real env are refused
    with pytest.raises(ValueError, match="done_threshold must be a number >= 0"):
        run_play(PlayConfig(checkpoint=str(ckpt), fps=200, scale=2, done_threshold=-1.0), ["q"], wm=wm)
    with pytest.raises(ValueError, match="--temperature is the dream's"):
        run_play(PlayConfig(checkpoint=str(ckpt), dream=False, temperature=5.0), ["q"], wm=wm)
    with pytest.raises(ValueError, match="unknown key"):
        run_play(cfg, ["jump"], wm=wm)


def test_continuous_action_mapping():
    low, high = np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32)
    assert continuous_action(["left", "up"], low, high).tolist() == [-1.0, 1.0, 0.0]
    assert continuous_action(["right", "down"], low, high).tolist() == pytest.approx([1.0, 0.0, 0.8])
    assert continuous_action([], low, high).tolist() == [0.0, 0.0, 0.0]


def test_run_play_live_keyboard_path(tiny, monkeypatch):
    """The real-keyboard loop: pygame KEYDOWN events (faked) drive the dream; the window's close quits."""
    import pygame

    wm, ckpt = tiny
    batches = iter([
        [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT)],
        [],
        [pygame.event.Event(pygame.KEYDOWN, key=pygame.K_DOWN), pygame.event.Event(pygame.KEYDOWN, key=pygame.K_UP)],
        [pygame.event.Event(pygame.QUIT)],
    ])
    monkeypatch.setattr(pygame.event, "get", lambda *a, **k: next(batches, [pygame.event.Event(pygame.QUIT)]))
    monkeypatch.setattr(pygame.display, "get_driver", lambda: "x11")  # as if a screen were there
    summary = run_play(PlayConfig(checkpoint=str(ckpt), fps=200, scale=2, done_threshold=2.0), wm=wm)
    assert summary["steps"] == 3 and summary["quit"] and summary["frames"] == 4


def test_run_play_without_a_screen_says_so_instead_of_waiting(tiny):
    wm, ckpt = tiny  # the tests' SDL_VIDEODRIVER=dummy: no key can ever arrive
    with pytest.raises(ValueError, match="needs a display.*'dummy'"):
        run_play(PlayConfig(checkpoint=str(ckpt), fps=200, scale=2), wm=wm)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a folder no one can write into")
def test_a_video_that_cannot_be_written_is_refused_before_the_episode(tiny, capsys):
    _, ckpt = tiny
    from wm_agent.cli import main

    err_code = main(["render", "--checkpoint", str(ckpt), "--out", "/proc/x.mp4", "--no-progress"])
    err = capsys.readouterr().err
    assert (err_code == 1 and err.startswith("wm-agent: error: cannot write a video into /proc")
            and len(err.splitlines()) == 1)


def test_play_maps_the_arrows_to_discrete_carracing_actions(tiny, monkeypatch):
    """Up is gas and down is brake on CarRacing, as with continuous actions (GridWorld's map drove it wrong)."""
    from gymnasium.envs.box2d.car_racing import CarRacing
    from helpers import tiny_world_model

    wm = tiny_world_model(action_dim=5)
    wm.env_id, wm.env_kwargs = "WM-CarRacing-v0", {"continuous": False}
    sent = []
    step = CarRacing.step
    def recording(self, action):  # reset steps with None
        if action is not None:
            sent.append(int(action))
        return step(self, action)

    monkeypatch.setattr(CarRacing, "step", recording)
    run_play(PlayConfig(checkpoint="unused.pt", dream=False, fps=200, scale=1), ["up", "down", "left", "right", "q"],
             wm=wm)
    assert sent == [3, 4, 2, 1]


def test_play_steps_discrete_carracing_every_frame_with_noop_when_no_arrow_is_held(tiny, monkeypatch):
    """CarRacing runs in real time: with no arrow held the car still moves on (action 0), as in continuous play."""
    from gymnasium.envs.box2d.car_racing import CarRacing
    from helpers import tiny_world_model

    wm = tiny_world_model(action_dim=5)
    wm.env_id, wm.env_kwargs = "WM-CarRacing-v0", {"continuous": False}
    sent = []
    step = CarRacing.step
    def recording(self, action):
        if action is not None:
            sent.append(int(action))
        return step(self, action)

    monkeypatch.setattr(CarRacing, "step", recording)
    summary = run_play(PlayConfig(checkpoint="unused.pt", dream=False, fps=200, scale=1),
                       [["up"], "noop", [], ["left", "up"], "q"], wm=wm)
    assert sent == [3, 0, 0, 3] and summary["steps"] == 4


@pytest.mark.parametrize("dream", [True, False])
def test_play_max_steps_ends_episodes_sooner_but_never_later_than_the_env(tiny, dream):
    wm, ckpt = tiny
    kw = dict(checkpoint=str(ckpt), dream=dream, fps=200, scale=1, done_threshold=2.0)
    short = run_play(PlayConfig(**kw, max_steps=3), ["left", "right"] * 5 + ["q"], wm=wm)
    assert short["steps"] == 3  # the moves after the end wait for R
    limit = wm.episode_limit()
    long = run_play(PlayConfig(**kw, max_steps=limit + 30), ["left", "right"] * (limit + 10) + ["q"], wm=wm)
    assert long["steps"] <= limit  # GridWorld may end sooner at its goal, never past its limit


def test_render_refuses_env_with_dream_and_warns_about_fast_gifs(tiny, tmp_path):
    wm, ckpt = tiny
    with pytest.raises(ValueError, match="--env names the real env: drop it with --dream"):
        run_render(RenderConfig(checkpoint=str(ckpt), out=str(tmp_path / "d.mp4"), dream=True, env="WM-CarRacing-v0"),
                   wm=wm)
    with pytest.warns(UserWarning, match="a GIF plays at most 50 frames per second"):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "fast.gif", fps=100)


def test_the_reconstruction_figure_is_wide_enough_for_its_title(tmp_path):
    import imageio.v3 as iio

    from wm_agent.render.drawing import text_width
    from wm_agent.render.figures import _fmt

    frames = np.zeros((1, 64, 64, 3), np.uint8)
    path = Visualizer(tmp_path, scale=1).reconstruction(frames, frames)
    width = iio.imread(path).shape[1]
    assert width >= text_width(f"VQ-VAE reconstruction  (mean MSE {_fmt(0.0)})", 24)


def test_render_makes_no_output_folder_for_a_checkpoint_that_does_not_load(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_render(RenderConfig(checkpoint=str(tmp_path / "missing.pt"), out=str(tmp_path / "made" / "x.mp4")))
    assert not (tmp_path / "made").exists()


def test_videos_and_play_default_to_the_envs_own_pace():
    """As Gymnasium's RecordVideo does: CarRacing at 50 fps (8 was six times slow motion), GridWorld at 8."""
    from helpers import tiny_world_model

    from wm_agent.render.episodes import DEFAULT_FPS, env_fps

    grid = tiny_world_model()
    car = tiny_world_model(discrete_actions=False, action_dim=3, action_low=(-1, 0, 0), action_high=(1, 1, 1))
    car.env_id = "WM-CarRacing-v0"
    assert env_fps(grid) == 8 and env_fps(car) == 50 and env_fps(grid, "WM-CarRacing-v0") == 50
    grid.env_id = None  # a model that names no env: the default pace
    assert env_fps(grid) == DEFAULT_FPS
    car.env_kwargs = {"action_repeat": 4}  # one observed frame per 4 physics frames: real time is 50 / 4
    assert env_fps(car) == 12.5
    assert RenderConfig(checkpoint="x.pt").fps == 0 and PlayConfig(checkpoint="x.pt").fps == 0
