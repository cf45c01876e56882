"""rssm_tf: DreamerV3's world model (the RSSM) as a TensorFlow/Keras library.

Three lines::

    from rssm_tf import Rssm, RssmConfig
    rssm = Rssm(RssmConfig(obs_dim=4, action_dim=2))
    state, post_logits, prior_logits = rssm.obs_step(rssm.initial_state(1), action, obs)
"""

from rssm_tf.config import KlBalanceConfig, RssmConfig
from rssm_tf.heads import VectorEncoder
from rssm_tf.latents import latent_distribution, mix_logits, sample_latent
from rssm_tf.layers import BlockGRU, BlockLinear, Mlp, NormDense
from rssm_tf.losses import KlLoss, TwohotEncoder, categorical_kl, kl_balanced_loss
from rssm_tf.math import symexp, symlog
from rssm_tf.rssm import Rssm, RssmState

__version__ = "0.1.0"

__all__ = [
    "BlockGRU", "BlockLinear", "KlBalanceConfig", "KlLoss", "Mlp", "NormDense", "Rssm",
    "RssmConfig", "RssmState", "TwohotEncoder", "VectorEncoder", "categorical_kl",
    "kl_balanced_loss", "latent_distribution", "mix_logits", "sample_latent", "symexp",
    "symlog",
]
