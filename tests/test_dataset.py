"""EpisodeDataset: indexing over shards, batches, views, and refusing damaged data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces

from wm_agent.data.collect import DataCollector
from wm_agent.data.dataset import EpisodeDataset
from wm_agent.data.frames import BLOB, OFFSETS, CompressedFrames

KEYS = ("actions", "rewards", "terminated", "truncated")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    DataCollector("WM-GridWorld-v0", out, seed=5, episodes_per_shard=3, max_steps=10).collect(8, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(root) -> dict[str, np.ndarray]:
    """Every array concatenated over the shards in order, read plainly with np.load."""
    shards = sorted(root.glob("shard_*"))
    assert len(shards) == 3
    arrays = {key: np.concatenate([np.load(s / f"{key}.npy") for s in shards]) for key in (*KEYS, "lengths")}
    arrays["obs"] = np.concatenate([
        CompressedFrames(np.load(s / f"{BLOB}.npy"), np.load(s / f"{OFFSETS}.npy"), (64, 64, 3), s)[:] for s in shards])
    return arrays


@pytest.fixture
def damaged(root, tmp_path) -> Path:
    """A private copy of the dataset to break."""
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_sizes_offsets_and_metadata(root, reference):
    ds = EpisodeDataset(root)
    lengths = reference["lengths"]
    assert ds.num_episodes == 8 and ds.env_id == "WM-GridWorld-v0"
    assert ds.num_steps == lengths.sum() == len(reference["actions"])
    assert ds.num_frames == len(reference["obs"]) == lengths.sum() + 8
    np.testing.assert_array_equal(ds.lengths, lengths)
    np.testing.assert_array_equal(ds.step_offsets, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    np.testing.assert_array_equal(ds.frame_offsets, np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]))
    assert ds.action_space == spaces.Discrete(4)
    assert ds.observation_shape == (64, 64, 3)


def test_frames_gathers_in_the_requested_order_across_shards(root, reference):
    ds = EpisodeDataset(root)
    rng = np.random.default_rng(0)
    indices = rng.integers(0, ds.num_frames, size=50)
    indices[:3] = [ds.num_frames - 1, 0, ds.num_frames - 1]  # both ends, and a repeat
    batch = ds.frames(indices)
    assert batch.dtype == np.uint8 and batch.shape == (50, 64, 64, 3)
    np.testing.assert_array_equal(batch, reference["obs"][indices])
    assert ds.frames(np.array([], np.int64)).shape == (0, 64, 64, 3)
    with pytest.raises(IndexError):
        ds.frames([ds.num_frames])
    with pytest.raises(ValueError, match="1-D integer"):
        ds.frames(np.array([0.5]))


def test_episode_returns_aligned_views(root, reference):
    ds = EpisodeDataset(root)
    for i in (0, 3, 7, -1):
        ep = ds.episode(i)
        i %= ds.num_episodes
        f, s, t = ds.frame_offsets[i], ds.step_offsets[i], ds.lengths[i]
        np.testing.assert_array_equal(ep["obs"], reference["obs"][f : f + t + 1])
        for key in KEYS[1:]:
            np.testing.assert_array_equal(ep[key], reference[key][s : s + t])
        assert ep["terminated"][-1] or ep["truncated"][-1]
        assert not ep["obs"].flags.writeable  # views into the dataset cannot be edited by accident
    with pytest.raises(IndexError):
        ds.episode(8)


def test_concatenated_step_arrays(root, reference):
    ds = EpisodeDataset(root)
    np.testing.assert_array_equal(ds.actions_all(), reference["actions"])
    np.testing.assert_array_equal(ds.rewards_all(), reference["rewards"])
    np.testing.assert_array_equal(ds.terminated_all(), reference["terminated"])
    np.testing.assert_array_equal(ds.truncated_all(), reference["truncated"])
    assert ds.actions_all().flags.writeable  # a fresh array the caller owns


@pytest.mark.parametrize("batch_size, drop_last", [(16, False), (16, True), (1000, False)])
def test_frame_batches_cover_every_frame_once_per_epoch(root, reference, batch_size, drop_last):
    ds = EpisodeDataset(root)
    batches = list(ds.iter_frame_batches(batch_size, np.random.default_rng(3), drop_last=drop_last))
    order = np.random.default_rng(3).permutation(ds.num_frames)
    full, rest = divmod(ds.num_frames, batch_size)
    assert [len(b) for b in batches] == [batch_size] * full + ([rest] if rest and not drop_last else [])
    seen = order[: sum(len(b) for b in batches)]
    if not drop_last:
        assert sorted(seen) == list(range(ds.num_frames))
    np.testing.assert_array_equal(np.concatenate(batches), reference["obs"][seen])


def test_subset_is_a_view_with_the_same_api(root, reference):
    ds = EpisodeDataset(root)
    sub = ds.subset([6, 1, -1])
    assert sub.num_episodes == 3
    picked = [6, 1, 7]
    np.testing.assert_array_equal(sub.lengths, ds.lengths[picked])
    assert sub.num_frames == int((ds.lengths[picked] + 1).sum())
    expected_obs = np.concatenate([ds.episode(i)["obs"] for i in picked])
    np.testing.assert_array_equal(sub.frames(np.arange(sub.num_frames)), expected_obs)
    np.testing.assert_array_equal(sub.actions_all(), np.concatenate([ds.episode(i)["actions"] for i in picked]))
    np.testing.assert_array_equal(sub.episode(1)["obs"], ds.episode(1)["obs"])
    batches = list(sub.iter_frame_batches(7, np.random.default_rng(0)))
    assert sum(len(b) for b in batches) == sub.num_frames
    # Held-out episodes: the two views split the frames between them.
    rest = ds.subset([i for i in range(8) if i not in picked])
    assert rest.num_frames + sub.num_frames == ds.num_frames
    with pytest.raises(IndexError):
        ds.subset([8])
    with pytest.raises(ValueError, match="at least one"):
        ds.subset([])


# -- damaged or missing data --------------------------------------------------------------------------
def test_missing_or_empty_folders_say_no_shards_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards found in"):
        EpisodeDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"no shards found in {tmp_path}"):
        EpisodeDataset(tmp_path)


def test_truncated_frames_file_is_named(damaged):
    obs = damaged / "shard_00001" / f"{BLOB}.npy"
    obs.write_bytes(obs.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"shard_00001/{BLOB}\.npy"):
        EpisodeDataset(damaged)


def test_offsets_that_do_not_fit_the_frames_file_are_named(damaged):
    path = damaged / "shard_00002" / f"{OFFSETS}.npy"
    offsets = np.load(path)
    offsets[-1] += 1  # one byte more than the frames file holds
    np.save(path, offsets)
    with pytest.raises(ValueError, match=rf"shard_00002/{OFFSETS}\.npy: offsets must rise from 0"):
        EpisodeDataset(damaged)


def test_a_corrupt_frame_is_named_when_read(damaged, reference):
    path = damaged / "shard_00000" / f"{BLOB}.npy"
    data = bytearray(path.read_bytes())
    first = int(np.load(damaged / "shard_00000" / f"{OFFSETS}.npy")[1])
    header = len(data) - int(np.load(path, mmap_mode="r").shape[0])
    data[header : header + first] = b"\xff" * first  # frame 0's LZ4 block, overwritten
    path.write_bytes(bytes(data))
    ds = EpisodeDataset(damaged)  # sizes still agree: found when the frame is decompressed
    with pytest.raises(ValueError, match=rf"shard_00000/{BLOB}\.npy: frame 0 is corrupt"):
        ds.frames([0])
    np.testing.assert_array_equal(ds.frames([1, 2]), reference["obs"][[1, 2]])  # its neighbours still read


def test_a_folder_of_the_raw_frame_format_is_named(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["format"] = 1
    del manifest["frame_codec"]
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError,
                       match=r"manifest\.json: written by another version of wm-agent .*collect the data again"):
        EpisodeDataset(damaged)


def test_garbage_array_file_is_named(damaged):
    (damaged / "shard_00002" / "rewards.npy").write_bytes(b"this is not a numpy file at all")
    with pytest.raises(ValueError, match=r"shard_00002/rewards\.npy"):
        EpisodeDataset(damaged)


def test_missing_array_file_is_named(damaged):
    (damaged / "shard_00000" / "terminated.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard_00000/terminated\.npy"):
        EpisodeDataset(damaged)


def test_inconsistent_arrays_are_named(damaged):
    actions = np.load(damaged / "shard_00000" / "actions.npy")
    np.save(damaged / "shard_00000" / "actions.npy", actions[:-1])
    with pytest.raises(ValueError, match=r"shard_00000/actions\.npy: expected int64 shape"):
        EpisodeDataset(damaged)


def test_lengths_that_disagree_with_the_manifest_are_named(damaged):
    np.save(damaged / "shard_00001" / "lengths.npy", np.array([1, 2], np.int64))
    with pytest.raises(ValueError, match=r"shard_00001/lengths\.npy: holds 2 episodes, the manifest says 3"):
        EpisodeDataset(damaged)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"env_id": "x"}'])
def test_corrupt_manifest_is_named(damaged, text):
    (damaged / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        EpisodeDataset(damaged)


def test_manifest_with_an_unknown_action_space_is_named(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["action_space"] = {"type": "tuple"}
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"manifest\.json.*action_space"):
        EpisodeDataset(damaged)


def test_box_action_space_round_trips(tmp_path):
    from test_collect import ToyBoxEnv  # noqa: F401  (registers the toy env)

    DataCollector("test_collect:WMTest-Box-v0", tmp_path, policy="brownian").collect(2, progress=False)
    ds = EpisodeDataset(tmp_path)
    assert ds.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert ds.actions_all().shape == (ds.num_steps, 2) and ds.actions_all().dtype == np.float32


def test_a_shard_filled_before_the_manifest_lists_it_reads_as_listed(tmp_path, root):
    """A resumed collect renames the filled last shard into place, then lists it within a second: a
    reader in between sees the episodes the manifest lists (the shard's first ones), not an error."""
    short = tmp_path / "short"
    DataCollector("WM-GridWorld-v0", short, seed=5, episodes_per_shard=3, max_steps=10).collect(7, progress=False)
    listed = EpisodeDataset(short)
    before = {key: np.array(value) for key, value in listed.episode(6).items()}
    manifest = (short / "manifest.json").read_text()
    DataCollector("WM-GridWorld-v0", short, seed=5, episodes_per_shard=3, max_steps=10).collect(8, progress=False)
    (short / "manifest.json").write_text(manifest)  # the moment between the rename and the listing
    between = EpisodeDataset(short)
    assert between.num_episodes == 7 and between.num_frames == listed.num_frames
    for key, value in between.episode(6).items():
        np.testing.assert_array_equal(value, before[key])
    np.testing.assert_array_equal(between.frames(np.arange(between.num_frames)),
                                  EpisodeDataset(root).frames(np.arange(between.num_frames)))


def test_frame_indices_count_from_the_end_like_episode_indices(root):
    ds = EpisodeDataset(root)
    np.testing.assert_array_equal(ds.frames([-1, -ds.num_frames]), ds.frames([ds.num_frames - 1, 0]))
    with pytest.raises(IndexError, match=f"got {2**63 + 5}"):  # not wrapped around into a negative int64
        ds.frames(np.array([2**63 + 5], np.uint64))
    with pytest.raises(TypeError, match="rng must be a numpy Generator"):
        next(ds.iter_frame_batches(2, None))


def test_identity_tells_apart_folders_whose_shards_split_the_episodes_otherwise(tmp_path):
    """Shard i's episodes are seeded from (seed, i): another episodes_per_shard gives other episodes."""
    from wm_agent.data.dataset import same_episodes

    a, b = tmp_path / "a", tmp_path / "b"
    DataCollector("WM-GridWorld-v0", a, seed=0, episodes_per_shard=4, max_steps=5).collect(4, progress=False)
    DataCollector("WM-GridWorld-v0", b, seed=0, episodes_per_shard=2, max_steps=5).collect(4, progress=False)
    A, B = EpisodeDataset(a), EpisodeDataset(b)
    assert A.identity != B.identity and not same_episodes(A.identity, B.identity)
    older = {k: v for k, v in A.identity.items() if k != "episodes_per_shard"}  # what older checkpoints recorded
    assert same_episodes(older, A.identity) and same_episodes(older, B.identity)


def test_the_dataset_is_a_sequence_of_its_episodes(root):
    ds = EpisodeDataset(root)
    assert len(ds) == ds.num_episodes == 8
    for i, (item, episode) in enumerate(zip(ds, (ds.episode(k) for k in range(len(ds))), strict=True)):
        assert item.keys() == episode.keys() and all(np.array_equal(item[k], episode[k]) for k in item)
        assert np.array_equal(ds[i]["obs"], episode["obs"]) and np.array_equal(ds[i - len(ds)]["obs"], episode["obs"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    for bad in (True, np.bool_(False), 1.0):  # True would read episode 1
        with pytest.raises(TypeError, match="episode index must be an int"):
            ds.episode(bad)
