"""Training-update speed of the world model, measured in one run.

Rows: the full update (encoder, RSSM observe loop, prior, decoder, reward and continue
heads, the loss of docs/design.md section 5, Adam) at the seed configuration, B16 x T64
by default, run eagerly, as a ``tf.function`` and with XLA; XLA with TensorFlow's
autodiff of the loop instead of the hand-written backward; XLA under ``mixed_bfloat16``;
imagination of 1024 starts x 15 steps; a dense matmul (the machine's practical peak);
and, when ``torch`` and ``torchrl`` import, TorchRL's DreamerV3 world model for the
ratio (our XLA update and TorchRL's timed in ``--rounds`` alternating rounds, so both
see the same machine; the ratio is the median of the rounds' ratios). Then the same
update for image observations (``--image 64``: 64x64x3 frames through DreamerV3's CNN
encoder and decoder at depth 32, no vector), with XLA and as a ``tf.function`` (kernel
4, our default), and at kernel 5 against TorchRL's ``DreamerV3ImageEncoder/Decoder``
(which need an odd kernel) in alternating rounds.

    python benchmarks/train_speed.py [--batch 16] [--seq 64] [--iters 10] [--rounds 3]
                                     [--image 64] [--quick] [--isa native|avx2]
                                     [--onednn 0|1] [--json PATH]

Writes ``benchmarks/results/train_speed.json`` and ``.md`` (see ``results.py``).

Reported: median ms per update after warm-up, compile time (first call), peak RSS,
transitions per second, analytic FLOPs and achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import (  # noqa: E402
    add_cpu_switches,
    cpu_switches,
    machine,
    markdown_table,
    matmul_peak,
    write_results,
)

cpu_switches(sys.argv)  # --isa, --onednn: before TensorFlow loads

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from rssm_tf import RssmConfig, RssmState  # noqa: E402
from rssm_tf.world_model import WorldModel  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, iters: int, warmup: int) -> tuple[float, float]:
    """(first-call seconds, median ms of ``iters`` calls after ``warmup`` more)."""
    start = time.perf_counter()
    _block(fn())
    first = time.perf_counter() - start
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        _block(fn())
        times.append((time.perf_counter() - start) * 1000.0)
    return first, float(np.median(times))


def _block(value) -> None:
    for leaf in tf.nest.flatten(value):
        if hasattr(leaf, "numpy"):
            leaf.numpy()


def update_flops(model: WorldModel, batch: int, seq: int) -> float:
    """Analytic FLOPs of one update: forward + backward = 3x the forward's 2 FLOPs per
    multiply-add. Dense and block kernels do one multiply-add per weight per step;
    a convolution does one per weight per output position (a transposed one per input
    position)."""
    steps = batch * seq
    macs = steps * sum(int(np.prod(v.shape)) for v in model.trainable_variables
                       if len(v.shape) in (2, 3))
    c = model.config
    if c.image_shape:
        height, width = c.image_shape[:2]
        for conv in model.rssm.encoder.image.convs:  # stride 2: output is half the input
            height, width = height // 2, width // 2
            macs += steps * height * width * int(np.prod(conv.kernel.shape))
        for conv in model.decoder.image.convs:  # transposed: input is half the output
            macs += steps * height * width * int(np.prod(conv.kernel.shape))
            height, width = height * 2, width * 2
    return 6.0 * macs


def make_batch(config: RssmConfig, batch: int, seq: int) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    first = np.zeros((batch, seq), np.float32)
    first[:, 0] = 1
    data = {}
    if config.obs_dim:
        data["obs"] = tf.constant(rng.normal(size=(batch, seq, config.obs_dim)), tf.float32)
    if config.image_shape:
        data["image"] = tf.constant(rng.integers(0, 256, (batch, seq, *config.image_shape)),
                                    tf.uint8)
    return {**data,
            "action": tf.constant(rng.uniform(-1, 1, (batch, seq, config.action_dim)),
                                  tf.float32),
            "reward": tf.constant(rng.normal(size=(batch, seq)), tf.float32),
            "is_first": tf.constant(first),
            "is_terminal": tf.zeros((batch, seq))}


def ours(config: RssmConfig, batch: int, seq: int, mode: str, iters: int, warmup: int,
         precision: str = "float32", manual: bool = True,
         xla_loop: bool | None = None) -> tuple[dict, Callable]:
    """(the row, the timed update as a function of no arguments). ``xla_loop`` overrides
    compile()'s choice for the observe loop (image models on CPUs: under XLA)."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = WorldModel(config, check_numerics=False)
        model.rssm.manual_gradient = manual
        model.compile(optimizer=keras.optimizers.Adam(1e-4, epsilon=1e-8,
                                                      global_clipnorm=1000.0),
                      jit_compile=(mode == "xla"))
        if xla_loop is not None:
            model.xla_loop = xla_loop
        data = make_batch(config, batch, seq)
        step = model.train_step if mode == "eager" else tf.function(
            model.train_step, jit_compile=(mode == "xla"))
        first, ms = timed(lambda: step(data), iters, warmup)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return _row(ms, first, model, batch, seq), lambda: step(data)


def _row(ms: float, first: float, model: WorldModel, batch: int, seq: int) -> dict:
    flops = update_flops(model, batch, seq)
    return {"ms": ms, "compile_s": first, "peak_rss_mb": peak_rss_mb(),
            "transitions_per_s": batch * seq / (ms / 1000.0), "gflop": flops / 1e9,
            "gflops_per_s": flops / 1e9 / (ms / 1000.0)}


def imagine_row(config: RssmConfig, starts: int, horizon: int, iters: int, warmup: int) -> dict:
    model = WorldModel(config)
    rssm = model.rssm
    rng = np.random.default_rng(0)
    h = tf.constant(rng.normal(size=(starts, config.deterministic_size)), tf.float32)
    z = tf.one_hot(rng.integers(0, config.n_classes, (starts, config.n_categories)),
                   config.n_classes)
    z = tf.reshape(z, [starts, -1])
    actions = tf.constant(rng.uniform(-1, 1, (starts, horizon, config.action_dim)), tf.float32)
    noise = tf.constant(rng.uniform(0.01, 0.99, (starts, horizon, config.n_categories,
                                                 config.n_classes)), tf.float32)

    @tf.function(jit_compile=True)
    def run():
        states, _ = rssm.imagine(RssmState(h, z), actions, noise=noise)
        return rssm.predict_reward(states.h, states.z)

    first, ms = timed(run, iters, warmup)
    return {"ms": ms, "compile_s": first, "peak_rss_mb": peak_rss_mb()}


def ratio_rounds(ours_step: Callable, torch_step: Callable, rounds: int, iters: int,
                 warmup: int) -> dict:
    """Our XLA update and TorchRL's, timed in alternating rounds (median of ``iters``
    each), so a drift in the machine's speed during the run affects both: the row
    times are the medians over rounds and the ratio is the median of the rounds'
    ratios."""
    ours_ms, torch_ms = [], []
    for _ in range(rounds):
        ours_ms.append(timed(ours_step, iters, warmup)[1])
        torch_ms.append(timed(torch_step, iters, warmup)[1])
    ratios = [t / o for o, t in zip(ours_ms, torch_ms)]
    return {"ours_ms": float(np.median(ours_ms)), "torchrl_ms": float(np.median(torch_ms)),
            "rounds": [{"ours_ms": o, "torchrl_ms": t, "ratio": r}
                       for o, t, r in zip(ours_ms, torch_ms, ratios)],
            "ratio": float(np.median(ratios))}


def _rate(row: dict, ms: float, transitions: int) -> dict:
    """``row``'s time fields for a new median ``ms``."""
    out = {"ms": ms, "transitions_per_s": transitions / (ms / 1000.0)}
    if "gflop" in row:
        out["gflops_per_s"] = row["gflop"] / (ms / 1000.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eager-iters", type=int, default=2)
    parser.add_argument("--obs-dim", type=int, default=64)
    parser.add_argument("--action-dim", type=int, default=11)
    parser.add_argument("--no-torchrl", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of our XLA update and TorchRL's")
    parser.add_argument("--image", type=int, default=64,
                        help="image rows at SIZE x SIZE x 3 (64; 0 skips them)")
    parser.add_argument("--json", default=None,
                        help="JSON path (default benchmarks/results/train_speed.json)")
    parser.add_argument("--quick", action="store_true",
                        help="only the rows of the TorchRL ratios and imagination (no "
                             "autodiff, mixed_bfloat16, eager or image-XLA rows)")
    add_cpu_switches(parser)
    args = parser.parse_args()
    config = RssmConfig(obs_dim=args.obs_dim, action_dim=args.action_dim)
    b, t = args.batch, args.seq
    rows = {}
    rows["xla (hand-written backward)"], xla_step = ours(config, b, t, "xla", args.iters,
                                                        args.warmup)
    if not args.quick:
        rows["xla, autodiff backward"] = ours(config, b, t, "xla", args.iters, args.warmup,
                                              manual=False)[0]
        rows["xla, mixed_bfloat16"] = ours(config, b, t, "xla", args.iters, args.warmup,
                                           precision="mixed_bfloat16")[0]
        rows["tf.function"] = ours(config, b, t, "function", args.iters, args.warmup)[0]
        rows["eager"] = ours(config, b, t, "eager", args.eager_iters, 0)[0]
    rounds = None
    if not args.no_torchrl:
        try:
            from torchrl_reference import torchrl_step  # optional: torch + torchrl

            torch_step, torch_first = torchrl_step(config, b, t)
            rounds = ratio_rounds(xla_step, torch_step, args.rounds, args.iters, args.warmup)
            rows["xla (hand-written backward)"].update(
                _rate(rows["xla (hand-written backward)"], rounds["ours_ms"], b * t))
            rows["TorchRL DreamerV3"] = {"compile_s": torch_first, "peak_rss_mb": peak_rss_mb(),
                                         **_rate({}, rounds["torchrl_ms"], b * t)}
        except ImportError as error:
            print(f"TorchRL row skipped: {error}")
    image_config = image_rounds = None
    if args.image:
        image_config = RssmConfig(obs_dim=0, action_dim=args.action_dim,
                                  image_shape=(args.image, args.image, 3))
        if not args.quick:
            rows[f"image {args.image}x{args.image}x3, xla"] = ours(
                image_config, b, t, "xla", args.iters, args.warmup)[0]
        rows[f"image {args.image}x{args.image}x3, tf.function"] = ours(
            image_config, b, t, "function", args.iters, args.warmup)[0]
        # TorchRL's image modules need an odd kernel: both at kernel 5, our default
        # image path (compile() on CPU: oneDNN convolutions, no XLA) against theirs
        image5 = dataclasses.replace(image_config, cnn_kernel=5)
        name5 = f"image {args.image}x{args.image}x3, kernel 5, tf.function"
        rows[name5], image5_step = ours(image5, b, t, "function", args.iters, args.warmup)
        if not args.quick:  # compile()'s loop under XLA against the loop on TF's kernels
            rows[name5 + ", loop not under XLA"] = ours(
                image5, b, t, "function", args.iters, args.warmup, xla_loop=False)[0]
        if not args.no_torchrl and rounds is not None:
            torch_image, torch_first = torchrl_step(image5, b, t)
            image_rounds = ratio_rounds(image5_step, torch_image, args.rounds,
                                        max(2, args.iters // 4), 1)
            rows[name5].update(_rate(rows[name5], image_rounds["ours_ms"], b * t))
            rows["TorchRL image, kernel 5"] = {
                "compile_s": torch_first, "peak_rss_mb": peak_rss_mb(),
                **_rate({}, image_rounds["torchrl_ms"], b * t)}
    imagine = imagine_row(config, 1024, 15, args.iters, args.warmup)
    peak32 = matmul_peak("float32")
    peak16 = matmul_peak("bfloat16")

    best = rows["xla (hand-written backward)"]
    print(f"seed config (D {config.deterministic_size}, {config.n_categories}x"
          f"{config.n_classes} latents, H {config.hidden_size}, {config.n_blocks} blocks), "
          f"B{b} x T{t}, update = {best['gflop']:.1f} GFLOP (analytic)")
    print(f"{'update':<30} {'ms':>8} {'compile s':>10} {'trans/s':>9} {'GFLOP/s':>8} "
          f"{'peak RSS MB':>12}")
    for name, row in rows.items():
        print(f"{name:<30} {row['ms']:>8.1f} {row['compile_s']:>10.1f} "
              f"{row['transitions_per_s']:>9.0f} {row.get('gflops_per_s', float('nan')):>8.1f} "
              f"{row['peak_rss_mb']:>12.0f}")
    print(f"{'imagine 1024 x 15 (xla)':<30} {imagine['ms']:>8.1f} {imagine['compile_s']:>10.1f}")
    print(f"dense matmul peak: float32 {peak32:.0f} GFLOP/s, bfloat16 {peak16:.0f} GFLOP/s; "
          f"the update reaches {100 * best['gflops_per_s'] / peak32:.0f}% of float32")
    if image_config is not None:
        print(f"image rows: {args.image}x{args.image}x3 frames only, CNN depth "
              f"{image_config.cnn_depth} ({image_config.cnn_stages} stages), update = "
              f"{rows[f'image {args.image}x{args.image}x3, tf.function']['gflop']:.1f} GFLOP")
    report = {"config": config.to_dict(), "batch": b, "seq": t, "rows": rows,
              "image_config": image_config.to_dict() if image_config else None,
              "imagine_1024x15": imagine, "matmul_gflops": {"float32": peak32,
                                                            "bfloat16": peak16},
              "fraction_of_fp32_peak": best["gflops_per_s"] / peak32}
    for key, label, result in (("torchrl", "float32, XLA", rounds),
                               ("torchrl_image", "image, kernel 5", image_rounds)):
        if result is not None:
            report[f"{key}_ms_over_ours"] = result["ratio"]
            report[f"{key}_rounds"] = result["rounds"]
            per_round = ", ".join(f"{r['ratio']:.2f}" for r in result["rounds"])
            print(f"TorchRL ms / ours ({label}): {result['ratio']:.2f} (median of "
                  f"{len(result['rounds'])} alternating rounds: {per_round})")
    report["command"] = "python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    table = markdown_table(
        [f"update (B{b} x T{t})", "ms", "compile s", "transitions/s", "peak RSS MB"],
        [[name, round(row["ms"], 1), round(row["compile_s"], 1),
          round(row["transitions_per_s"]), round(row["peak_rss_mb"])]
         for name, row in rows.items()]
        + [["imagine 1024 x 15 (XLA)", round(imagine["ms"], 1),
            round(imagine["compile_s"], 1), "", round(imagine["peak_rss_mb"])]])
    notes = [f"Vector update {best['gflop']:.1f} GFLOP, "
             f"{100 * best['gflops_per_s'] / peak32:.0f}% of the float32 matmul peak; "
             f"bfloat16 matmul peak {peak16:.0f} GFLOP/s."]
    for key, label in (("torchrl", "vectors"), ("torchrl_image", "images, kernel 5")):
        if f"{key}_ms_over_ours" in report:
            per_round = ", ".join(f"{r['ratio']:.2f}" for r in report[f"{key}_rounds"])
            notes.append(f"TorchRL / ours ({label}): {report[f'{key}_ms_over_ours']:.2f} "
                         f"(rounds {per_round}).")
    write_results("train_speed", "Training update", report, table, " ".join(notes),
                  info=machine(peak32), json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
