"""Keras callbacks for world-model training: an imagination picture per epoch and a
guard that stops training when a metric goes non-finite."""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rssm_tf.atomic import write_atomic


class NonFiniteMetricError(FloatingPointError):
    """A training metric became NaN or Inf; the message names it."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Checks every logged metric after each training batch.

    On NaN/Inf it stops training and, with ``action="raise"`` (the default), raises
    :class:`NonFiniteMetricError` naming the metric, epoch and batch; with
    ``action="stop"`` it issues that message as a ``RuntimeWarning`` and ends ``fit``
    normally (``self.message`` keeps it).
    """

    def __init__(self, action: str = "raise") -> None:
        super().__init__()
        if action not in ("raise", "stop"):
            raise ValueError(f"action must be 'raise' or 'stop', got {action!r}")
        self.action = action
        self.epoch = 0
        self.message: str | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            value = float(np.asarray(value))
            if not math.isfinite(value):
                self.message = (f"training metric '{name}' became {value} at epoch "
                                f"{self.epoch + 1}, batch {batch + 1}; training stopped")
                self.model.stop_training = True
                if self.action == "raise":
                    raise NonFiniteMetricError(self.message)
                warnings.warn(self.message, RuntimeWarning, stacklevel=2)
                return


def frames_figure(real: np.ndarray, dream: np.ndarray, context: int, title: str = "",
                  max_frames: int = 20) -> bytes:
    """PNG bytes: real frames (top row) and the model's frames (bottom row) side by
    side over time; left of the red line the model reconstructs the observed frames,
    right of it it imagines them open loop.

    ``real`` uint8 [T, H, W, C], ``dream`` floats in [0, 1] [T, H, W, C]; at most
    ``max_frames`` steps are shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = min(len(real), max_frames)
    real = np.asarray(real[:steps], np.float32) / 255.0
    dream = np.clip(np.asarray(dream[:steps], np.float32), 0.0, 1.0)
    height, width, channels = real.shape[1:]
    gap = max(1, width // 16)
    canvas = np.ones((2 * height + gap, steps * (width + gap) - gap, channels), np.float32)
    for t in range(steps):
        x = t * (width + gap)
        canvas[:height, x:x + width] = real[t]
        canvas[height + gap:, x:x + width] = dream[t]
    if channels == 1:
        canvas = canvas[..., 0]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * steps), 2.6))
    ax.imshow(canvas, cmap="gray" if channels == 1 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.axvline(context * (width + gap) - gap / 2 - 0.5, color="red", linewidth=1.5)
    ax.set_yticks([height / 2, height * 1.5 + gap], ["real", "model"])
    ax.set_xticks([t * (width + gap) + width / 2 for t in range(steps)],
                  [str(t) for t in range(steps)], fontsize=6)
    ax.set_xlabel("step (reconstruction left of the red line, imagination right)")
    ax.set_title(title or "open loop: real vs imagined frames", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def imagination_figure(real_obs: np.ndarray | dict[str, np.ndarray],
                       dream_obs: np.ndarray | dict[str, np.ndarray], real_reward: np.ndarray,
                       dream_reward: np.ndarray, context: int, title: str = "",
                       max_dims: int = 4) -> bytes:
    """PNG bytes: real vs open-loop imagined observation dims and reward over time.

    ``real_obs``, ``dream_obs``: [T, O] or a dict of vector keys [T, O_k]
    (reconstructions for the context steps, imagination after; the first
    ``max_dims`` dims of each key are drawn), rewards [T]; a dashed line marks where
    imagination starts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(real_obs, dict):
        real_obs, dream_obs = {"obs": real_obs}, {"obs": dream_obs}  # a label only
    series = [(real[:, i], dream_obs[key][:, i], f"{key}[{i}]")
              for key, real in real_obs.items() for i in range(min(max_dims, real.shape[-1]))]
    series.append((real_reward, dream_reward, "reward"))
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 1.6 * len(series)), sharex=True,
                             squeeze=False)
    axes = axes[:, 0]
    steps = np.arange(len(real_reward))
    for ax, (real, dream, label) in zip(axes, series):
        ax.plot(steps, real, color="black", label="real")
        ax.plot(steps, dream, color="tab:orange", linestyle="--", label="imagined")
        ax.axvline(context - 0.5, color="gray", linestyle=":")
        ax.set_ylabel(label)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[0].set_title(title or "open loop: context (left of the line), imagination (right)")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


class ImaginationCallback(keras.callbacks.Callback):
    """After each epoch, writes ``out_dir/imagination_epoch{N}.png`` (real vs
    open-loop imagined curves of the vector keys and the reward for one held-out
    window) and, per image key, the real and imagined frames side by side
    (:func:`frames_figure`) in ``imagination_frames_epoch{N}.png`` (one image key) or
    ``imagination_frames_<key>_epoch{N}.png`` (several); with ``log_dir``, the same
    pictures to TensorBoard under those names.

    ``episodes``: episode dicts; the first with ``context + horizon`` steps is used.
    """

    def __init__(self, episodes: list[dict[str, np.ndarray]], out_dir: str | os.PathLike,
                 context: int = 5, horizon: int = 15, log_dir: str | None = None) -> None:
        super().__init__()
        span = context + horizon
        chosen = [e for e in episodes if len(e["action"]) >= span]
        if not chosen:
            raise ValueError(f"no episode has context + horizon = {span} steps")
        # as stored; on_epoch_end gives each key the dtype the model's space says
        self.window = {k: v[None, :span] for k, v in chosen[0].items()}
        self.window["is_first"] = self.window["is_first"].astype("float32")  # a copy
        self.window["is_first"][:, 0] = 1.0
        self.out_dir = Path(out_dir)
        self.context, self.horizon = context, horizon
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.paths: dict[str, Path] = {}  # the pictures of the last epoch, by name

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        w, space = self.window, self.model.config.space
        keys = tuple(space)
        pred = self.model.open_loop({k: space[k].as_numpy(w[k]) for k in keys},
                                    w["action"].astype("float32"), w["is_first"],
                                    self.context, self.horizon)
        dream = {k: np.concatenate([pred[f"context_{k}"][0], pred[k][0]]) for k in keys}
        ctx_reward = w["reward"][0, :self.context]  # the reward is not reconstructed
        dream_reward = np.concatenate([ctx_reward, pred["reward"][0].numpy()])
        config, title = self.model.config, f"epoch {epoch + 1}"
        pictures = {"imagination": imagination_figure(
            {k: w[k][0] for k in config.vector_keys}, dream, w["reward"][0], dream_reward,
            self.context, title=title)}
        images = config.image_keys
        for key in images:
            name = "imagination_frames" + (f"_{key}" if len(images) > 1 else "")
            pictures[name] = frames_figure(w[key][0], dream[key], self.context,
                                           title=f"{title}: {key}")
        self.paths = {name: write_atomic(self.out_dir / f"{name}_epoch{epoch + 1}.png", png)
                      for name, png in pictures.items()}
        if self.writer is not None:
            with self.writer.as_default():
                for name, png in pictures.items():
                    tf.summary.image(name, tf.image.decode_png(png)[None], step=epoch)
            self.writer.flush()
