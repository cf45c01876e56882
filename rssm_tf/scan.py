"""The observe loop with a hand-written backward pass.

Autodiff of a ``tf.while_loop`` adds every step's weight gradients into full-size
buffers (for the seed model ~4M parameters, T times). Here the backward loop carries
only the state gradients.

The forward loop stores, for every weight multiplication ``y = x @ W`` of the step
(the ``mm`` sites of :meth:`Rssm._observe_step`), its input ``x`` and output ``y``.
The backward loop re-runs the step's element-wise work under a tape that watches the
state, the step's inputs and the small parameters (norm scales), but replays
each multiplication from the stored ``y`` instead of recomputing it (its gradient is
``dx = dy @ W^T``), and records ``dL/dy``. After the loop each big weight gradient is
one matmul over all T*B rows: ``dW = X^T dY``, and a bias added at a site
(``y = x @ W + b``) gets the sum of ``dY``.

Gradients are equal to TensorFlow's autodiff of the same loop (a test checks 1e-5).

The contract with the model: every weight multiplication of
:meth:`Rssm._observe_step` goes through its ``mm`` argument with a site name unique in
the step (checked when the loop is built: a repeated name would silently drop a
gradient); a kernel used in parts is passed as the rows of a named
:class:`~rssm_tf.rssm.KernelView`. The loop's inputs travel as one :class:`LoopInputs`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import tensorflow as tf

from rssm_tf.layers import matmul


class Site(NamedTuple):
    """One weight multiplication of the step: ``y = x @ kernel[rows] + bias``."""

    name: str
    kernel: Any
    rows: tuple[int, int] | None
    bias: Any


class LoopInputs(NamedTuple):
    """The observe loop's inputs, time-major: ``h0`` [B, D], ``z0`` [B, S*K],
    ``first`` [T, B, 1], ``a_proj`` [T, B, P], ``e_proj`` [T, B, H], ``noise``
    [T, B, S, K] Gumbel noise or None (the mode)."""

    h0: tf.Tensor
    z0: tf.Tensor
    first: tf.Tensor
    a_proj: tf.Tensor
    e_proj: tf.Tensor
    noise: tf.Tensor | None

    def step(self, t: Any) -> tuple:
        """Step ``t``'s ``(first, a_proj, e_proj, noise)``."""
        return (self.first[t], self.a_proj[t], self.e_proj[t],
                None if self.noise is None else self.noise[t])


class Forward(NamedTuple):
    """What the forward loop keeps: the outputs ``hs``, ``zs``, ``posts`` and each
    site's inputs ``xs`` and outputs ``ys`` ([T, ...] each, in site order)."""

    hs: tf.Tensor
    zs: tf.Tensor
    posts: tf.Tensor
    xs: list[tf.Tensor]
    ys: list[tf.Tensor]


def _tf_variable(var: Any) -> tf.Variable:
    """The ``tf.Variable`` under a Keras variable (custom_gradient passes those)."""
    return var if isinstance(var, tf.Variable) else var.value


def _sites(rssm: Any, inputs: LoopInputs) -> list[Site]:
    """The step's weight multiplications in call order; raises ``ValueError`` if a
    site name repeats."""
    found: list[Site] = []

    def record(site: str, x: tf.Tensor, kernel: Any, rows: Any = None,
               bias: Any = None) -> tf.Tensor:
        found.append(Site(site, kernel, rows, bias))
        return matmul(site, x, kernel, rows, bias)

    # Traced for its side effect: in a graph it is dead code and pruned.
    rssm._observe_step(inputs.h0, inputs.z0, *inputs.step(0), record)
    repeated = sorted(n for n, k in Counter(site.name for site in found).items() if k > 1)
    if repeated:
        raise ValueError(f"the observe step names the weight multiplication(s) {repeated} "
                         "more than once; every site needs its own name, or the "
                         "hand-written backward would drop a gradient")
    return found


def observe_scan(rssm: Any, h0: tf.Tensor, z0: tf.Tensor, first: tf.Tensor,
                 a_proj: tf.Tensor, e_proj: tf.Tensor, noise: tf.Tensor | None
                 ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Time-major observe loop (the arguments of :class:`LoopInputs`) -> ``hs``
    [T, B, D], ``zs`` [T, B, S*K], ``posts`` [T, B, S, K], with the hand-written
    backward."""
    sites = _sites(rssm, LoopInputs(h0, z0, first, a_proj, e_proj, noise))

    @tf.custom_gradient
    def run(h0, z0, a_proj, e_proj):
        inputs = LoopInputs(h0, z0, first, a_proj, e_proj, noise)
        forward = _forward(rssm, sites, inputs)

        def grad(dhs, dzs, dposts, variables=None):
            return _backward(rssm, sites, inputs, forward, (dhs, dzs, dposts),
                             variables or [])

        return (forward.hs, forward.zs, forward.posts), grad

    return run(h0, z0, a_proj, e_proj)


def _forward(rssm: Any, sites: list[Site], inputs: LoopInputs) -> Forward:
    """The observe loop (time-major), keeping each site's inputs and outputs."""
    steps = tf.shape(inputs.first)[0]
    c = rssm.config
    # Each site's kernel (its rows, in the compute dtype) made once: sliced inside the
    # loop, XLA copies the rows every step.
    kernels = {s.name: _kernel(s.kernel, s.rows, rssm.compute_dtype) for s in sites}

    def body(t, h, z, out, xs, ys):
        recorded: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}

        def record(site, x, kernel, rows=None, bias=None):
            y = matmul(site, x, kernels[site], None, bias)
            recorded[site] = (x, y)
            return y

        h, z, post = rssm._observe_step(h, z, *inputs.step(t), record)
        out = [ta.write(t, v) for ta, v in zip(out, (h, z, post))]
        xs = [ta.write(t, recorded[s.name][0]) for ta, s in zip(xs, sites)]
        ys = [ta.write(t, recorded[s.name][1]) for ta, s in zip(ys, sites)]
        return t + 1, h, z, out, xs, ys

    def arrays(n, dtype=rssm.compute_dtype):
        return [tf.TensorArray(dtype, size=steps) for _ in range(n)]

    post_shape = tf.TensorShape([None, c.n_categories, c.n_classes])
    out = arrays(2, tf.float32) + [tf.TensorArray(tf.float32, size=steps,
                                                  element_shape=post_shape)]
    _, _, _, out, xs, ys = tf.while_loop(
        lambda t, *_: t < steps, body,
        (0, inputs.h0, inputs.z0, out, arrays(len(sites)), arrays(len(sites))))
    hs, zs, posts = (ta.stack() for ta in out)
    return Forward(hs, zs, posts, [ta.stack() for ta in xs], [ta.stack() for ta in ys])


def _kernel(kernel: Any, rows: Any, dtype: tf.DType) -> tf.Tensor:
    """A site's kernel (its rows) in ``dtype``."""
    return tf.cast(kernel if rows is None else kernel[rows[0]:rows[1]], dtype)


def _transposed(kernel: Any, rows: Any, dtype: tf.DType) -> tf.Tensor:
    """``W^T`` of a site (its rows), made once before the backward loop: XLA's CPU
    matmul is faster on a stored transpose than with ``transpose_b``."""
    w = _kernel(kernel, rows, dtype)
    return tf.transpose(w, [0, 2, 1] if w.shape.rank == 3 else [1, 0])


def _replay(y: tf.Tensor, x: tf.Tensor, w_t: tf.Tensor) -> tf.Tensor:
    """``y`` (the stored ``x @ W``) with the gradient of a multiplication by ``W``:
    ``dx = dy @ W^T``; no gradient reaches ``W`` (it is computed after the loop)."""

    @tf.custom_gradient
    def replay(x):
        def grad(dy):
            if w_t.shape.rank == 3:
                return tf.einsum("g...o,goi->g...i", dy, w_t)
            return tf.matmul(dy, w_t)

        return tf.identity(y), grad

    return replay(x)


def _backward(rssm: Any, sites: list[Site], inputs: LoopInputs, forward: Forward,
              upstream: tuple, variables: list) -> tuple[tuple, list]:
    """Gradients of the loop: ``upstream`` is ``(dhs, dzs, dposts)`` (None for an unused
    output); returns the gradients of ``(h0, z0, a_proj, e_proj)`` and of
    ``variables`` (the ones the loop reads)."""
    hs, zs, posts = forward.hs, forward.zs, forward.posts
    dhs, dzs, dposts = (tf.zeros_like(v) if d is None else d
                        for d, v in zip(upstream, (hs, zs, posts)))
    h0, z0, a_proj, e_proj = inputs.h0, inputs.z0, inputs.a_proj, inputs.e_proj
    steps = tf.shape(hs)[0]
    h_prev = tf.concat([h0[None], hs[:-1]], 0)
    z_prev = tf.concat([z0[None], zs[:-1]], 0)
    # Kernels and biases get their gradients after the loop, from each site's dL/dy.
    big = {id(_tf_variable(v)) for s in sites for v in (s.kernel, s.bias) if v is not None}
    small = [v for v in variables if id(v) not in big]
    stored = {s.name: y for s, y in zip(sites, forward.ys)}
    transposed = {s.name: _transposed(s.kernel, s.rows, rssm.compute_dtype) for s in sites}

    def body(t, dh, dz, small_acc, dys, das, des):
        recorded: dict[str, tf.Tensor] = {}

        def record(site, x, kernel, rows=None, bias=None):
            y = _replay(stored[site][t], x, transposed[site])
            recorded[site] = y
            return y

        hp, zp = h_prev[t], z_prev[t]
        first_t, a_t, e_t, noise_t = inputs.step(t)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([hp, zp, a_t, e_t])
            for v in small:
                tape.watch(v)
            h1, z1, post = rssm._observe_step(hp, zp, first_t, a_t, e_t, noise_t, record)
            target = (tf.reduce_sum((dhs[t] + dh) * h1) + tf.reduce_sum((dzs[t] + dz) * z1)
                      + tf.reduce_sum(dposts[t] * post))
        ys = [recorded[s.name] for s in sites]
        grads = tape.gradient(target, [hp, zp, a_t, e_t] + small + ys,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        g_h, g_z, g_a, g_e = grads[:4]
        g_small = grads[4:4 + len(small)]
        g_y = grads[4 + len(small):]
        dys = [ta.write(t, g) for ta, g in zip(dys, g_y)]
        small_acc = [acc + tf.cast(g, acc.dtype) for acc, g in zip(small_acc, g_small)]
        return (t - 1, g_h, g_z, small_acc, dys, das.write(t, g_a), des.write(t, g_e))

    init = (steps - 1, tf.zeros_like(h0), tf.zeros_like(z0),
            [tf.zeros(v.shape, v.dtype) for v in small],
            [tf.TensorArray(rssm.compute_dtype, size=steps) for _ in sites],
            tf.TensorArray(a_proj.dtype, size=steps), tf.TensorArray(e_proj.dtype, size=steps))
    _, dh0, dz0, small_acc, dys, das, des = tf.while_loop(lambda t, *_: t >= 0, body, init)

    grads: dict[int, tf.Tensor] = {id(v): g for v, g in zip(small, small_acc)}
    def add(var: tf.Variable, g: tf.Tensor) -> None:
        g = tf.cast(g, var.dtype)
        grads[id(var)] = grads[id(var)] + g if id(var) in grads else g

    for (_, keras_var, rows, bias), x_all, dy_ta in zip(sites, forward.xs, dys):
        var = _tf_variable(keras_var)
        x = tf.cast(x_all, "float32")
        dy = tf.cast(dy_ta.stack(), "float32")
        if var.shape.rank == 3:  # block kernel [G, in, out]; x, dy [T, G, B, ...]
            dw = tf.einsum("tgbi,tgbo->gio", x, dy)
            db = tf.reduce_sum(dy, [0, 2])
        else:
            dy = tf.reshape(dy, [-1, dy.shape[-1]])
            dw = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), dy, transpose_a=True)
            db = tf.reduce_sum(dy, 0)
        if rows is not None:
            dw = tf.pad(dw, [[rows[0], var.shape[0] - rows[1]], [0, 0]])
        add(var, dw)
        if bias is not None:
            add(_tf_variable(bias), db)
    var_grads = [grads.get(id(v)) for v in variables]
    return (dh0, dz0, das.stack(), des.stack()), var_grads
