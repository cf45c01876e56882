"""The library against an independent numpy implementation of docs/design.md
(``numpy_reference.py``), on every path a user runs: eager, ``tf.function``, XLA."""

import numpy as np
import pytest
import tensorflow as tf
from numpy_reference import (
    Reference,
    kl,
    symlog,
    twohot_bins,
    twohot_decode,
    twohot_encode,
    twohot_loss,
    world_model_loss,
)

from rssm_tf import KlBalanceConfig, Rssm, RssmConfig, RssmState, TwohotEncoder
from rssm_tf.losses import kl_balanced_loss
from rssm_tf.world_model import WorldModel

SEED_SIZES = RssmConfig(obs_dim=6, action_dim=3)  # D 512, 32x32, H 512, 8 blocks
CONFIGS = {
    "seed": SEED_SIZES,
    "dense_gru_layer_norm": RssmConfig(obs_dim=5, action_dim=2, deterministic_size=24,
                                       n_categories=4, n_classes=5, hidden_size=16,
                                       n_blocks=0, norm="layer"),
    "blocks_no_unimix": RssmConfig(obs_dim=5, action_dim=2, deterministic_size=24,
                                   n_categories=3, n_classes=4, hidden_size=8, n_blocks=3,
                                   unimix=0.0),
}
PATHS = ("eager", "function", "xla")


def compiled(fn, path):
    if path == "eager":
        return fn
    return tf.function(fn, jit_compile=path == "xla", autograph=False)


def randomise(layer, rng, scale=0.3):
    """Non-trivial values everywhere (norm scales, biases and the zero-initialised
    reward output included), so no term of the math hides behind an init value."""
    for v in layer.weights:
        if v.trainable:
            v.assign(rng.normal(size=v.shape).astype("float32") * scale
                     + (1.0 if "scale" in v.path or "gamma" in v.path else 0.0))


def step_inputs(config, rng, batch=3):
    c = config
    h = rng.normal(size=(batch, c.deterministic_size)) * 0.7
    z = np.eye(c.n_classes)[rng.integers(0, c.n_classes, (batch, c.n_categories))]
    return dict(h=h.astype("float32"), z=z.reshape(batch, -1).astype("float32"),
                # actions beyond 1 in size exercise a / max(1, |a|)
                action=(rng.normal(size=(batch, c.action_dim)) * 2).astype("float32"),
                obs=(rng.normal(size=(batch, c.obs_dim)) * 5).astype("float32"),
                noise=rng.uniform(0.01, 0.99, (batch, c.n_categories, c.n_classes))
                .astype("float32"))


def close(got, want, what, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=atol, rtol=1e-5,
                               err_msg=what)


@pytest.fixture(scope="module", params=list(CONFIGS))
def built(request):
    rng = np.random.default_rng(list(CONFIGS).index(request.param))
    rssm = Rssm(CONFIGS[request.param], seed=0)
    randomise(rssm, rng)
    return request.param, rssm, Reference(rssm), rng


@pytest.mark.parametrize("path", PATHS)
def test_obs_step_and_imagine_step_equal_the_reference(built, path):
    name, rssm, ref, rng = built
    x = step_inputs(rssm.config, rng)

    def steps(h, z, action, obs, noise):
        state, post, prior = rssm.obs_step(RssmState(h, z), action, obs, noise=noise)
        mode, _, _ = rssm.obs_step(RssmState(h, z), action, obs, sample=False)
        dream, dream_prior = rssm.imagine_step(RssmState(h, z), action, noise=noise,
                                               return_logits=True)
        heads = rssm.predict(state.h, state.z)
        return (state.h, state.z, post, prior, mode.z, dream.h, dream.z, dream_prior,
                heads["reward_logits"], heads["continue_logits"], heads["reward"])

    got = [t.numpy() for t in compiled(steps, path)(*(tf.constant(x[k]) for k in
                                                      ("h", "z", "action", "obs", "noise")))]
    h, z, post, prior = ref.obs_step(x["h"], x["z"], x["action"], x["obs"], x["noise"])
    close(got[0], h, f"{name} {path} h")
    close(got[2], post, f"{name} {path} post_logits")
    close(got[3], prior, f"{name} {path} prior_logits")
    np.testing.assert_array_equal(got[1], z)  # exact one-hot, the same sample
    np.testing.assert_array_equal(got[4], ref.sample(post, None))  # the mode
    h2, z2, prior2 = ref.imagine_step(x["h"], x["z"], x["action"], x["noise"])
    close(got[5], h2, f"{name} {path} imagine h")
    np.testing.assert_array_equal(got[6], z2)
    close(got[7], prior2, f"{name} {path} imagine prior")
    reward_logits, cont_logit = ref.heads(h, z)
    close(got[8], reward_logits, "reward logits")
    close(got[9], cont_logit, "continue logit")
    t = rssm.twohot
    want = twohot_decode(reward_logits, twohot_bins(t.num_bins, t.low, t.high, t.space),
                         t.space)
    # symexp multiplies float32 rounding by |reward|: compare where the bins live
    close(symlog(got[10].astype(np.float64)), symlog(want), "reward (symlog)")


def test_observe_with_resets_equals_the_reference(built):
    name, rssm, ref, rng = built
    c = rssm.config
    b, steps = 2, 5
    obs = rng.normal(size=(b, steps, c.obs_dim)).astype("float32")
    actions = rng.normal(size=(b, steps, c.action_dim)).astype("float32")
    is_first = np.zeros((b, steps), "float32")
    is_first[:, 0] = 1
    is_first[1, 3] = 1  # a reset in the middle of one row
    noise = rng.uniform(0.01, 0.99, (b, steps, c.n_categories, c.n_classes)).astype("f")
    states, post, prior = rssm.observe(obs, actions, is_first, noise=noise)
    hs, zs, posts, priors = ref.observe(obs, actions, is_first, noise)
    close(states.h.numpy(), hs, f"{name} observe h")
    np.testing.assert_array_equal(states.z.numpy(), zs)
    close(post.numpy(), posts, f"{name} observe post")
    close(prior.numpy(), priors, f"{name} observe prior")


def test_twohot_and_kl_balance_equal_the_reference(rng):
    for space in ("symlog", "raw"):
        t = TwohotEncoder(space=space)
        bins = twohot_bins(t.num_bins, t.low, t.high, t.space)
        close(t.bins.numpy(), bins, "bins", atol=1e-6 if space == "symlog" else 1.0)
        y = np.array([0.0, 0.3, -2.5, 17.0, 1e4, -1e8], "float32")
        logits = rng.normal(size=(6, 255)).astype("float32")
        close(t.encode(y).numpy(), twohot_encode(y.astype(np.float64), bins, space),
              f"{space} encode", atol=2e-5)
        close(t.loss(logits, y).numpy(), twohot_loss(logits, y.astype(np.float64), bins,
                                                     space), f"{space} loss", atol=1e-4)
        close(t.decode(logits).numpy(), twohot_decode(logits, bins, space), "decode",
              atol=1e-4 if space == "symlog" else 10.0)
    post = np.log(rng.dirichlet(np.ones(4), (3, 2, 5)))  # [B, T?]... [3, 2, S=5, K=4]
    prior = np.log(rng.dirichlet(np.ones(4), (3, 2, 5)))
    raw = kl(post, prior)
    for cfg in (KlBalanceConfig(), KlBalanceConfig(dyn_scale=1.0, rep_scale=0.3,
                                                   free_nats=float(np.median(raw)))):
        got = kl_balanced_loss(tf.constant(post, tf.float32), tf.constant(prior, tf.float32),
                               cfg)
        clipped = np.maximum(raw, cfg.free_nats)
        close(got.kl.numpy(), raw, "kl")
        close(got.dyn.numpy(), clipped, "dyn")
        close(got.loss.numpy(), (cfg.dyn_scale * clipped + cfg.rep_scale * clipped).mean(),
              "kl loss")


def loss_batch(config, rng, b=3, steps=6):
    c = config
    is_first = np.zeros((b, steps), "float32")
    is_first[:, 0] = 1
    is_first[2, 4] = 1
    terminal = np.zeros((b, steps), "float32")
    terminal[0, 5] = terminal[2, 3] = 1  # terminal steps: continue target 0
    return {"obs": (rng.normal(size=(b, steps, c.obs_dim)) * 3).astype("float32"),
            "action": rng.normal(size=(b, steps, c.action_dim)).astype("float32"),
            "reward": (rng.normal(size=(b, steps)) * 4).astype("float32"),
            "is_first": is_first, "is_terminal": terminal}


@pytest.mark.parametrize("config_name", ["seed", "dense_gru_layer_norm"])
@pytest.mark.parametrize("path", PATHS)
def test_world_model_loss_with_terminal_steps_equals_the_reference(config_name, path):
    rng = np.random.default_rng(11)
    model = WorldModel(CONFIGS[config_name], kl=KlBalanceConfig(free_nats=0.5), seed=0)
    randomise(model, rng, scale=0.1)
    batch = loss_batch(model.config, rng)
    c = model.config
    noise = rng.uniform(0.01, 0.99, (3, 6, c.n_categories, c.n_classes)).astype("float32")
    want = world_model_loss(model, batch, noise)
    fn = compiled(lambda b, n: model.compute_losses(b, n), path)
    loss, logs = fn({k: tf.constant(v) for k, v in batch.items()}, tf.constant(noise))
    close(loss.numpy(), want["loss"], f"{path} loss", atol=1e-4)
    for key in ("rec", "rew", "con", "dyn", "rep", "kl"):
        close(logs[key].numpy(), want[key], f"{path} {key}", atol=1e-4)


def test_loss_scales_move_the_loss_as_they_should():
    rng = np.random.default_rng(5)
    config = CONFIGS["blocks_no_unimix"]
    base = WorldModel(config, seed=0)
    randomise(base, rng, scale=0.1)
    batch = {k: tf.constant(v) for k, v in loss_batch(config, rng).items()}
    noise = tf.constant(rng.uniform(0.01, 0.99, (3, 6, 3, 4)).astype("float32"))
    _, logs = base.compute_losses(batch, noise)
    terms = {k: float(logs[k]) for k in ("rec", "rew", "con", "dyn", "rep")}
    scaled = WorldModel(config, rec_scale=2.0, rew_scale=0.5, con_scale=3.0,
                        kl=KlBalanceConfig(dyn_scale=0.25, rep_scale=1.0), seed=0)
    scaled.set_weights(base.get_weights())
    loss, _ = scaled.compute_losses(batch, noise)
    want = (2.0 * terms["rec"] + 0.5 * terms["rew"] + 3.0 * terms["con"]
            + 0.25 * terms["dyn"] + 1.0 * terms["rep"])
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # terminal steps count: flipping them changes only the continue term
    flipped = dict(batch, is_terminal=1.0 - batch["is_terminal"])
    _, logs2 = base.compute_losses(flipped, noise)
    assert float(logs2["con"]) != pytest.approx(terms["con"], rel=1e-3)
    assert float(logs2["rec"]) == pytest.approx(terms["rec"], rel=1e-6)
