"""End to end on real gymnasium environments: collect, fit, imagine, evaluate, export.

For each environment (CartPole-v1 and Pendulum-v1 by default):

1. collect random-policy episodes for training and held-out evaluation
   (``OUT/<env>/data/train``, ``OUT/<env>/data/test``);
2. fit a ``WorldModel`` with ``model.fit`` (TensorBoard logs in ``OUT/<env>/logs``,
   an imagination picture per epoch, an atomic checkpoint ``OUT/<env>/model.keras``);
3. evaluate open-loop prediction on the held-out episodes against a per-dimension
   mean predictor (``OUT/<env>/open_loop.json``);
4. export the model: ``OUT/export/saved_model/<name>/<version>/``,
   ``OUT/export/onnx/`` (for the last environment) and the parity report.

It verifies at the end: the open-loop observation error at horizons 1 and 15 must be
below the mean predictor's, and the export parity must hold; otherwise it exits 1.

    python examples/end_to_end.py [--out out] [--envs CartPole-v1 Pendulum-v1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from rssm_tf import RssmConfig  # noqa: E402
from rssm_tf.atomic import write_atomic  # noqa: E402
from rssm_tf.callbacks import ImaginationCallback, NonFiniteGuard  # noqa: E402
from rssm_tf.collect import collect  # noqa: E402
from rssm_tf.data import EpisodeStore, make_dataset  # noqa: E402
from rssm_tf.saving import AtomicModelCheckpoint, save_world_model  # noqa: E402
from rssm_tf.world_model import WorldModel, evaluate_open_loop  # noqa: E402

# Per environment: episodes to collect (train, held out), training updates, epochs.
PLANS = {
    "CartPole-v1": dict(train=400, test=60, steps=1500, epochs=3),
    "Pendulum-v1": dict(train=40, test=10, steps=1000, epochs=3),
}
# A compact configuration that trains in minutes on two CPU cores.
SIZES = dict(deterministic_size=128, n_categories=16, n_classes=16, hidden_size=128,
             n_blocks=4, encoder_layers=2, decoder_layers=2)


def run_env(env_id: str, out: Path, seed: int, scale: float) -> dict:
    plan = PLANS.get(env_id, dict(train=50, test=10, steps=600, epochs=3))
    root = out / env_id
    train_dir, test_dir = root / "data" / "train", root / "data" / "test"
    t0 = time.time()
    if not len(EpisodeStore(train_dir)):
        collect(env_id, plan["train"], train_dir, seed=seed)
    if not len(EpisodeStore(test_dir)):
        collect(env_id, plan["test"], test_dir, seed=seed + 100_000)
    train, test = EpisodeStore(train_dir).load(), EpisodeStore(test_dir).load()
    print(f"[{env_id}] {len(train)} training episodes ({sum(len(e['obs']) for e in train)} "
          f"steps), {len(test)} held out; collected in {time.time() - t0:.1f}s")

    keras.utils.set_random_seed(seed)
    config = RssmConfig(obs_dim=train[0]["obs"].shape[1],
                        action_dim=train[0]["action"].shape[1], **SIZES)
    model = WorldModel(config, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(6e-4, epsilon=1e-8, global_clipnorm=1000.0))
    steps = max(plan["epochs"], int(plan["steps"] * scale))
    dataset = make_dataset(train, batch_size=16, seq_len=32, seed=seed)
    validation = make_dataset(test, batch_size=16, seq_len=32, seed=seed, repeat=False)
    callbacks = [NonFiniteGuard(), AtomicModelCheckpoint(root / "model.keras"),
                 ImaginationCallback(test, root, context=5, horizon=15,
                                     log_dir=str(root / "logs")),
                 keras.callbacks.TensorBoard(str(root / "logs"))]
    t0 = time.time()
    model.fit(dataset, epochs=plan["epochs"], steps_per_epoch=steps // plan["epochs"],
              validation_data=validation, callbacks=callbacks, verbose=2)
    fit_seconds = time.time() - t0
    save_world_model(model, root / "model.keras")

    result = evaluate_open_loop(model, test, context=5, horizon=15)
    result.update(env=env_id, fit_seconds=round(fit_seconds, 1), updates=steps)
    write_atomic(root / "open_loop.json", json.dumps(result, indent=2).encode())
    for h in (1, 15):
        print(f"[{env_id}] open-loop horizon {h:>2}: obs MSE {result['obs_mse'][h - 1]:.4f} "
              f"(mean predictor {result['mean_obs_mse'][h - 1]:.4f}), reward MSE "
              f"{result['reward_mse'][h - 1]:.4f} (mean predictor "
              f"{result['mean_reward_mse'][h - 1]:.4f}); {result['windows']} windows")
    picture = root / f"imagination_epoch{plan['epochs']}.png"
    print(f"[{env_id}] imagination picture: {picture}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out", help="output directory (out)")
    parser.add_argument("--envs", nargs="+", default=list(PLANS), help="gymnasium ids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the training updates (e.g. 0.1 for a smoke run)")
    parser.add_argument("--no-export", action="store_true", help="skip the export step")
    args = parser.parse_args()
    out = Path(args.out)
    start = time.time()
    results = {env: run_env(env, out, args.seed, args.scale) for env in args.envs}
    ok = all(r["obs_mse"][h] < r["mean_obs_mse"][h] for r in results.values() for h in (0, 14))

    if not args.no_export:
        from export.exporter import export_model

        for i, env in enumerate(args.envs):
            name = env.split("-")[0].lower()
            last = i == len(args.envs) - 1
            manifest = export_model(out / env / "model.keras", out / "export", name=name,
                                    onnx=last, parity=last)
            if last:
                ok = ok and manifest["parity"]["passed"]
        print(f"exported to {out / 'export'}: saved_model/<name>/<version>/, onnx/, "
              "manifest.json, parity.json")

    summary = {env: {"obs_mse_h1": r["obs_mse"][0], "mean_obs_mse_h1": r["mean_obs_mse"][0],
                     "obs_mse_h15": r["obs_mse"][14], "mean_obs_mse_h15": r["mean_obs_mse"][14]}
               for env, r in results.items()}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    print(f"done in {time.time() - start:.0f}s: " + ("all checks passed" if ok else "CHECK FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
