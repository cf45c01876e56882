"""Keras callbacks for world-model training: an imagination picture per epoch and a
guard that stops training when a metric goes non-finite."""

from __future__ import annotations

import io
import math
import os
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
    ``action="stop"`` it prints that message and ends ``fit`` normally.
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
                print(self.message)
                return


def imagination_figure(real_obs: np.ndarray, dream_obs: np.ndarray, real_reward: np.ndarray,
                       dream_reward: np.ndarray, context: int, title: str = "",
                       max_dims: int = 4) -> bytes:
    """PNG bytes: real vs open-loop imagined observation dims and reward over time.

    ``real_obs`` [T, O], ``dream_obs`` [T, O] (reconstructions for the context steps,
    imagination after), rewards [T]; a dashed line marks where imagination starts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = min(max_dims, real_obs.shape[-1])
    fig, axes = plt.subplots(dims + 1, 1, figsize=(7, 1.6 * (dims + 1)), sharex=True)
    steps = np.arange(len(real_obs))
    series = [(real_obs[:, i], dream_obs[:, i], f"obs[{i}]") for i in range(dims)]
    series.append((real_reward, dream_reward, "reward"))
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
    open-loop imagined observations and rewards of one held-out window) and, with
    ``log_dir``, the same image to TensorBoard under ``imagination``.

    ``episodes``: episode dicts; the first with ``context + horizon`` steps is used.
    """

    def __init__(self, episodes: list[dict[str, np.ndarray]], out_dir: str | os.PathLike,
                 context: int = 5, horizon: int = 15, log_dir: str | None = None) -> None:
        super().__init__()
        span = context + horizon
        chosen = [e for e in episodes if len(e["obs"]) >= span]
        if not chosen:
            raise ValueError(f"no episode has context + horizon = {span} steps")
        self.window = {k: v[None, :span].astype("float32") for k, v in chosen[0].items()}
        self.window["is_first"][:, 0] = 1.0
        self.out_dir = Path(out_dir)
        self.context, self.horizon = context, horizon
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.last_path: Path | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        w = self.window
        pred = self.model.open_loop(w["obs"], w["action"], w["is_first"], self.context,
                                    self.horizon)
        dream_obs = np.concatenate([pred["context_obs"][0], pred["obs"][0]])
        ctx_reward = w["reward"][0, :self.context]  # the reward is not reconstructed
        dream_reward = np.concatenate([ctx_reward, pred["reward"][0].numpy()])
        png = imagination_figure(w["obs"][0], dream_obs, w["reward"][0], dream_reward,
                                 self.context, title=f"epoch {epoch + 1}")
        self.last_path = write_atomic(self.out_dir / f"imagination_epoch{epoch + 1}.png", png)
        if self.writer is not None:
            with self.writer.as_default():
                tf.summary.image("imagination", tf.image.decode_png(png)[None], step=epoch)
            self.writer.flush()
