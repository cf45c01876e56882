"""The same world-model update with TorchRL's DreamerV3 modules, for the speed ratio.

TorchRL's ``RSSMPriorV3`` (block GRU) and ``RSSMPosteriorV3`` inside
``RSSMRolloutV3``, at the sizes of an ``RssmConfig``, with an MLP encoder and decoder
(vectors) or TorchRL's ``DreamerV3ImageEncoder``/``DreamerV3ImageDecoder`` (an image
config: depth ``cnn_depth``, multipliers 1-2-4-8, ``cnn_kernel``, which TorchRL needs
odd; a dense projection in the decoder, as ours), reward (255 twohot bins) and continue
heads of the same depths as ours, the same loss terms (symlog reconstruction or summed
pixel squared error, twohot reward, continue BCE, balanced KL with free nats) and Adam.
Optional: needs ``pip install torch==2.13.0 torchrl==0.14.1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules.models import RSSMPosteriorV3, RSSMPriorV3, RSSMRolloutV3
from torchrl.modules.models.model_based import DreamerV3ImageDecoder, DreamerV3ImageEncoder


def _mlp(inp: int, width: int, layers: int, out: int | None) -> nn.Sequential:
    parts: list[nn.Module] = []
    for _ in range(layers):
        parts += [nn.Linear(inp, width, bias=False), nn.RMSNorm(width, eps=1e-4), nn.SiLU()]
        inp = width
    if out is not None:
        parts.append(nn.Linear(inp, out))
    return nn.Sequential(*parts)


def _symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    p = p_logits.log_softmax(-1)
    q = q_logits.log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).sum(-1)


def torchrl_step(config, batch: int, seq: int) -> tuple[Callable[[], float], float]:
    """TorchRL's update as a function of no arguments (it returns the loss), and the
    seconds of its first call."""
    torch.manual_seed(0)
    c = config
    S, K, D, H = c.n_categories, c.n_classes, c.deterministic_size, c.hidden_size
    prior = RSSMPriorV3(action_shape=torch.Size([c.action_dim]), hidden_dim=H,
                        rnn_hidden_dim=D, num_categoricals=S, num_classes=K,
                        action_dim=c.action_dim, recurrent_model="block_gru",
                        num_blocks=c.n_blocks, num_layers=1, prior_num_layers=c.prior_layers,
                        unimix=c.unimix)
    feat = D + S * K
    rng = np.random.default_rng(0)
    if c.image_shape:  # pixels only: channels first, as TorchRL's modules take them
        height, width, channels = c.image_shape
        mults = (1, 2, 4, 8)[:c.cnn_stages]
        encoder = DreamerV3ImageEncoder(channels, depth=c.cnn_depth, mults=mults,
                                        kernel_size=c.cnn_kernel)
        decoder = DreamerV3ImageDecoder(feat, (channels, height, width), depth=c.cnn_depth,
                                        mults=mults, kernel_size=c.cnn_kernel, num_blocks=1)
        obs = torch.tensor(rng.integers(0, 256, (batch, seq, channels, height, width)),
                           dtype=torch.uint8)
        target = obs.float() / 255.0
        embed = encoder(obs[:1, :1]).shape[-1]

        def encode() -> torch.Tensor:
            return encoder(obs)

        def rec_loss(f: torch.Tensor) -> torch.Tensor:
            return (decoder(f) - target).square().sum((-3, -2, -1))
    else:
        encoder = _mlp(c.obs_dim, H, c.encoder_layers, None)
        decoder = _mlp(feat, H, c.decoder_layers, c.obs_dim)
        obs = torch.tensor(rng.normal(size=(batch, seq, c.obs_dim)), dtype=torch.float32)
        embed = H

        def encode() -> torch.Tensor:
            return encoder(_symlog(obs))

        def rec_loss(f: torch.Tensor) -> torch.Tensor:
            return (decoder(f) - _symlog(obs)).square().sum(-1)
    posterior = RSSMPosteriorV3(hidden_dim=H, num_categoricals=S, num_classes=K,
                                rnn_hidden_dim=D, obs_embed_dim=embed, use_rms_norm=True,
                                num_layers=c.posterior_layers, unimix=c.unimix)
    rollout = RSSMRolloutV3(
        TensorDictModule(prior, in_keys=["state", "belief", "action"],
                         out_keys=[("next", "prior_logits"), ("next", "state"),
                                   ("next", "belief")]),
        TensorDictModule(posterior, in_keys=[("next", "belief"), ("next", "encoded_latents")],
                         out_keys=[("next", "posterior_logits"), ("next", "state")]),
        reset_key="is_init")
    reward = _mlp(feat, H, c.head_layers, 255)
    cont = _mlp(feat, H, c.head_layers, 1)
    modules = nn.ModuleList([rollout, encoder, decoder, reward, cont])
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-4, eps=1e-8)
    bins = torch.linspace(-20.0, 20.0, 255)

    action = torch.tensor(rng.uniform(-1, 1, (batch, seq, c.action_dim)), dtype=torch.float32)
    rew = torch.tensor(rng.normal(size=(batch, seq)), dtype=torch.float32)
    is_init = torch.zeros(batch, seq, 1, dtype=torch.bool)
    is_init[:, 0] = True

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        data = TensorDict({"state": torch.zeros(batch, seq, S * K),
                           "belief": torch.zeros(batch, seq, D), "action": action,
                           "is_init": is_init,
                           "next": {"encoded_latents": encode()}},
                          [batch, seq])
        out = rollout(data)
        post = out["next", "posterior_logits"].reshape(batch, seq, S, K)
        prior_logits = out["next", "prior_logits"].reshape(batch, seq, S, K)
        f = torch.cat([out["next", "belief"], out["next", "state"].reshape(batch, seq, -1)], -1)
        rec = rec_loss(f)
        x = _symlog(rew).clamp(-20, 20)
        k = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, 253)
        w_hi = ((x - bins[k]) / (bins[k + 1] - bins[k])).clamp(0, 1)
        target = torch.zeros(batch, seq, 255)
        target.scatter_(-1, k[..., None], (1 - w_hi)[..., None])
        target.scatter_add_(-1, (k + 1)[..., None], w_hi[..., None])
        rew_loss = -(target * reward(f).log_softmax(-1)).sum(-1)
        con = nn.functional.binary_cross_entropy_with_logits(
            cont(f)[..., 0], torch.ones(batch, seq), reduction="none")
        dyn = _kl(post.detach(), prior_logits).clamp(min=1.0)
        rep = _kl(post, prior_logits.detach()).clamp(min=1.0)
        loss = (rec + rew_loss + con).mean() + 0.5 * dyn.mean() + 0.1 * rep.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1000.0)
        optimizer.step()
        return float(loss.detach())

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start
