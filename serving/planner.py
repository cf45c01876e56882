"""``ClientPlanner``: the cross-entropy planner on exported files or TF Serving;
``ClientActor``: a Dreamer's exported actor, with the same calls.

The algorithm runs inside the export (``plan_continuous`` / ``plan_discrete``, the
same function ``rssm_tf.planning.Planner`` compiles); this class keeps its settings
and the posterior state, and draws the candidates' noise from a seed, so an agent on a
robot needs only the export directory and onnxruntime::

    client = WorldModelClient.from_export("out/export", backend="onnx")
    planner = ClientPlanner(client, kind="continuous", low=-2.0, high=2.0)
    planner.reset(1)
    planner.observe(np.zeros([1, A]), obs[None])   # first step: no action yet
    action = planner.plan()                        # [1, A]

It has the same calls as the Keras ``Planner`` (``reset``, ``observe``, ``plan``,
``plan_details``), and with the same settings and seed both draw the same noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rssm_tf_serving.client import WorldModelClient


class ClientPlanner:
    """CEM over a :class:`WorldModelClient`: N ``candidates`` of ``horizon`` steps,
    ``iterations`` refits to the ``top_k`` best, ``kind`` "continuous" (with finite
    ``low`` / ``high``) or "discrete" (one-hot actions), ``discount``, ``seed``."""

    def __init__(self, client: WorldModelClient, horizon: int = 12, candidates: int = 500,
                 top_k: int = 50, iterations: int = 4, kind: str = "continuous",
                 low: Any = -1.0, high: Any = 1.0, discount: float = 0.99,
                 seed: int = 0) -> None:
        for name, value in (("horizon", horizon), ("candidates", candidates),
                            ("top_k", top_k), ("iterations", iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if top_k > candidates:
            raise ValueError(f"top_k must be <= candidates ({candidates}), got {top_k}")
        if kind not in ("continuous", "discrete"):
            raise ValueError(f"kind must be 'continuous' or 'discrete', got {kind!r}")
        self.client, self.kind, self.discount = client, kind, discount
        self.obs_keys = client.obs_keys
        self.shape = (iterations, candidates, horizon, client.action_dim)
        self.top_k = top_k
        self.low, self.high = (low, high) if kind == "continuous" else (None, None)
        self.rng = np.random.default_rng(seed)

    def reset(self, batch_size: int = 1) -> None:
        self.client.reset(batch_size)

    def observe(self, action: Any, obs: Any) -> None:
        """One posterior step (the mode): ``action`` [B, A] led to ``obs``."""
        self.client.observe(action, obs, sample="mode")

    def noise(self, batch: int) -> np.ndarray:
        """The next candidates' noise [I, B, N, H, A] from the seeded generator."""
        iterations, candidates, horizon, dim = self.shape
        shape = (iterations, batch, candidates, horizon, dim)
        if self.kind == "continuous":
            return self.rng.standard_normal(shape, dtype=np.float32)
        return self.rng.uniform(1e-6, 1.0 - 1e-6, shape).astype(np.float32)

    def plan(self, noise: np.ndarray | None = None) -> np.ndarray:
        """The planned first action [B, A] from the current state."""
        return self.plan_details(noise)["action"]

    def plan_details(self, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``action`` [B, A], ``plan`` [B, H, A], ``elite_return`` [B], ``returns`` [B, N]."""
        if noise is None:
            if self.client.batch_size is None:
                raise RuntimeError("no state yet: call reset(batch_size) first")
            noise = self.noise(self.client.batch_size)
        return self.client.plan(self.kind, noise, self.top_k, self.discount, self.low,
                                self.high)


class ClientActor:
    """A Dreamer's exported actor over a :class:`WorldModelClient` with the planner's
    calls (``reset``, ``observe``, ``plan``, ``obs_keys``; as the Keras
    ``rssm_tf.ActorPolicy``): ``observe`` runs one ``act`` call (the posterior's mode,
    then the actor), ``plan`` returns that action. ``sample``: the actor's sample, its
    noise drawn from ``seed`` (uniform or standard normal, as the actor takes it), or
    its mode (``sample=False``)."""

    def __init__(self, client: WorldModelClient, sample: bool = True, seed: int = 0) -> None:
        if client.actor is None:
            raise ValueError("the client's export has no actor (export a Dreamer)")
        self.client, self.sample = client, bool(sample)
        self.obs_keys = client.obs_keys
        self.rng = np.random.default_rng(seed)
        self._action: np.ndarray | None = None

    def reset(self, batch_size: int = 1) -> None:
        self.client.reset(batch_size)
        self._action = None

    def observe(self, action: Any, obs: Any) -> None:
        """One ``act`` step: ``action`` [B, A] led to ``obs``."""
        if not self.sample:
            self._action = self.client.act(obs, action, sample="mode")["action"]
            return
        if self.client.batch_size is None:
            raise RuntimeError("no state yet: call reset(batch_size) first")
        shape = (self.client.batch_size, self.client.action_dim)
        noise = self.rng.uniform(1e-6, 1.0 - 1e-6, shape) if self.client.actor["discrete"] \
            else self.rng.standard_normal(shape)
        self._action = self.client.act(obs, action, noise=noise.astype(np.float32))["action"]

    def plan(self) -> np.ndarray:
        """The actor's action [B, A] for the last observation."""
        if self._action is None:
            raise RuntimeError("no observation yet: call reset() and observe() first")
        return self._action
