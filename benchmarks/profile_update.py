"""Where the compiled training update spends its time: a TensorFlow profiler trace of
the XLA update (seed configuration, B16 x T64 by default), summed per kernel.

XLA's CPU runtime runs the update as a sequence of kernels ("thunks"). Each kernel
the trace shows is put in one of four groups: inside the observe loop (it runs at
least T/2 times per update: once per step and direction) or batched (the rest), and
matrix products (dots, einsums, convolutions) or element-wise work (fusions,
reductions, copies, the loop's stores). Times are each kernel's span summed per
update: the runtime may run two batched kernels at once on its two threads (and a
large product uses both cores within its span), so the batched sums can exceed their
share of the wall time; the loop runs one kernel after the other, so its sums are
wall time. For the loop's products it also reports the rate at which they read the
loop's weights (every step reads each kernel once per direction).

    python benchmarks/profile_update.py [--batch 16] [--seq 64] [--updates 5]
                                        [--top 12] [--isa native|avx2] [--json PATH]

Writes ``benchmarks/results/profile_update.json`` and ``.md`` (see ``results.py``).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import add_cpu_switches, cpu_switches, markdown_table, write_results  # noqa: E402,I001

cpu_switches(sys.argv)  # --isa, --onednn: before TensorFlow loads

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402
from train_speed import make_batch, timed  # noqa: E402

from rssm_tf import RssmConfig  # noqa: E402
from rssm_tf.scan import LoopInputs, _sites  # noqa: E402
from rssm_tf.world_model import WorldModel  # noqa: E402

PRODUCT = re.compile(r"matmul|dot|einsum|conv", re.IGNORECASE)


def kernel_times(trace_dir: str) -> dict[str, tuple[float, int]]:
    """Kernel name -> (total ms, calls) over the trace's runtime threads (the Python
    thread and the runtime's own bookkeeping events, named ``A::B``, left out)."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(paths[0]).read_bytes())
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if not name or "::" in name or name.startswith("end:"):
                    continue
                totals[name][0] += event.duration_ps / 1e9
                totals[name][1] += 1
    return {name: (ms, calls) for name, (ms, calls) in totals.items()}


def loop_weight_mb(model: WorldModel) -> float:
    """Megabytes of the kernels one step of the observe loop multiplies by."""
    rssm, c = model.rssm, model.config
    inputs = LoopInputs(tf.zeros([1, c.deterministic_size]), tf.zeros([1, c.stoch_size]),
                        tf.zeros([1, 1, 1]), tf.zeros([1, 1, rssm.gru.input_kernel.shape[1]]),
                        tf.zeros([1, 1, c.hidden_size]), None)
    total = 0
    for site in _sites(rssm, inputs):
        shape = list(site.kernel.shape)
        if site.rows is not None:
            shape[0] = site.rows[1] - site.rows[0]
        total += int(np.prod(shape)) * 4
    return total / 2 ** 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--updates", type=int, default=5, help="updates traced")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per group")
    parser.add_argument("--json", default=None,
                        help="JSON path (default benchmarks/results/profile_update.json)")
    add_cpu_switches(parser)
    args = parser.parse_args()
    for name in ("batch", "seq", "updates"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")

    config = RssmConfig(obs_dim=64, action_dim=11)
    model = WorldModel(config, check_numerics=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-4, epsilon=1e-8,
                                                  global_clipnorm=1000.0),
                  jit_compile=True)
    data = make_batch(config, args.batch, args.seq)
    step = tf.function(model.train_step, jit_compile=True)
    _, update_ms = timed(lambda: step(data), 10, 2)

    with tempfile.TemporaryDirectory() as trace_dir:
        tf.profiler.experimental.start(trace_dir)
        for _ in range(args.updates):
            for value in tf.nest.flatten(step(data)):
                value.numpy()
        tf.profiler.experimental.stop()
        kernels = kernel_times(trace_dir)

    n = args.updates
    groups: dict[tuple[str, str], list] = collections.defaultdict(list)
    for name, (ms, calls) in kernels.items():
        where = "loop" if calls / n >= args.seq / 2 else "batched"
        what = "products" if PRODUCT.search(name) else "element-wise"
        groups[(where, what)].append((ms / n, calls / n, name))

    mb = loop_weight_mb(model)
    loop_products = sum(ms for ms, _, _ in groups[("loop", "products")])
    read_gb_s = 2 * args.seq * mb / 1024 / (loop_products / 1000) if loop_products else 0.0
    print(f"XLA update, seed config, B{args.batch} x T{args.seq}: {update_ms:.1f} ms "
          f"(median of 10, before tracing); trace of {n} updates, per update:")
    print(f"{'group':<28} {'kernel ms':>10} {'kernels':>9}")
    summary = {}
    for key in sorted(groups):
        rows = sorted(groups[key], reverse=True)
        total, calls = sum(r[0] for r in rows), sum(r[1] for r in rows)
        label = f"{key[0]}, {key[1]}"
        summary[label] = {"kernel_ms": total, "kernels": calls,
                          "top": [{"name": name, "ms": ms, "calls": c}
                                  for ms, c, name in rows[:args.top]]}
        print(f"{label:<28} {total:>10.1f} {calls:>9.0f}")
    print(f"loop weights: {mb:.1f} MB per step and direction; the loop's products read "
          f"them at {read_gb_s:.1f} GB/s")
    for label, group in summary.items():
        print(f"\n{label}: the {len(group['top'])} largest kernels (ms per update, calls)")
        for row in group["top"]:
            print(f"  {row['ms']:8.2f} {row['calls']:6.1f}  {row['name']}")
    result = {"update_ms": update_ms, "batch": args.batch, "seq": args.seq,
              "updates_traced": n, "loop_weight_mb": mb, "loop_read_gb_s": read_gb_s,
              "groups": summary}
    result["command"] = "python benchmarks/profile_update.py " + " ".join(sys.argv[1:])
    table = markdown_table(["group", "ms per update", "kernels per update"],
                           [[label, round(g["kernel_ms"], 1), round(g["kernels"])]
                            for label, g in summary.items()])
    notes = (f"XLA update {update_ms:.1f} ms (median of 10, before tracing); the loop's "
             f"weights are {mb:.1f} MB per step and direction, read by its products at "
             f"{read_gb_s:.1f} GB/s.")
    write_results("profile_update", "Where the update's time goes", result, table, notes,
                  json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
