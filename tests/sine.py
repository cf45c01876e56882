"""Training windows of a damped oscillator driven by the actions: learnable dynamics
for the world-model and agent tests."""

import numpy as np
import tensorflow as tf


def sine_batches(n, b=4, t=8, seed=0, discrete=False):
    """``n`` batches {obs [b, t, 3], action [b, t, 2], reward, is_first, is_terminal}:
    actions uniform in [-1, 1], or one-hot of two classes when ``discrete``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        action = np.eye(2, dtype="f")[rng.integers(0, 2, (b, t))] if discrete else \
            rng.uniform(-1, 1, size=(b, t, 2)).astype("float32")
        phase = rng.uniform(0, 6, size=(b, 1))
        steps = np.arange(t)[None]
        obs = np.stack([np.sin(phase + 0.3 * steps), np.cos(phase + 0.3 * steps),
                        np.cumsum(action[..., 0], 1) * 0.1], -1).astype("float32")
        first = np.zeros((b, t), "float32")
        first[:, 0] = 1
        out.append({"obs": obs, "action": action, "reward": obs[..., 0].copy(),
                    "is_first": first, "is_terminal": np.zeros((b, t), "float32")})
    return out


def as_dataset(batches):
    """The batches as one tf.data element each."""
    return tf.data.Dataset.from_tensor_slices(
        {k: np.stack([b[k] for b in batches]) for k in batches[0]})
