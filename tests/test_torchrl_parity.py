"""rssm_tf against TorchRL 0.14's DreamerV3 RSSM, with TorchRL's weights copied in.

The committed fixture (``fixtures/torchrl_rssm_small.npz``, made by
``fixtures/torchrl_rssm.py``) runs on every CI run; where ``torch`` and ``torchrl``
import (the ``bench`` extra), the same comparison also runs live at the seed sizes.

What maps exactly: the block GRU (TorchRL's [G, d + 3H, d] block kernel is our
per-block h rows plus the x columns of the input kernel; biases and the per-unit norm
scale as they are), the input projections, the prior and posterior, the encoder and the
heads (``Linear`` weights transposed). Two differences no weight mapping bridges, and
what the test does about them:

- TorchRL's hidden ``Linear`` layers (before each RMSNorm) have biases; ours, like
  DreamerV3's normalised layers, have none. The mapping takes them only when they are
  zero (TorchRL's initialisation) and refuses any other value.
- TorchRL samples a class by inverse CDF from one uniform per group ([..., S]); we
  sample by Gumbel-max from one uniform per class ([..., S, K]). The test draws the
  class from TorchRL's uniform over *our* probabilities and passes our step the
  Gumbel noise that selects it (1 - 1e-6 on that class, 1e-6 elsewhere), so equal
  samples are a check of equal probabilities.
TorchRL returns raw logits; ours are unimix-adjusted, so theirs are mixed to compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rssm_tf import Rssm, RssmConfig

FIXTURE = Path(__file__).parent / "fixtures" / "torchrl_rssm_small.npz"


def linear(weights: dict, prefix: str, dense, bias=None) -> None:
    """A torch ``Linear`` [out, in] into a Keras kernel [in, out] (+ bias)."""
    dense.kernel.assign(weights[f"{prefix}.weight"].T)
    if bias is not None:
        bias.assign(weights[f"{prefix}.bias"])
    elif f"{prefix}.bias" in weights and np.any(weights[f"{prefix}.bias"]):
        raise ValueError(f"{prefix}.bias is nonzero: rssm_tf's normalised layers have no "
                         "bias before the norm, so this TorchRL model cannot be mapped")


def norm_dense(weights: dict, prefix: str, layer) -> None:
    """TorchRL's Sequential(Linear, RMSNorm, SiLU) at ``prefix`` into a NormDense."""
    linear(weights, f"{prefix}.0", layer.dense)
    layer.norm.scale.assign(weights[f"{prefix}.1.weight"])


def mlp(weights: dict, prefix: str, layers: list[int], mlp_layer) -> None:
    """Sequential Linear/RMSNorm/SiLU triples at ``layers`` (+ the output Linear)."""
    for hidden, index in zip(mlp_layer.hidden, layers):
        linear(weights, f"{prefix}.{index}", hidden.dense)
        hidden.norm.scale.assign(weights[f"{prefix}.{index + 1}.weight"])
    if mlp_layer.out is not None:
        out = 3 * len(layers)
        linear(weights, f"{prefix}.{out}", mlp_layer.out, mlp_layer.out.bias)


def load_torchrl_weights(rssm: Rssm, w: dict[str, np.ndarray]) -> None:
    c = rssm.config
    G, D, H = c.n_blocks, c.deterministic_size, c.hidden_size
    d = D // G
    for ours, theirs in ((rssm.inp_h, "belief"), (rssm.inp_z, "state"),
                         (rssm.inp_a, "action")):
        norm_dense(w, f"prior.rnn.{theirs}_projection", ours)
    block = w["prior.rnn.hidden_layers.0.weight"]  # [G, d + 3H, d]
    assert block.shape == (G, d + 3 * H, d), block.shape
    rssm.gru.hidden.kernel.assign(block[:, :d])
    rssm.gru.input_kernel.assign(np.concatenate(list(block[:, d:]), axis=1))  # [3H, D]
    rssm.gru.hidden.bias.assign(w["prior.rnn.hidden_layers.0.bias"].reshape(G, d))
    rssm.gru.norm.scale.assign(w["prior.rnn.hidden_layers.1.weight"])
    rssm.gru.gates.kernel.assign(w["prior.rnn.gates.weight"])
    rssm.gru.gates.bias.assign(w["prior.rnn.gates.bias"].reshape(G, 3 * d))
    mlp(w, "prior.rnn_to_prior_projector", [0, 3], rssm.prior_net)
    mlp(w, "post.obs_rnn_to_post_projector", [0], rssm.post_net)
    mlp(w, "encoder.model", [0, 3, 6], rssm.encoder.vector)
    mlp(w, "reward.model", [0, 3], rssm.reward_head)
    mlp(w, "continue.model", [0, 3], rssm.continue_head)


def mixed(raw: np.ndarray, unimix: float = 0.01) -> np.ndarray:
    """TorchRL's ``_unimix_probs`` as log-probabilities (our logits' convention)."""
    e = np.exp(raw - raw.max(-1, keepdims=True))
    return np.log((1 - unimix) * e / e.sum(-1, keepdims=True) + unimix / raw.shape[-1])


def selecting_noise(log_probs: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Gumbel noise [B, S, K] that makes Gumbel-max pick the class TorchRL's inverse CDF
    picks with ``uniform`` [B, S] from the same probabilities."""
    cdf = np.cumsum(np.exp(log_probs.astype(np.float64)), -1)
    k = log_probs.shape[-1]
    index = np.minimum((uniform[..., None] > cdf).sum(-1), k - 1)
    return np.where(np.eye(k, dtype=bool)[index], 1 - 1e-6, 1e-6).astype(np.float32)


def run_ours(rssm: Rssm, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    steps, batch = data["action"].shape[:2]
    state = rssm.initial_state(batch)
    out: dict[str, list] = {k: [] for k in ("h", "z", "prior", "post", "reward_logits",
                                            "continue_logits")}
    for t in range(steps):
        action, obs = data["action"][t], data["obs"][t]
        _, post, _ = rssm.obs_step(state, action, obs, sample=False)
        noise = selecting_noise(post.numpy(), data["uniform_post"][t])
        state, post, prior = rssm.obs_step(state, action, obs, noise=noise)
        heads = rssm.predict(state.h, state.z)
        for key, value in (("h", state.h), ("z", state.z), ("prior", prior), ("post", post),
                           ("reward_logits", heads["reward_logits"]),
                           ("continue_logits", heads["continue_logits"])):
            out[key].append(np.asarray(value))
    return {k: np.stack(v) for k, v in out.items()}


def compare(ours: dict, theirs: dict, atol: float = 1e-5) -> None:
    np.testing.assert_array_equal(ours["z"], theirs["z"])
    assert ours["z"].sum() == ours["z"].shape[0] * ours["z"].shape[1] * \
        theirs["prior_raw"].shape[-2]  # one class per group, every step
    pairs = (("h", theirs["h"]), ("prior", mixed(theirs["prior_raw"])),
             ("post", mixed(theirs["post_raw"])),
             ("reward_logits", theirs["reward_logits"]),
             ("continue_logits", theirs["continue_logits"]))
    for key, want in pairs:
        np.testing.assert_allclose(ours[key], want, atol=atol, rtol=1e-5, err_msg=key)


def small_rssm(sizes: dict) -> Rssm:
    return Rssm(RssmConfig(**sizes))


def test_committed_torchrl_fixture_is_reproduced():
    with np.load(FIXTURE) as f:
        weights = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
        data = {k[3:]: f[k] for k in f.files if k.startswith("in/")}
        theirs = {k[4:]: f[k] for k in f.files if k.startswith("out/")}
    sizes = dict(obs_dim=5, action_dim=3, deterministic_size=32, n_categories=4,
                 n_classes=5, hidden_size=16, n_blocks=4)
    rssm = small_rssm(sizes)
    load_torchrl_weights(rssm, weights)
    ours = run_ours(rssm, data)
    assert ours["h"].shape == (16, 3, 32)
    compare(ours, theirs)


def test_nonzero_torchrl_hidden_bias_is_refused():
    with np.load(FIXTURE) as f:
        weights = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
    weights["prior.rnn.belief_projection.0.bias"] = np.ones(16, np.float32)
    rssm = small_rssm(dict(obs_dim=5, action_dim=3, deterministic_size=32, n_categories=4,
                           n_classes=5, hidden_size=16, n_blocks=4))
    with pytest.raises(ValueError, match="belief_projection.0.bias is nonzero"):
        load_torchrl_weights(rssm, weights)


def test_live_torchrl_at_seed_sizes():
    pytest.importorskip("torch", reason="torch is not installed (pip install "
                                        '"rssm-tf[bench]" for the live TorchRL comparison)')
    pytest.importorskip("torchrl", reason="torchrl is not installed (the bench extra)")
    import sys

    sys.path.insert(0, str(FIXTURE.parent))
    import torchrl_rssm

    sizes = dict(obs_dim=6, action_dim=3, deterministic_size=512, n_categories=32,
                 n_classes=32, hidden_size=512, n_blocks=8)
    modules = torchrl_rssm.build(sizes, seed=3)
    data = torchrl_rssm.inputs(sizes, seed=3)
    theirs = torchrl_rssm.rollout(modules, data, sizes)
    rssm = small_rssm(sizes)
    load_torchrl_weights(rssm, torchrl_rssm.weights(modules))
    compare(run_ours(rssm, data), theirs)
