"""Behavior learning: lambda-returns, the percentile normaliser, the slow critic, the
actors, the imagination rollout and where gradients go, against hand-computed values
and independent loops; the Dreamer model's update under fit, compiled vs eager, and a
.keras round trip that resumes bit-identically."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sine import as_dataset, sine_batches

from rssm_tf import (
    Actor,
    BehaviorConfig,
    Critic,
    Dreamer,
    ReturnNormalizer,
    Rssm,
    RssmConfig,
    lambda_returns,
)
from rssm_tf.behavior import (
    Trajectory,
    behavior_losses,
    imagine,
    percentile,
    trajectory_weight,
    update_slow,
)
from rssm_tf.dreamer import BEHAVIOR_METRICS
from rssm_tf.rssm import RssmState
from rssm_tf.saving import load_world_model, save_world_model

CONFIG = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=16, n_categories=4,
                    n_classes=4, hidden_size=16, n_blocks=2)
SMALL = BehaviorConfig(layers=1, units=16, horizon=4)


def test_lambda_returns_by_hand():
    """H = 2, discount 0.9, lambda 0.5: R_2 = v_2 = 20;
    R_1 = 2 + 0.9 * 0.5 * (0.5 * 20 + 0.5 * 20) = 11;
    R_0 = 1 + 0.9 * 1 * (0.5 * 10 + 0.5 * 11) = 10.45."""
    reward = tf.constant([[99.0], [1.0], [2.0]])  # reward[0] (arriving at s_0) unused
    cont = tf.constant([[0.0], [1.0], [0.5]])  # so is cont[0]
    value = tf.constant([[99.0], [10.0], [20.0]])
    ret = lambda_returns(reward, cont, value, 0.9, 0.5)
    np.testing.assert_allclose(ret.numpy()[:, 0], [10.45, 11.0], rtol=1e-6)


def test_lambda_returns_match_a_plain_loop(rng):
    h, n, g, lam = 6, 5, 0.97, 0.8
    r, c, v = rng.normal(size=(h + 1, n)), rng.uniform(size=(h + 1, n)), rng.normal(size=(h + 1, n))
    expected = np.zeros((h, n))
    after = v[h]
    for t in reversed(range(h)):
        after = r[t + 1] + g * c[t + 1] * ((1 - lam) * v[t + 1] + lam * after)
        expected[t] = after
    ret = lambda_returns(r.astype("f"), c.astype("f"), v.astype("f"), g, lam)
    np.testing.assert_allclose(ret.numpy(), expected, rtol=1e-5, atol=1e-5)
    # lambda 0 is the one-step target, lambda 1 the discounted sum plus the last value
    one = lambda_returns(r.astype("f"), c.astype("f"), v.astype("f"), g, 0.0).numpy()
    np.testing.assert_allclose(one, r[1:] + g * c[1:] * v[1:], rtol=1e-5, atol=1e-5)


def test_trajectory_weight_by_hand():
    w = trajectory_weight(tf.constant([1.0, 0.5, 0.5]), 0.9).numpy()
    np.testing.assert_allclose(w, [1.0, 0.45, 0.2025], rtol=1e-6)


def test_percentile_is_numpys(rng):
    x = rng.normal(size=(7, 13)).astype("f")
    for q in (0.0, 5.0, 37.5, 95.0, 100.0):
        np.testing.assert_allclose(percentile(tf.constant(x), q).numpy(),
                                   np.percentile(x, q), rtol=1e-6, atol=1e-6)


def test_return_normaliser_debiased_ema_and_floor():
    """First update: the batch's own percentiles (debiased); second: the EMAs over
    their debiasing ``r (2 - r)``; a narrow spread is floored at the limit."""
    norm = ReturnNormalizer(rate=0.1, limit=1.0, low=5.0, high=95.0)
    a = tf.constant(np.linspace(0.0, 100.0, 101), tf.float32)  # P5 = 5, P95 = 95
    norm.update(a)
    lo, scale = norm.stats()
    np.testing.assert_allclose([lo.numpy(), scale.numpy()], [5.0, 90.0], rtol=1e-5)
    norm.update(a * 2.0)  # P5 = 10, P95 = 190
    lo, scale = norm.stats()
    corr = 0.1 * 1.9
    np.testing.assert_allclose(lo.numpy(), (0.9 * 0.1 * 5 + 0.1 * 10) / corr, rtol=1e-5)
    np.testing.assert_allclose(scale.numpy(), (0.9 * 0.1 * 90 + 0.1 * 180) / corr, rtol=1e-5)
    narrow = ReturnNormalizer(rate=0.1, limit=1.0)
    narrow.update(tf.constant([0.1, 0.2, 0.3]))
    assert float(narrow.stats()[1]) == 1.0


def _zero_output(actor):
    actor.net.out.kernel.assign(tf.zeros_like(actor.net.out.kernel))


def test_discrete_actor_by_hand():
    """Zero outputs: probabilities 1/A whatever the unimix; a biased output gives
    (1 - u) softmax + u / A; Gumbel-max picks the class the noise favours."""
    actor = Actor(CONFIG, BehaviorConfig(layers=1, units=8, unimix=0.01))
    _zero_output(actor)
    feat = tf.zeros([1, CONFIG.feat_size])
    params = actor(feat)
    np.testing.assert_allclose(np.exp(params.numpy()), [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(actor.entropy(params).numpy(), [math.log(2)], rtol=1e-6)
    actor.net.out.bias.assign([2.0, 0.0])
    params = actor(feat)
    soft = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    probs = 0.99 * soft + 0.005
    np.testing.assert_allclose(actor.log_prob(params, [[0.0, 1.0]]).numpy(),
                               [math.log(probs[1])], rtol=1e-5)
    np.testing.assert_allclose(actor.entropy(params).numpy(),
                               [-(probs * np.log(probs)).sum()], rtol=1e-5)
    np.testing.assert_array_equal(actor.mode(params).numpy(), [[1.0, 0.0]])
    # noise that makes class 1's Gumbel term far larger: -log(-log(0.999999)) ~ 13.8
    np.testing.assert_array_equal(actor.sample(params, [[1e-6, 1 - 1e-6]]).numpy(),
                                  [[0.0, 1.0]])


def test_continuous_actor_by_hand():
    """Zero outputs: mean tanh(0) = 0, std (1 - 0.1) sigmoid(2) + 0.1; log-prob and
    entropy of the normal summed over the two dimensions."""
    actor = Actor(CONFIG, BehaviorConfig(discrete=False, layers=1, units=8))
    _zero_output(actor)
    params = actor(tf.zeros([1, CONFIG.feat_size]))
    std = 0.9 / (1 + math.exp(-2.0)) + 0.1
    np.testing.assert_allclose(params.numpy(), [[0.0, 0.0, std, std]], rtol=1e-6)
    a = np.array([[0.5, -0.25]], "float32")
    logp = sum(-0.5 * (x / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
               for x in a[0])
    np.testing.assert_allclose(actor.log_prob(params, a).numpy(), [logp], rtol=1e-5)
    ent = 2 * (0.5 + 0.5 * math.log(2 * math.pi) + math.log(std))
    np.testing.assert_allclose(actor.entropy(params).numpy(), [ent], rtol=1e-5)
    np.testing.assert_allclose(actor.sample(params, [[1.0, -2.0]]).numpy(),
                               [[std, -2 * std]], rtol=1e-6)
    np.testing.assert_array_equal(actor.mode(params).numpy(), [[0.0, 0.0]])


def test_slow_critic_update_is_the_ema():
    critic, slow = Critic(CONFIG, SMALL), Critic(CONFIG, SMALL, trainable=False)
    before = [w.numpy() for w in slow.weights]
    update_slow(slow, critic, 0.02)
    for s0, s1, c in zip(before, slow.weights, critic.weights):
        np.testing.assert_allclose(s1.numpy(), 0.98 * s0 + 0.02 * c.numpy(), rtol=1e-6,
                                   atol=1e-7)
    assert float(tf.reduce_sum(critic(tf.ones([1, CONFIG.feat_size])))) == 0.0  # zero init


def _rollout_parts(behavior=SMALL):
    rssm = Rssm(CONFIG, seed=0)
    actor = Actor(CONFIG, behavior)
    rng = np.random.default_rng(3)
    n, h = 5, behavior.horizon
    start = RssmState(tf.constant(rng.normal(size=(n, 16)), tf.float32),
                      tf.reshape(tf.one_hot(rng.integers(0, 4, (n, 4)), 4), [n, 16]))
    a_noise = rng.uniform(0.01, 0.99, size=(h, n, 2)).astype("f")
    z_noise = rng.uniform(0.01, 0.99, size=(h, n, 4, 4)).astype("f")
    return rssm, actor, start, a_noise, z_noise


def test_imagine_matches_a_loop_of_imagine_steps():
    rssm, actor, start, a_noise, z_noise = _rollout_parts()
    traj = imagine(rssm, actor, start.h, start.z, a_noise, z_noise)
    state = start
    for t in range(SMALL.horizon):
        action = actor.sample(actor(tf.concat([state.h, state.z], -1)), a_noise[t])
        np.testing.assert_array_equal(traj.action[t].numpy(), action.numpy())
        state = rssm.imagine_step(state, action, noise=z_noise[t])
        np.testing.assert_allclose(traj.h[t + 1].numpy(), state.h.numpy(), atol=1e-5)
        np.testing.assert_array_equal(traj.z[t + 1].numpy(), state.z.numpy())
    assert traj.h.shape == (SMALL.horizon + 1, 5, 16)


def test_gradients_reach_only_the_actor_and_the_critic():
    """No behavior loss reaches the world model (its heads included); the actor's loss
    trains only the actor, the critic's only the critic; the slow critic and the
    return targets carry none."""
    rssm, actor, start, a_noise, z_noise = _rollout_parts()
    critic, slow = Critic(CONFIG, SMALL), Critic(CONFIG, SMALL, trainable=False)
    rng = np.random.default_rng(0)
    for layer in (critic, slow, rssm.reward_head):  # non-zero outputs everywhere
        layer.weights[-2].assign(rng.normal(size=layer.weights[-2].shape) * 0.1)
    norm = ReturnNormalizer()
    with tf.GradientTape(persistent=True) as tape:
        # not trainable: watched, so a gradient would show
        tape.watch([w.value for w in slow.weights])
        traj = imagine(rssm, actor, start.h, start.z, a_noise, z_noise)
        losses = behavior_losses(rssm, actor, critic, slow, norm, traj, SMALL)
        probe = tf.reduce_sum(slow(tf.ones([1, CONFIG.feat_size])))

    def grads(loss, layer):
        return [g for g in tape.gradient(loss, [w.value for w in layer.weights])
                if g is not None]

    assert grads(probe, slow)  # the watch works: a direct use would show
    for loss in (losses.actor, losses.critic):
        assert grads(loss, rssm) == []
        assert grads(loss, slow) == []
    assert grads(losses.actor, critic) == [] and grads(losses.critic, actor) == []
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads(losses.actor, actor)) > 0
    assert max(float(tf.reduce_max(tf.abs(g))) for g in grads(losses.critic, critic)) > 0


def test_policy_gradient_raises_the_log_prob_of_better_actions():
    """REINFORCE direction: with a reward that pays only for action 0 at every step, a
    gradient step on the actor's loss makes action 0 more likely."""
    rssm, actor, start, a_noise, z_noise = _rollout_parts()
    critic, slow = Critic(CONFIG, SMALL), Critic(CONFIG, SMALL, trainable=False)
    traj = imagine(rssm, actor, start.h, start.z, a_noise, z_noise)

    class PaysForActionZero:
        """Stands in for the reward head: reward 1 on arriving after action 0."""

        def __init__(self, actions):
            first = tf.zeros_like(actions[:1, :, 0])
            self.reward = tf.concat([first, actions[..., 0]], 0)

        def predict_reward(self, h, z):
            return self.reward

        def decode_reward(self, reward):
            return reward

        def predict_continue(self, h, z):
            return tf.fill(tf.concat([tf.shape(h)[:-1], [1]], 0), 20.0)

    fake = PaysForActionZero(traj.action)
    feat = tf.concat([start.h, start.z], -1)
    before = float(tf.reduce_mean(tf.exp(actor(feat)[:, 0])))
    with tf.GradientTape() as tape:
        loss = behavior_losses(fake, actor, critic, slow, ReturnNormalizer(), traj,
                               SMALL).actor
    grads = tape.gradient(loss, actor.trainable_variables)
    keras.optimizers.SGD(1.0).apply(grads, actor.trainable_variables)
    assert float(tf.reduce_mean(tf.exp(actor(feat)[:, 0]))) > before


@pytest.mark.parametrize("discrete", [True, False])
def test_dreamer_fit_logs_behavior_metrics_and_updates_the_slow_critic(discrete):
    behavior = BehaviorConfig(discrete=discrete, layers=1, units=16, horizon=3,
                              slow_every=2)
    model = Dreamer(CONFIG, behavior, action_low=-2.0, action_high=2.0, seed=1)
    model.compile()
    slow0 = [w.numpy() for w in model.slow_critic.weights]
    history = model.fit(as_dataset(sine_batches(1, 3, 6, discrete=discrete)), epochs=1, verbose=0)
    logs = {k: v[-1] for k, v in history.history.items()}
    assert set(model.metric_names) <= set(logs)
    assert all(np.isfinite(v) for v in logs.values())
    # slow_every=2: the first update mixes in 2% of the critic after its step
    critic1 = [w.numpy() for w in model.critic.weights]
    for s0, s1, c1 in zip(slow0, model.slow_critic.weights, critic1):
        np.testing.assert_allclose(s1.numpy(), 0.98 * s0 + 0.02 * c1, rtol=1e-5, atol=1e-7)
    slow1 = [w.numpy() for w in model.slow_critic.weights]
    model.fit(as_dataset(sine_batches(1, 3, 6, seed=1, discrete=discrete)), epochs=1, verbose=0)
    for s1, s2 in zip(slow1, model.slow_critic.weights):  # the second does not
        np.testing.assert_array_equal(s1, s2.numpy())
    assert int(model.actor_optimizer.iterations) == 2 == int(model.optimizer.iterations)
    action = model.act(tf.zeros([2, 16]), tf.zeros([2, 16]))
    if discrete:
        np.testing.assert_array_equal(action.numpy().sum(-1), [1.0, 1.0])
    else:
        assert np.all(np.abs(action.numpy()) <= 2.0)


def test_the_actor_and_critic_are_heads_trained_in_imagination():
    """A Dreamer's heads: the world model's three, then the actor (served by ``act``)
    and the critic (not exported); the world-model loss, its metrics and its optimiser
    see only the replay heads; the export tracks the actor but not the critic."""
    from rssm_tf_export.module import InferenceModule

    from rssm_tf.predictions import ActorHead, CriticHead
    from rssm_tf.world_model import WorldModel

    model = Dreamer(CONFIG, BehaviorConfig(layers=1, units=16, horizon=4, discrete=False),
                    action_low=-2.0, action_high=2.0)
    assert [type(h) for h in model.heads[-2:]] == [ActorHead, CriticHead]
    assert [h.signature for h in model.heads[-2:]] == ["act", None]
    assert model.replay_heads == model.heads[:3]
    assert model.metric_names == WorldModel(CONFIG).metric_names + BEHAVIOR_METRICS
    ids = {id(v) for v in model._world_variables()}
    assert not ids & {id(v) for v in model.actor.variables + model.critic.variables}
    assert ids >= {id(v) for v in model.decoder.trainable_variables}
    h, z = tf.random.normal([3, 16]), tf.one_hot(tf.zeros([3, 4], tf.int32), 4)
    z = tf.reshape(z, [3, 16])
    actor, critic = model.heads[-2:]
    raw = actor.outputs(h, z)
    mean = raw["action_params"][:, :2]  # the continuous actor's mean, tanh'd
    np.testing.assert_allclose(actor.predictions(raw)["action"],
                               -2.0 + (np.clip(mean, -1, 1) + 1.0) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(model.act(h, z), actor.predictions(raw)["action"])
    np.testing.assert_allclose(critic.predictions(critic.outputs(h, z))["value"],
                               model.critic.value(tf.concat([h, z], -1)), rtol=1e-6)
    tracked = {id(v) for v in InferenceModule(model).tracked_variables}
    assert {id(v.value) for v in model.actor.variables} <= tracked
    assert not {id(v.value) for v in model.critic.variables} & tracked


def test_dreamer_update_compiled_equals_eager():
    """The same update under XLA and eagerly (a tf.function without XLA), from the
    same weights: every weight within float32 rounding."""
    batches = sine_batches(2, 3, 6, discrete=True)
    results = []
    for jit in (True, False):
        keras.utils.set_random_seed(4)
        model = Dreamer(CONFIG, BehaviorConfig(layers=1, units=16, horizon=2), seed=2)
        model.compile(jit_compile=jit)
        model.fit(as_dataset(batches), epochs=1, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_imag_last_imagines_from_the_last_steps_of_each_sequence(monkeypatch):
    """DreamerV3's ``imag_last``: the starts are the posterior states of the last K
    steps, the same states the full update starts from there (same weights, same step)."""
    import rssm_tf.dreamer

    seen = []

    def recording(rssm, actor, h, z, *args):
        seen.append(h.numpy())
        return imagine(rssm, actor, h, z, *args)

    monkeypatch.setattr(rssm_tf.dreamer, "imagine", recording)
    batch = {k: tf.constant(v) for k, v in sine_batches(1, 3, 6, discrete=True)[0].items()}
    for last in (0, 2):
        keras.utils.set_random_seed(4)  # the same weights
        model = Dreamer(CONFIG, BehaviorConfig(layers=1, units=16, horizon=2,
                                               imag_last=last), seed=2)
        model.compile(jit_compile=False)
        model._update(batch)  # eagerly: the recorder sees the starts
    every, last_two = seen
    assert every.shape[0] == 3 * 6 and last_two.shape[0] == 3 * 2
    time_major = every.reshape(6, 3, -1)  # starts are [T * B] rows, time-major
    np.testing.assert_array_equal(last_two, time_major[-2:].reshape(6, -1))


def test_dreamer_keras_round_trip_resumes_bit_identically(tmp_path, op_determinism):
    batches = sine_batches(4, 3, 6, discrete=True)

    def fit(model, part):
        model.fit(as_dataset(part), epochs=1, verbose=0)

    keras.utils.set_random_seed(1)
    straight = Dreamer(CONFIG, SMALL, seed=5)
    straight.compile()
    fit(straight, batches)

    keras.utils.set_random_seed(1)
    first = Dreamer(CONFIG, SMALL, seed=5)
    first.compile()
    fit(first, batches[:2])
    resumed = load_world_model(save_world_model(first, tmp_path / "agent.keras"))
    assert isinstance(resumed, Dreamer) and resumed.behavior == SMALL
    assert int(resumed.actor_optimizer.iterations) == 2
    for a, b in zip(first.weights, resumed.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    for opt in ("optimizer", "actor_optimizer", "critic_optimizer"):
        for a, b in zip(getattr(first, opt).variables, getattr(resumed, opt).variables):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fit(resumed, batches[2:])
    for a, b in zip(straight.weights, resumed.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


@pytest.mark.parametrize("field, value, words", [
    ("horizon", 0, "horizon"), ("discount", 1.5, "discount"), ("unimix", 1.0, "unimix"),
    ("max_std", 0.05, "max_std"), ("return_low", 96.0, "return_low"),
    ("units", -1, "units"), ("discrete", 1, "discrete"), ("actor_lr", 0.0, "actor_lr"),
    ("imag_last", -1, "imag_last"),
])
def test_behavior_config_names_the_bad_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        BehaviorConfig(**{field: value})
    assert BehaviorConfig.from_dict(BehaviorConfig().to_dict()) == BehaviorConfig()
    assert abs(BehaviorConfig().discount - (1 - 1 / 333)) < 1e-12


def test_trajectory_feat_is_h_then_z():
    traj = Trajectory(tf.ones([2, 1, 3]), tf.zeros([2, 1, 2]), tf.zeros([1, 1, 2]))
    np.testing.assert_array_equal(traj.feat().numpy()[0, 0], [1, 1, 1, 0, 0])


def test_train_agent_collects_trains_evaluates_and_resumes(tmp_path, monkeypatch):
    """CartPole for a few rounds: the actor's episodes land in the directory, the
    updates owed by the train ratio run, each evaluation has 2 returns; run again with
    a larger budget, the loop resumes from the checkpoint and its progress (no episode
    file overwritten)."""
    pytest.importorskip("gymnasium")
    from rssm_tf.agent import train_agent
    from rssm_tf.episodes import EpisodeStore

    config = RssmConfig(obs_dim=4, action_dim=2, deterministic_size=16, n_categories=4,
                        n_classes=4, hidden_size=16, n_blocks=2)
    model = Dreamer(config, BehaviorConfig(layers=1, units=16, horizon=3))
    model.compile(jit_compile=False)  # the loop is under test here, not XLA
    episodes, ckpt = tmp_path / "episodes", tmp_path / "agent.keras"
    kwargs = dict(train_ratio=16.0, episodes_per_round=2, batch_size=2, seq_len=8,
                  eval_every=40, eval_episodes=2, checkpoint=ckpt, max_steps=20, log=None)
    evals = train_agent(model, "CartPole-v1", episodes, 60, **kwargs)
    assert evals and all(len(e["returns"]) == 2 for e in evals)
    first_files = len(EpisodeStore(episodes))
    progress = json.loads((tmp_path / "agent.keras.json").read_text())
    assert progress["env_steps"] >= 60 and progress["updates"] == int(model.optimizer.iterations)
    assert progress["updates"] == int(progress["env_steps"] * 16 / 16 - progress["debt"] + 1e-9)
    more = train_agent(model, "CartPole-v1", episodes, 100, **kwargs)
    after = json.loads((tmp_path / "agent.keras.json").read_text())
    assert after["resumes"] == 1 and after["env_steps"] >= 100
    assert more[:len(evals)] == evals and len(EpisodeStore(episodes)) > first_files
    # stop_at: a run whose last evaluation reached it collects nothing more
    files = len(EpisodeStore(episodes))
    assert train_agent(model, "CartPole-v1", episodes, 10_000, stop_at=0.0, **kwargs) == more
    assert len(EpisodeStore(episodes)) == files
    # and a fresh one stops at its first evaluation that does, far short of the budget
    fresh = dict(kwargs, checkpoint=None)
    stopped = train_agent(model, "CartPole-v1", tmp_path / "other", 10_000, stop_at=0.0,
                          **fresh)
    assert len(stopped) == 1 and stopped[0]["env_steps"] < 100
    with pytest.raises(ValueError, match="stop_at must be a finite number"):
        train_agent(model, "CartPole-v1", episodes, 10, stop_at=float("nan"), **kwargs)
    # an update that goes non-finite stops the loop before the checkpoint is touched
    saved = ckpt.read_bytes()

    class NanHistory:
        history = {"loss": [float("nan")], "actor_loss": [0.5]}

    # on the class: the resumed run trains the model it loads from the checkpoint
    monkeypatch.setattr(Dreamer, "fit", lambda *args, **kw: NanHistory())
    with pytest.raises(FloatingPointError, match=r"non-finite \['loss'\].*keeps the last"):
        train_agent(model, "CartPole-v1", episodes, 10_000, **kwargs)
    assert ckpt.read_bytes() == saved
