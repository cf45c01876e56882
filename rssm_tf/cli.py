"""``rssm-tf``: collect episodes, train, imagine, evaluate, export and serve.

    rssm-tf collect  --env CartPole-v1 --episodes 100 --out data/train
    rssm-tf train    --data data/train --model run/model.keras --steps 1000
    rssm-tf evaluate --model run/model.keras --data data/test
    rssm-tf imagine  --model run/model.keras --data data/test --out run/imagine.png
    rssm-tf export   --model run/model.keras --out exported [--litert]
    rssm-tf serve    --export exported --backend onnx
    rssm-tf --version

``export`` and ``serve`` live in the distribution's other packages
(``rssm_tf_export``, ``rssm_tf_serving``); they register themselves as the entry
points of the group ``rssm_tf.commands``, so this package imports neither. Errors in
the arguments or the files are printed as one line (exit status 2); a command whose
optional dependency is missing prints the ``pip install`` line that brings it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

# Optional dependencies by import name -> the extra that installs them.
EXTRAS = {"gymnasium": "examples", "matplotlib": "examples", "tf2onnx": "export",
          "onnx": "export", "onnxruntime": "export", "ai_edge_litert": "litert",
          "grpc": "serving", "requests": "serving", "tensorflow_serving": "serving",
          "tensorflow_probability": "tfp", "torch": "bench", "torchrl": "bench"}


def version() -> str:
    try:
        return metadata.version("rssm-tf")
    except metadata.PackageNotFoundError:  # running from a checkout, not installed
        from rssm_tf import __version__

        return __version__


def plugins() -> dict[str, Any]:
    """Subcommands registered by other packages (group ``rssm_tf.commands``): each
    entry point is a ``main(argv) -> int``."""
    return {ep.name: ep for ep in metadata.entry_points(group="rssm_tf.commands")}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rssm-tf", description="DreamerV3 world model (RSSM) in TensorFlow/Keras.")
    parser.add_argument("--version", action="version", version=f"rssm-tf {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(plugins()):
        sub.add_parser(name, help={"export": "SavedModel tree, ONNX, LiteRT and parity "
                                             "report from a .keras model",
                                   "serve": "run an exported model through a serving "
                                            "backend"}.get(name, "see its --help"))

    p = sub.add_parser("collect", help="run a gymnasium environment and save episodes",
                       description="Run a gymnasium environment with a random policy and "
                                   "save each episode as an .npz file (atomic writes).")
    p.add_argument("--env", required=True, help="gymnasium environment id, e.g. Pendulum-v1")
    p.add_argument("--episodes", type=_positive, required=True, help="number of episodes")
    p.add_argument("--out", required=True, help="episode directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--max-steps", type=_positive, default=None,
                   help="cut episodes at this many steps (default: the env's own limit)")
    p.add_argument("--image-size", type=_positive, nargs="+", default=None, metavar="N",
                   help="also record rendered frames as 'image', resized to N x N "
                        "(or H W), e.g. --image-size 64 for pixel CartPole")
    p.add_argument("--image-crop", type=int, nargs=4, default=None,
                   metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="crop rendered frames to rows TOP:BOTTOM and columns LEFT:RIGHT "
                        "before resizing, e.g. --image-crop 140 332 156 444 for CartPole")
    p.add_argument("--vector-keys", nargs="+", default=None, metavar="KEY=I[,J...]",
                   help="store named parts of a vector observation instead of 'obs', "
                        "picked by index, e.g. --vector-keys velocity=1,3 angle=2")

    p = sub.add_parser("train", help="fit a world model on an episode directory",
                       description="Fit a WorldModel with model.fit on random windows of "
                                   "the episodes; saves a .keras file (atomically).")
    p.add_argument("--data", required=True, help="episode directory to train on")
    p.add_argument("--model", required=True,
                   help="output .keras path; if it exists, training resumes from it")
    p.add_argument("--val-data", default=None, help="episode directory for validation")
    p.add_argument("--steps", type=_positive, default=1000, help="training updates (1000)")
    p.add_argument("--epochs", type=_positive, default=1,
                   help="split the steps into this many epochs (1)")
    p.add_argument("--batch-size", type=_positive, default=16, help="windows per batch (16)")
    p.add_argument("--seq-len", type=_positive, default=64, help="window length T (64)")
    p.add_argument("--obs-keys", nargs="+", default=None, metavar="KEY",
                   help="observation keys to model (default: all the episodes have), "
                        "e.g. --obs-keys image velocity")
    p.add_argument("--config", default=None,
                   help="RssmConfig fields other than the observation space and action_dim, as "
                        "a JSON file or inline JSON, e.g. config.json or "
                        "'{\"deterministic_size\": 256}' (default: the seed config)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    p.add_argument("--log-dir", default=None, help="TensorBoard log directory")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--precision", choices=["float32", "mixed_float16", "mixed_bfloat16"],
                   default="float32", help="Keras dtype policy (float32)")

    for name, text in (("evaluate", "open-loop prediction error on held-out episodes"),
                       ("imagine", "write a picture of real vs imagined rollouts")):
        p = sub.add_parser(name, help=text, description=text.capitalize() + ".")
        p.add_argument("--model", required=True, help="trained .keras file")
        p.add_argument("--data", required=True, help="episode directory")
        p.add_argument("--context", type=_positive, default=5, help="observed steps (5)")
        p.add_argument("--horizon", type=_positive, default=15, help="imagined steps (15)")
        if name == "evaluate":
            p.add_argument("--json", default=None, help="also write the result here")
        else:
            p.add_argument("--out", required=True, help="output PNG path")
    return parser


def _load_model(path: str):
    from rssm_tf.saving import load_world_model

    return load_world_model(path)


def cmd_collect(args: argparse.Namespace) -> None:
    from rssm_tf.collect import collect

    size = args.image_size
    if size is not None and len(size) not in (1, 2):
        raise ValueError(f"--image-size takes N or H W, got {size}")
    paths = collect(args.env, args.episodes, args.out, seed=args.seed,
                    max_steps=args.max_steps, progress=True,
                    image_size=None if size is None else tuple(size * (3 - len(size))),
                    vector_keys=parse_vector_keys(args.vector_keys),
                    image_crop=None if args.image_crop is None else tuple(args.image_crop))
    print(f"wrote {len(paths)} episodes to {args.out}")


def parse_vector_keys(items: list[str] | None) -> dict[str, list[int]] | None:
    """``--vector-keys velocity=1,3 angle=2`` -> ``{"velocity": [1, 3], "angle": [2]}``."""
    if items is None:
        return None
    out = {}
    for item in items:
        key, sep, indices = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key] = [int(i) for i in indices.split(",")]
        except ValueError:
            raise ValueError(f"--vector-keys takes KEY=I[,J...] with integer indices, "
                             f"got {item!r}") from None
    return out


def cmd_train(args: argparse.Namespace) -> None:
    import keras

    from rssm_tf.callbacks import ImaginationCallback, NonFiniteGuard
    from rssm_tf.data import EpisodeStore, config_for_episode, load_episode, make_dataset
    from rssm_tf.saving import AtomicModelCheckpoint, save_world_model
    from rssm_tf.world_model import WorldModel

    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    paths = EpisodeStore(args.data).paths()  # the data is streamed, never loaded whole
    if not paths:
        raise ValueError(f"--data {args.data}: no episode files found")
    if os.path.exists(args.model):
        model = _load_model(args.model)
        print(f"resuming from {args.model} at step {int(model.optimizer.iterations)}")
    else:
        extra = read_config(args.config) if args.config else {}
        config = config_for_episode(load_episode(paths[0]), args.obs_keys, **extra)
        model = WorldModel(config, seed=args.seed)
        model.compile(optimizer=keras.optimizers.Adam(args.lr, epsilon=1e-8,
                                                      global_clipnorm=1000.0))
    keys = model.config.obs_keys
    dataset = make_dataset(args.data, args.batch_size, args.seq_len, seed=args.seed,
                           obs_keys=keys)
    callbacks = [NonFiniteGuard(), AtomicModelCheckpoint(args.model)]
    val = None
    if args.val_data:
        val_eps = EpisodeStore(args.val_data).load()
        val = make_dataset(val_eps, args.batch_size, args.seq_len, seed=1, repeat=False,
                           obs_keys=keys)
        callbacks.append(ImaginationCallback(val_eps, Path(args.model).parent,
                                             log_dir=args.log_dir))
    if args.log_dir:
        callbacks.append(keras.callbacks.TensorBoard(args.log_dir))
    model.fit(dataset, epochs=args.epochs, steps_per_epoch=max(1, args.steps // args.epochs),
              validation_data=val, callbacks=callbacks, verbose=1)
    save_world_model(model, args.model)
    print(f"saved {args.model}")


def read_config(text: str) -> dict[str, Any]:
    """``--config``: a path to a JSON file, or JSON itself; a JSON object either way."""
    path = Path(text)
    source = f"--config {text}"
    if not text.lstrip().startswith(("{", "[")):
        if not path.is_file():
            raise ValueError(f"{source}: no such file (give a JSON file or inline JSON "
                             "starting with '{')")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{source}: must be a JSON object of RssmConfig fields, got "
                         f"{type(value).__name__}")
    return value


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rssm_tf.episodes import EpisodeStore
    from rssm_tf.world_model import evaluate_open_loop

    result = evaluate_open_loop(_load_model(args.model), EpisodeStore(args.data).load(),
                                args.context, args.horizon)
    names = [k.removesuffix("_mse") for k in result
             if k.endswith("_mse") and not k.startswith("mean_")]
    print(f"{'step':>4}" + "".join(f" {k + '_mse':>11} {'mean_pred':>10}" for k in names))
    for i in range(args.horizon):
        print(f"{i + 1:>4}" + "".join(f" {result[k + '_mse'][i]:>11.5f} "
                                      f"{result['mean_' + k + '_mse'][i]:>10.5f}"
                                      for k in names))
    if args.json:
        from rssm_tf.atomic import write_atomic

        write_atomic(args.json, json.dumps(result, indent=2).encode())


def cmd_imagine(args: argparse.Namespace) -> None:
    from rssm_tf.callbacks import ImaginationCallback
    from rssm_tf.episodes import EpisodeStore

    callback = ImaginationCallback(EpisodeStore(args.data).load(), Path(args.out).parent,
                                   args.context, args.horizon)
    callback.set_model(_load_model(args.model))
    callback.on_epoch_end(-1)
    frames = sorted(n for n in callback.paths if n.startswith("imagination_frames"))
    picture = callback.paths[frames[0] if frames else "imagination"]
    os.replace(picture, args.out)
    print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
    commands = plugins()
    command = argv[0] if argv else None
    try:
        if command in commands:
            return int(commands[command].load()(argv[1:]) or 0)
        args = _parser().parse_args(argv)
        handler = {"collect": cmd_collect, "train": cmd_train, "evaluate": cmd_evaluate,
                   "imagine": cmd_imagine}[args.command]
        handler(args)
    except ModuleNotFoundError as error:
        root = (error.name or "").split(".")[0]
        if root not in EXTRAS:
            raise
        print(f"rssm-tf {command}: error: this command needs {root}: "
              f'pip install "rssm-tf[{EXTRAS[root]}]"', file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        print(f"rssm-tf {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
