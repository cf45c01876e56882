"""An independent implementation of the world model's math in plain numpy (float64),
written from ``docs/design.md`` sections 3-5. It reads the weights of an ``Rssm`` /
``WorldModel`` and calls none of ``rssm_tf``'s math, so the tests can hold the library
against it on every path (eager, ``tf.function``, XLA).

The block GRU is written the way docs/design.md states it: every block gets
``concat(its slice of h, x)`` and one [d + 3H, d] matrix, and the norm runs over all D
units. The library stores that matrix as two parts (the h rows per block, the x rows
side by side for all blocks); here they are joined back.
"""

from __future__ import annotations

import numpy as np

NOISE_EPS = 1e-6


def w(variable) -> np.ndarray:
    return np.asarray(variable.numpy(), np.float64)


# ------------------------------------------------------------------ element-wise
def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def symlog(x):
    return np.sign(x) * np.log1p(np.abs(x))


def symexp(x):
    return np.sign(x) * np.expm1(np.abs(x))


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


# ----------------------------------------------------------------------- layers
def norm(x, layer, kind, eps):
    """RMSNorm (``x / sqrt(mean(x^2) + eps) * scale``) or LayerNorm over the last axis."""
    if kind == "rms":
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w(layer.scale)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w(layer.gamma) + w(layer.beta)


def norm_dense(x, layer, kind, eps):
    """``L(x) = SiLU(Norm(x @ W))`` (no bias)."""
    return silu(norm(x @ w(layer.dense.kernel), layer.norm, kind, eps))


def mlp(x, layer, kind, eps):
    for hidden in layer.hidden:
        x = norm_dense(x, hidden, kind, eps)
    if layer.out is not None:
        x = x @ w(layer.out.kernel) + w(layer.out.bias)
    return x


def mix(logits, unimix):
    """``log((1 - unimix) softmax(l) + unimix / K)`` over the last axis."""
    k = logits.shape[-1]
    return np.log((1.0 - unimix) * softmax(logits) + unimix / k)


def gumbel_max(logits, noise):
    """One-hot of ``argmax(logits - log(-log(noise)))``; ``noise`` None: the mode."""
    if noise is not None:
        noise = np.clip(np.asarray(noise, np.float64), NOISE_EPS, 1 - NOISE_EPS)
        logits = logits - np.log(-np.log(noise))
    return np.eye(logits.shape[-1])[logits.argmax(-1)]


# ------------------------------------------------------------------------- RSSM
class Reference:
    """The math of one ``Rssm`` layer (its weights read once, at construction)."""

    def __init__(self, rssm) -> None:
        self.rssm = rssm
        c = self.config = rssm.config
        self.kind, self.eps = c.norm, c.norm_eps

    def L(self, x, layer):  # noqa: N802 - the design's name
        return norm_dense(x, layer, self.kind, self.eps)

    def gru(self, x, h):
        g_count, D = self.config.n_blocks, self.config.deterministic_size
        gru = self.rssm.gru
        w_x = w(gru.input_kernel)  # [3H, width]
        if g_count == 0:  # dense: r, c, u = split(Norm(concat(x, h) @ W + b))
            pre = np.concatenate([x, h], -1) @ np.concatenate([w_x, w(gru.hidden.kernel)]) \
                + w(gru.hidden.bias)
            r, c, u = np.split(norm(pre, gru.norm, self.kind, self.eps), 3, -1)
        else:
            d = D // g_count
            hidden = []
            for g in range(g_count):
                w_g = np.concatenate([w(gru.hidden.kernel)[g], w_x[:, g * d:(g + 1) * d]])
                xg = np.concatenate([h[:, g * d:(g + 1) * d], x], -1)  # [B, d + 3H]
                hidden.append(xg @ w_g + w(gru.hidden.bias)[g])
            y = silu(norm(np.concatenate(hidden, -1), gru.norm, self.kind, self.eps))
            parts = [y[:, g * d:(g + 1) * d] @ w(gru.gates.kernel)[g] + w(gru.gates.bias)[g]
                     for g in range(g_count)]
            r, c, u = (np.concatenate([np.split(p, 3, -1)[i] for p in parts], -1)
                       for i in range(3))
        r = sigmoid(r)
        c = np.tanh(r * c)
        u = sigmoid(u - 1.0)
        return u * c + (1.0 - u) * h

    def core(self, h, z, action):
        a = action / np.maximum(1.0, np.abs(action))
        r = self.rssm
        x = np.concatenate([self.L(h, r.inp_h), self.L(z, r.inp_z), self.L(a, r.inp_a)], -1)
        return self.gru(x, h)

    def logits(self, flat):
        c = self.config
        return mix(flat.reshape(flat.shape[:-1] + (c.n_categories, c.n_classes)), c.unimix)

    def prior(self, h):
        return self.logits(mlp(h, self.rssm.prior_net, self.kind, self.eps))

    def embed(self, obs):
        """Vector observations: the encoder MLP on symlog(obs) (no output layer)."""
        return mlp(symlog(obs), self.rssm.encoder.vector, self.kind, self.eps)

    def post(self, h, obs):
        x = np.concatenate([h, self.embed(obs)], -1)
        return self.logits(mlp(x, self.rssm.post_net, self.kind, self.eps))

    def sample(self, logits, noise):
        onehot = gumbel_max(logits, noise)
        return onehot.reshape(onehot.shape[:-2] + (-1,))

    def obs_step(self, h, z, action, obs, noise=None):
        h = self.core(h, z, action)
        post = self.post(h, obs)
        return h, self.sample(post, noise), post, self.prior(h)

    def imagine_step(self, h, z, action, noise=None):
        h = self.core(h, z, action)
        prior = self.prior(h)
        return h, self.sample(prior, noise), prior

    def heads(self, h, z):
        feat = np.concatenate([h, z], -1)
        r = self.rssm
        return (mlp(feat, r.reward_head, self.kind, self.eps),
                mlp(feat, r.continue_head, self.kind, self.eps)[..., 0])

    def observe(self, obs, actions, is_first, noise=None):
        """[B, T, ...] inputs; the state and the previous action reset where is_first."""
        c = self.config
        b, steps = actions.shape[:2]
        h, z = np.zeros((b, c.deterministic_size)), np.zeros((b, c.stoch_size))
        hs, zs, posts, priors = [], [], [], []
        for t in range(steps):
            keep = (1.0 - is_first[:, t])[:, None]
            h, z, post, prior = self.obs_step(h * keep, z * keep, actions[:, t] * keep,
                                              obs[:, t],
                                              None if noise is None else noise[:, t])
            hs.append(h), zs.append(z), posts.append(post), priors.append(prior)
        return (np.stack(hs, 1), np.stack(zs, 1), np.stack(posts, 1), np.stack(priors, 1))


# ------------------------------------------------------------------------ losses
def twohot_bins(num_bins, low, high, space):
    grid = np.linspace(low, high, num_bins)
    if low == -high:
        grid = (grid - grid[::-1]) / 2.0
    return symexp(grid) if space == "raw" else grid


def twohot_encode(y, bins, space):
    x = np.clip(symlog(y) if space == "symlog" else y, bins[0], bins[-1])
    out = np.zeros(np.shape(x) + (len(bins),))
    for index in np.ndindex(np.shape(x)):
        v = x[index]
        k = min(int(np.searchsorted(bins, v, side="right")) - 1, len(bins) - 2)
        upper = (v - bins[k]) / (bins[k + 1] - bins[k])
        out[index + (k,)] += 1.0 - upper
        out[index + (k + 1,)] += upper
    return out


def twohot_loss(logits, y, bins, space):
    return -(twohot_encode(y, bins, space) * log_softmax(logits)).sum(-1)


def twohot_decode(logits, bins, space):
    total = (softmax(logits) * bins).sum(-1)
    return symexp(total) if space == "symlog" else total


def kl(p_logits, q_logits):
    """KL(p || q) summed over K and over the S groups."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum((-2, -1))


def bce_with_logits(logit, label):
    return np.maximum(logit, 0) - logit * label + np.log1p(np.exp(-np.abs(logit)))


def world_model_loss(model, batch, noise):
    """The scalar loss and its terms for one batch of vector observations (means over
    B and T), docs/design.md section 5."""
    ref = Reference(model.rssm)
    hs, zs, post, prior = ref.observe(batch["obs"], batch["action"], batch["is_first"],
                                      noise)
    feat = np.concatenate([hs, zs], -1)
    recon = mlp(feat, model.decoder.vector, ref.kind, ref.eps)
    rec = ((recon - symlog(batch["obs"])) ** 2).sum(-1)
    reward_logits, cont_logit = ref.heads(hs, zs)
    t = model.twohot
    bins = twohot_bins(t.num_bins, t.low, t.high, t.space)
    rew = twohot_loss(reward_logits, batch["reward"], bins, t.space)
    con = bce_with_logits(cont_logit, 1.0 - batch["is_terminal"])
    raw = kl(post, prior)
    dyn = np.maximum(raw, model.kl.free_nats)
    rep = np.maximum(raw, model.kl.free_nats)  # same value; the gradients differ
    kl_loss = (model.kl.dyn_scale * dyn + model.kl.rep_scale * rep).mean()
    loss = (model.rec_scale * rec + model.rew_scale * rew + model.con_scale * con).mean() \
        + kl_loss
    return {"loss": loss, "rec": rec.mean(), "rew": rew.mean(), "con": con.mean(),
            "dyn": dyn.mean(), "rep": rep.mean(), "kl": raw.mean()}
