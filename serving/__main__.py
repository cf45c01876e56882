"""``python -m serving``: run a short episode through a chosen backend and print it.

    python -m serving --export out/export --backend onnx
    python -m serving --export out/export --backend openvino
    python -m serving --export out/export --backend rest --url http://localhost:8501
    python -m serving --export out/export --backend grpc --target localhost:8500
    python -m serving --export out/export --backend savedmodel --episode ep.npz

Without ``--episode`` the observations and actions are random with the exported
sizes. Never imports ``rssm_tf``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from rssm_tf_serving.client import BACKENDS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rssm-tf serve", description=__doc__.split("\n")[0])
    parser.add_argument("--export", required=True, help="export directory (manifest.json)")
    parser.add_argument("--backend", choices=list(BACKENDS), default="onnx",
                        help="what runs the model (onnx)")
    parser.add_argument("--url", default="http://localhost:8501", help="REST base URL")
    parser.add_argument("--target", default="localhost:8500", help="gRPC host:port")
    parser.add_argument("--episode", default=None, help="an episode .npz to replay")
    parser.add_argument("--steps", type=int, default=10, help="steps to observe (10)")
    parser.add_argument("--horizon", type=int, default=5, help="steps to imagine after (5)")
    parser.add_argument("--sample", choices=["sample", "mode"], default="mode")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from rssm_tf_serving.backends import ServingError
    from rssm_tf_serving.client import WorldModelClient

    options = {"rest": {"url": args.url}, "grpc": {"target": args.target}}.get(args.backend, {})
    try:
        client = WorldModelClient.from_export(args.export, args.backend, **options)
        rng = np.random.default_rng(0)
        if args.episode:
            with np.load(args.episode) as ep:
                obs = {k: ep[k] for k in client.obs_keys}
                action = ep["action"]
        else:
            obs = client.random_observation(rng, args.steps)
            action = rng.uniform(-1, 1, (args.steps, client.action_dim)).astype(np.float32)
        steps = min(args.steps, len(action))
        client.reset(1)
        print(f"backend {args.backend}: observing {steps} steps")
        for t in range(steps):
            out = client.observe(action[t:t + 1], {k: v[t:t + 1] for k, v in obs.items()},
                                 sample=args.sample)
            now = client.predict()
            classes = out["z"].reshape(client.groups, client.classes).argmax(-1)
            print(f"  t={t:<3} reward {now['reward'][0]:+.4f}  continue "
                  f"{now['continue_prob'][0]:.3f}  z classes {classes[:8].tolist()}...")
        actions = np.repeat(action[steps - 1:steps][None], args.horizon, axis=1)
        dream = client.imagine(actions, sample=args.sample)
        print(f"imagined {args.horizon} steps: reward {np.round(dream['reward'][0], 4).tolist()}")
        print(f"  continue {np.round(dream['continue_prob'][0], 3).tolist()}")
    except (ServingError, ValueError, TypeError, OSError) as error:
        print(f"python -m serving: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
