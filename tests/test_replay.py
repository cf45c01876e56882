"""The streamed replay: the same windows as the in-memory pipeline, an index built from
the file headers, a directory that grows while fit runs, capacity, recency, bad files,
and shards for several workers."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import RssmConfig, WorldModel
from rssm_tf.data import make_dataset, save_episode
from rssm_tf.replay import INDEX_FILE, Replay, read_header


def episode(length, marker=0.0, obs_dim=3):
    """obs[t] = marker + t in every dimension: a window tells where it came from."""
    obs = (marker + np.arange(length, dtype="f"))[:, None].repeat(obs_dim, 1)
    return {"obs": obs, "action": np.ones((length, 2), "f"),
            "reward": np.arange(length, dtype="f"), "is_first": np.eye(1, length)[0],
            "is_terminal": np.zeros(length, "f")}


def write(directory, lengths, compress=False, first=0):
    eps = [episode(n, 1000.0 * (first + i)) for i, n in enumerate(lengths)]
    for i, ep in enumerate(eps):
        save_episode(directory, ep, f"ep{first + i:04d}", compress=compress)
    return eps


def batches(dataset, count):
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(count)]


@pytest.mark.parametrize("repeat", [True, False])
def test_streamed_windows_are_the_in_memory_windows(tmp_path, repeat):
    eps = write(tmp_path, [7, 12, 3, 20, 9, 31])
    eps += write(tmp_path, [5, 15], compress=True, first=6)  # compressed files mix in
    want = batches(make_dataset(eps, 4, 5, seed=3, repeat=repeat), 6)
    got = batches(make_dataset(tmp_path, 4, 5, seed=3, repeat=repeat), 6)
    assert len(got) == len(want) > 0
    for a, b in zip(want, got):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the semantics, checked directly: a window crossing a join has is_first there
    replay = Replay(tmp_path, 5)
    window = replay.window(5)  # steps 5, 6 of ep0, then 0, 1, 2 of ep1
    np.testing.assert_array_equal(window["obs"][:, 0], [5, 6, 1000, 1001, 1002])
    np.testing.assert_array_equal(window["is_first"], [1, 0, 1, 0, 0])


def test_index_reads_headers_is_cached_and_follows_changes(tmp_path):
    write(tmp_path, [7, 12])
    header = read_header(tmp_path / "ep0001.npz")
    assert header["length"] == 12 and header["shapes"]["obs"] == [3]
    replay = Replay(tmp_path, 4)
    assert replay.total == 19 and replay.names == ["ep0000.npz", "ep0001.npz"]
    cached = json.loads((tmp_path / INDEX_FILE).read_text())
    assert cached["files"]["ep0001.npz"]["length"] == 12
    os.remove(tmp_path / "ep0000.npz")
    save_episode(tmp_path, episode(30, 5000.0), "ep0002", compress=True)
    assert replay.refresh()
    assert replay.names == ["ep0001.npz", "ep0002.npz"] and replay.total == 42
    assert set(json.loads((tmp_path / INDEX_FILE).read_text())["files"]) == {
        "ep0001.npz", "ep0002.npz"}


def test_capacity_keeps_the_newest_and_can_delete(tmp_path):
    write(tmp_path, [10, 10, 10, 10])
    replay = Replay(tmp_path, 4, capacity=25)
    assert replay.names == ["ep0002.npz", "ep0003.npz"] and replay.total == 20
    assert (tmp_path / "ep0000.npz").exists()
    Replay(tmp_path, 4, capacity=25, delete_dropped=True)
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["ep0002.npz", "ep0003.npz"]
    with pytest.raises(ValueError, match=r"capacity must be an integer >= seq_len \(4\)"):
        Replay(tmp_path, 4, capacity=3)


def test_recent_windows_start_among_the_newest_steps(tmp_path):
    write(tmp_path, [50, 50])
    replay = Replay(tmp_path, 5, recent=1.0, recent_steps=10)
    starts = {replay.start_for(draw) for draw in range(-500, 500)}
    assert starts == set(range(86, 96))  # the last 10 of 96 starts
    half = Replay(tmp_path, 5, recent=0.5, recent_steps=10)
    draws = np.random.default_rng(0).integers(-2**62, 2**62, 4000)
    share = np.mean([half.start_for(d) >= 86 for d in draws])
    assert 0.52 < share < 0.59  # 0.5 + 0.5 * 10 / 96 = 0.552, +- 4 standard errors


def test_unreadable_and_mismatched_files(tmp_path):
    write(tmp_path, [20, 20])
    data = (tmp_path / "ep0001.npz").read_bytes()
    (tmp_path / "ep0005.npz").write_bytes(data[: len(data) // 2])  # killed mid-write
    with pytest.warns(UserWarning, match="ep0005.npz: unreadable"):
        replay = Replay(tmp_path, 4, refresh_seconds=0.0)
    assert replay.names == ["ep0000.npz", "ep0001.npz"]
    save_episode(tmp_path, {**episode(20), "obs": np.zeros((20, 5), "f")}, "ep0006")
    with pytest.warns(UserWarning, match="ep0005.npz: unreadable"):  # still there
        with pytest.raises(ValueError, match=r"ep0006.npz has per-step shapes \{'obs': \[5\]"):
            Replay(tmp_path, 4)
    with pytest.warns(UserWarning, match="skipping episode file .*ep0006.npz has per-step"):
        replay.sample(0)  # while running: skipped, never an error
    assert replay.names == ["ep0000.npz", "ep0001.npz"]
    os.remove(tmp_path / "ep0006.npz")
    with pytest.warns(UserWarning, match="ep0005.npz: unreadable"):
        slow = Replay(tmp_path, 4, refresh_seconds=1e9)  # no refresh before the next read
    os.remove(tmp_path / "ep0001.npz")  # gone after indexing: warned, another window
    with pytest.warns(UserWarning, match="ep0001.npz"):
        for draw in range(40):
            assert slow.sample(draw)["obs"].max() < 1000  # from ep0000 only
    assert slow.names == ["ep0000.npz"]


def test_an_episode_written_while_fit_runs_is_drawn_in_a_later_epoch(tmp_path):
    write(tmp_path, [20, 20])
    seen: list[float] = []

    def record(batch):
        tf.py_function(lambda o: seen.append(float(o.numpy().max())), [batch["obs"]], [])
        return batch

    class AddEpisode(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                seen.append(-1.0)  # the epoch boundary in the record
                save_episode(tmp_path, episode(400, 9000.0), "ep0009")

    config = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=8, n_categories=2,
                        n_classes=2, hidden_size=8, n_blocks=2)
    model = WorldModel(config)
    model.compile(jit_compile=False)
    data = make_dataset(tmp_path, 2, 4, refresh_seconds=0.0).map(record)
    model.fit(data, epochs=2, steps_per_epoch=12, callbacks=[AddEpisode()], verbose=0)
    boundary = seen.index(-1.0)
    assert max(seen[:boundary]) < 9000 and max(seen[boundary:]) >= 9000


def test_shards_split_the_files(tmp_path):
    write(tmp_path, [6] * 12)
    parts = [Replay(tmp_path, 4, shard=(i, 2)).names for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(p.name for p in tmp_path.glob("*.npz"))
    with pytest.raises(ValueError, match=r"shard must be \(index, count\)"):
        Replay(tmp_path, 4, shard=(2, 2))


def test_two_workers_read_their_own_files(tmp_path):
    """MultiWorkerMirroredStrategy with two processes on 127.0.0.1: each worker's
    pipeline (from its input context) reads only its share of the files, and both train."""
    from served import free_port

    write(tmp_path, [16] * 10)
    ports = [free_port() for _ in range(2)]
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, tensorflow as tf, keras
        from rssm_tf import RssmConfig, WorldModel
        from rssm_tf.replay import replay_dataset
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        seen = set()
        def local(ctx):
            ds = replay_dataset(sys.argv[1], 4, 5, input_context=ctx)
            def mark(b):
                tf.py_function(lambda o: seen.update((o.numpy()[:, :, 0] // 1000)
                                                     .astype(int).ravel().tolist()),
                               [b["obs"]], [])
                return b
            return ds.map(mark)
        data = strategy.distribute_datasets_from_function(local)
        config = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=8, n_categories=2,
                            n_classes=2, hidden_size=8, n_blocks=2)
        with strategy.scope():
            model = WorldModel(config, check_numerics=False)
            model.compile(jit_compile=False)
        loss = model.fit(data, steps_per_epoch=6, verbose=0).history["loss"][-1]
        with open(sys.argv[2], "w") as f:
            json.dump({"loss": loss, "episodes": sorted(seen)}, f)
    """)
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", script, str(tmp_path),
                                       str(tmp_path / f"worker{index}.json")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    got = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    shares = [set(Replay(tmp_path, 5, shard=(i, 2)).names) for i in range(2)]
    assert all(shares) and not shares[0] & shares[1]  # both shares hold files
    for result, share in zip(got, shares):
        assert np.isfinite(result["loss"])
        assert result["episodes"], "a worker recorded no episode: nothing was checked"
        assert {f"ep{e:04d}.npz" for e in result["episodes"]} <= share
    assert not set(got[0]["episodes"]) & set(got[1]["episodes"])
