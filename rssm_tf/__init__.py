"""rssm_tf: DreamerV3's world model (the RSSM) as a TensorFlow/Keras library.

Three lines::

    from rssm_tf import Rssm, RssmConfig
    rssm = Rssm(RssmConfig(obs_dim=4, action_dim=2))
    state, post_logits, prior_logits = rssm.obs_step(rssm.initial_state(1), action, obs)

Any dict of observations (DreamerV3's ``obs_space``): ``RssmConfig(obs_space={"joints":
(7,), "camera": (64, 64, 3)}, action_dim=2)`` and ``obs={"joints": [B, 7] floats,
"camera": [B, 64, 64, 3] uint8}``. ``obs_dim`` and ``image_shape`` are the short forms
of one vector key ``"obs"`` and one image key ``"image"``.

The agent: ``Dreamer(RssmConfig(...), BehaviorConfig(discrete=True))`` is a world model
that also trains an actor and a critic in imagination under ``fit``;
``ActorPolicy(model)`` acts with it.
"""

# first: asks TensorFlow for its oneDNN CPU kernels before TensorFlow loads (rssm_tf/cpu.py)
from rssm_tf import cpu  # noqa: F401, I001  # isort: skip

from rssm_tf.behavior import Actor, Critic, ReturnNormalizer, lambda_returns
from rssm_tf.callbacks import ImaginationCallback, NonFiniteGuard
from rssm_tf.config import BehaviorConfig, KlBalanceConfig, RssmConfig
from rssm_tf.data import EpisodeStore, load_episode, make_dataset, save_episode
from rssm_tf.dreamer import ActorPolicy, Dreamer
from rssm_tf.heads import ImageDecoder, ImageEncoder, ObsDecoder, ObsEncoder, VectorEncoder
from rssm_tf.latents import latent_distribution, mix_logits, sample_latent
from rssm_tf.layers import BlockGRU, BlockLinear, Mlp, NormDense
from rssm_tf.losses import (
                             KlLoss,
                             TwohotEncoder,
                             categorical_entropy,
                             categorical_kl,
                             kl_balanced_loss,
)
from rssm_tf.math import symexp, symlog
from rssm_tf.planning import Planner, PlannerConfig
from rssm_tf.replay import Replay
from rssm_tf.rssm import Rssm, RssmState
from rssm_tf.saving import AtomicModelCheckpoint, load_world_model, save_world_model
from rssm_tf.spaces import ObsKey, ObsSpace
from rssm_tf.world_model import WorldModel, evaluate_open_loop

__version__ = "0.1.0"

__all__ = [
    "Actor", "ActorPolicy", "BehaviorConfig", "Critic", "Dreamer", "ReturnNormalizer",
    "lambda_returns",
    "AtomicModelCheckpoint", "EpisodeStore", "ImaginationCallback", "NonFiniteGuard",
    "Planner", "PlannerConfig", "Replay", "WorldModel", "evaluate_open_loop", "load_episode",
    "load_world_model", "make_dataset",
    "save_episode", "save_world_model",
    "BlockGRU", "BlockLinear", "ImageDecoder", "ImageEncoder", "KlBalanceConfig", "KlLoss",
    "Mlp", "NormDense", "ObsDecoder", "ObsEncoder", "ObsKey", "ObsSpace", "Rssm",
    "RssmConfig", "RssmState", "TwohotEncoder", "VectorEncoder", "categorical_entropy",
    "categorical_kl",
    "kl_balanced_loss", "latent_distribution", "mix_logits", "sample_latent", "symexp",
    "symlog",
]
