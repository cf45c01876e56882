"""The streamed episode pipeline at scale: windows/s and peak memory as the data grows.

For 1k, 5k and 20k synthetic pixel episodes (64x64x3 uint8, 50 steps each: about 0.6,
3 and 12 GB of frames), written once into a temporary directory and removed after,
each size is read in a fresh process by ``make_dataset(directory, 16, 64)`` (the
streamed :class:`rssm_tf.replay.Replay`), reporting the time to build the pipeline
(the header index, then its cached reuse), B16 x T64 batches/s and the process's peak
RSS. One run also times the in-memory pipeline (a list of loaded episodes, the old
path for directories) at 1k episodes, and the pixel training step at the seed sizes,
so the table says how much faster the pipeline delivers than the model consumes.

    python benchmarks/data_pipeline.py [--sizes 1000 5000 20000] [--compress]
        [--no-train-step] [--out PATH]

Writes ``benchmarks/results/data_pipeline.json`` and ``.md`` (see ``results.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STEPS, SIZE, BATCH, SEQ = 50, 64, 16, 64


def write_episodes(directory: Path, count: int, start: int, compress: bool) -> None:
    """Rendered-looking frames: a flat background with a moving square and noise."""
    import numpy as np

    from rssm_tf.data import save_episode

    rng = np.random.default_rng(start)
    for index in range(start, count):
        frames = np.full((STEPS, SIZE, SIZE, 3), 200, np.uint8)
        x = rng.integers(0, SIZE - 8, STEPS)
        for t in range(STEPS):
            frames[t, 20:28, x[t]:x[t] + 8] = (30, 60, 200)
        frames += rng.integers(0, 8, frames.shape, dtype=np.uint8)
        episode = {"image": frames, "action": np.zeros((STEPS, 2), np.float32),
                   "reward": np.ones(STEPS, np.float32),
                   "is_first": np.eye(1, STEPS, dtype=np.float32)[0],
                   "is_terminal": np.zeros(STEPS, np.float32)}
        save_episode(directory, episode, f"ep{index:07d}", compress=compress)


def measure(directory: str, batches: int, in_memory: bool) -> dict:
    """Runs in a fresh process: build, warm up, time ``batches`` batches."""
    import numpy as np

    from rssm_tf.data import EpisodeStore, make_dataset

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    source = EpisodeStore(directory).load() if in_memory else directory
    dataset = make_dataset(source, BATCH, SEQ, seed=0)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_dataset(source, BATCH, SEQ, seed=1)  # streamed: the cached index
    rebuild = time.perf_counter() - t0
    iterator = iter(dataset)
    for _ in range(5):
        batch = next(iterator)
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    seconds = time.perf_counter() - t0
    assert batch["image"].shape == (BATCH, SEQ, SIZE, SIZE, 3)
    assert np.all(batch["is_first"].numpy()[:, 0] == 1)
    return {"build_seconds": round(build, 2), "rebuild_seconds": round(rebuild, 2),
            "batches_per_second": round(batches / seconds, 2),
            "windows_per_second": round(batches * BATCH / seconds, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                                 2),
            "rss_before_gb": round(rss_before, 2)}


def train_step_seconds(steps: int = 3) -> float:
    """The pixel update at the seed sizes (CNN depth 32, kernel 4), B16 x T64."""
    import numpy as np
    import tensorflow as tf

    from rssm_tf import RssmConfig, WorldModel

    model = WorldModel(RssmConfig(obs_dim=0, action_dim=2, image_shape=(SIZE, SIZE, 3)))
    model.compile()
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (BATCH, SEQ, SIZE, SIZE, 3), dtype=np.uint8),
             "action": np.zeros((BATCH, SEQ, 2), np.float32),
             "reward": np.zeros((BATCH, SEQ), np.float32),
             "is_first": np.eye(1, SEQ, dtype=np.float32).repeat(BATCH, 0),
             "is_terminal": np.zeros((BATCH, SEQ), np.float32)}
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=1, verbose=0)  # compile
    t0 = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - t0) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--compress", action="store_true", help="compressed episode files")
    parser.add_argument("--no-train-step", action="store_true")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/data_pipeline.json)")
    parser.add_argument("--measure", nargs=3, metavar=("DIR", "BATCHES", "IN_MEMORY"),
                        help=argparse.SUPPRESS)  # the child process's entry
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]),
                                 args.measure[2] == "1")))
        return 0

    def child(directory: Path, in_memory: bool) -> dict:
        proc = subprocess.run([sys.executable, __file__, "--measure", str(directory),
                               str(args.batches), "1" if in_memory else "0"],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = []
    root = Path(tempfile.mkdtemp(prefix="rssm_tf_pipeline_"))
    try:
        written = 0
        for count in sorted(args.sizes):
            t0 = time.perf_counter()
            write_episodes(root, count, written, args.compress)
            written = count
            disk = sum(p.stat().st_size for p in root.glob("*.npz")) / 2**30
            row = {"episodes": count, "frames_gb": round(count * STEPS * SIZE * SIZE * 3
                                                          / 2**30, 2),
                   "disk_gb": round(disk, 2), "write_seconds": round(time.perf_counter()
                                                                     - t0, 1),
                   "streamed": child(root, False)}
            if count == min(args.sizes):
                row["in_memory"] = child(root, True)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = {"batch": BATCH, "seq_len": SEQ, "steps_per_episode": STEPS,
              "compressed": args.compress, "rows": rows}
    first, last = rows[0]["streamed"], rows[-1]["streamed"]
    report["peak_rss_growth_gb"] = round(last["peak_rss_gb"] - first["peak_rss_gb"], 2)
    if not args.no_train_step:
        step = train_step_seconds()
        report["train_step_seconds"] = round(step, 2)
        report["pipeline_over_train_step"] = round(
            min(r["streamed"]["batches_per_second"] for r in rows) * step, 1)
    report["command"] = "python benchmarks/data_pipeline.py " + " ".join(sys.argv[1:])
    table_rows = []
    for row in rows:
        s = row["streamed"]
        table_rows.append([f"{row['episodes']:,}", f"{row['frames_gb']} GB",
                           f"{s['build_seconds']} ({s['rebuild_seconds']})",
                           s["batches_per_second"], s["peak_rss_gb"]])
        if "in_memory" in row:
            m = row["in_memory"]
            table_rows.append([f"{row['episodes']:,} in memory", f"{row['frames_gb']} GB",
                               f"{m['build_seconds']}", m["batches_per_second"],
                               m["peak_rss_gb"]])
    notes = f"Peak RSS growth from the smallest to the largest: {report['peak_rss_growth_gb']} GB."
    if "train_step_seconds" in report:
        notes += (f" The pixel training step took {report['train_step_seconds']} s: the "
                  f"slowest pipeline row delivers {report['pipeline_over_train_step']}x "
                  "faster than training consumes.")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import markdown_table, write_results

    write_results("data_pipeline" + ("_compressed" if args.compress else ""),
                  "Streamed data pipeline" + (", compressed files" if args.compress else ""),
                  report, markdown_table(["episodes", "frames", "index build s (cached)",
                                          f"B{BATCH} x T{SEQ} batches/s", "peak RSS GB"],
                                         table_rows), notes, json_path=args.out)
    print(f"\n{'episodes':>9} {'frames GB':>10} {'build s':>8} {'cached s':>9} "
          f"{'batches/s':>10} {'peak RSS GB':>12}")
    for row in rows:
        s = row["streamed"]
        print(f"{row['episodes']:>9} {row['frames_gb']:>10} {s['build_seconds']:>8} "
              f"{s['rebuild_seconds']:>9} {s['batches_per_second']:>10} "
              f"{s['peak_rss_gb']:>12}")
        if "in_memory" in row:
            m = row["in_memory"]
            print(f"{'(memory)':>9} {row['frames_gb']:>10} {m['build_seconds']:>8} "
                  f"{'':>9} {m['batches_per_second']:>10} {m['peak_rss_gb']:>12}")
    print(f"peak RSS growth {rows[0]['episodes']} -> {rows[-1]['episodes']} episodes: "
          f"{report['peak_rss_growth_gb']} GB")
    if "train_step_seconds" in report:
        print(f"pixel train step {report['train_step_seconds']} s: the slowest pipeline "
              f"delivers {report['pipeline_over_train_step']}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
