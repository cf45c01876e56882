import numpy as np
import pytest

from rssm_tf.data import EpisodeError, EpisodeStore, load_episode, make_dataset, save_episode


def episode(length, obs_dim=3, action_dim=2, offset=0.0):
    t = np.arange(length, dtype=np.float32)
    return {"obs": offset + np.stack([t] * obs_dim, 1), "action": np.ones((length, action_dim)),
            "reward": t, "is_first": (t == 0).astype(np.float32),
            "is_terminal": (t == length - 1).astype(np.float32)}


def test_save_load_round_trip_and_no_overwrite(tmp_path):
    path = save_episode(tmp_path, episode(5), "a")
    loaded = load_episode(path)
    for key, value in episode(5).items():
        np.testing.assert_array_equal(loaded[key], value)
    with pytest.raises(FileExistsError):
        save_episode(tmp_path, episode(3), "a")
    assert [p.name for p in EpisodeStore(tmp_path).paths()] == ["a.npz"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("change, words", [
    (lambda e: e.pop("reward"), r"missing key\(s\) \['reward'\]"),
    (lambda e: e.update(obs=e["obs"][:4]), "same length"),
    (lambda e: e.update(action=np.ones(5)), r"action must have shape \[T, A\]"),
    (lambda e: e["reward"].__setitem__(2, np.nan), "reward contains NaN"),
    (lambda e: e.update(is_first=np.full(5, 2.0)), "only 0 and 1"),
])
def test_malformed_episode_is_named(tmp_path, change, words):
    ep = episode(5)
    change(ep)
    with pytest.raises(EpisodeError, match=words):
        save_episode(tmp_path, ep, "bad")


def test_truncated_file_names_the_file(tmp_path):
    path = save_episode(tmp_path, episode(50), "ok")
    data = path.read_bytes()
    broken = tmp_path / "broken.npz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(EpisodeError, match="broken.npz.*truncated or corrupt"):
        load_episode(broken)
    # a directory is streamed: the broken file is skipped with a warning naming it
    with pytest.warns(UserWarning, match="broken.npz.*truncated or corrupt"):
        batch = next(iter(make_dataset(tmp_path, 2, 4)))
    assert batch["obs"].shape == (2, 4, 3)


def test_windows_cross_episodes_with_resets():
    # episodes of lengths 3 and 4: obs value = step + 100 * episode index
    eps = [episode(3), episode(4, offset=100.0)]
    ds = make_dataset(eps, batch_size=4, seq_len=5, seed=3, repeat=False)
    batches = list(ds)
    assert len(batches) == 0  # one pass of 7 // 5 = 1 window, fewer than a batch
    ds = make_dataset(eps, batch_size=3, seq_len=5, seed=3)
    batch = next(iter(ds))
    assert batch["obs"].shape == (3, 5, 3) and batch["is_first"].shape == (3, 5)
    stream_obs = np.array([0, 1, 2, 100, 101, 102, 103], np.float32)
    stream_first = np.array([1, 0, 0, 1, 0, 0, 0], np.float32)
    for obs, first in zip(batch["obs"].numpy(), batch["is_first"].numpy()):
        start = int(np.where(stream_obs == obs[0, 0])[0][0])
        np.testing.assert_array_equal(obs[:, 0], stream_obs[start:start + 5])
        expected = stream_first[start:start + 5].copy()
        expected[0] = 1.0  # every window starts from the initial state
        np.testing.assert_array_equal(first, expected)


def test_dataset_is_seeded():
    eps = [episode(30), episode(20, offset=50.0)]
    a = next(iter(make_dataset(eps, 4, 6, seed=1)))["obs"].numpy()
    b = next(iter(make_dataset(eps, 4, 6, seed=1)))["obs"].numpy()
    c = next(iter(make_dataset(eps, 4, 6, seed=2)))["obs"].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(batch_size=0, seq_len=4), ValueError, "batch_size"),
    (dict(batch_size=2, seq_len=40), ValueError, "fewer than seq_len=40"),
])
def test_dataset_argument_errors(kwargs, error, words):
    with pytest.raises(error, match=words):
        make_dataset([episode(10)], **kwargs)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_dataset(tmp_path / "nope", 2, 4)
    with pytest.raises(ValueError, match="no episodes"):
        make_dataset(tmp_path, 2, 4)
