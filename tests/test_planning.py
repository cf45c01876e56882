"""The cross-entropy planner: hand-computed returns, the algorithm against numpy on a
hand-built rollout, the Keras planner compiled and eager, the exported planner on
every serving backend against the Keras one, and the agent loop in gymnasium."""

import numpy as np
import pytest
import tensorflow as tf

from rssm_tf import RssmConfig, WorldModel
from rssm_tf.planning import Planner, PlannerConfig, cem, discounted_returns


def test_discounted_returns_by_hand():
    reward = tf.constant([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    cont = tf.constant([[0.5, 1.0, 1.0], [1.0, 0.0, 1.0]])
    got = discounted_returns(reward, cont, 0.9).numpy()
    # weights: 1, 0.9 * c1, 0.9^2 * c1 * c2
    want = [1 + 0.9 * 0.5 * 2 + 0.81 * 0.5 * 3, 1 + 0.9 * 1 + 0.81 * 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def linear_rollout(weights):
    """A hand-built 'model': reward_t = sum_a actions[t, a] * weights[a], continue 1."""
    w = tf.constant(weights, tf.float32)

    def rollout(h, z, actions):
        return tf.reduce_sum(actions * w, -1), tf.ones(tf.shape(actions)[:2])

    return rollout


def numpy_cem(noise, top_k, discount, kind, low=None, high=None, weights=None):
    """The algorithm written out in numpy for the linear rollout."""
    iterations, batch, count, horizon, dim = noise.shape
    discounts = discount ** np.arange(horizon)
    if kind == "continuous":
        mean = np.broadcast_to((low + high) / 2, (batch, horizon, dim)).astype(np.float64)
        std = np.broadcast_to((high - low) / 2, (batch, horizon, dim)).astype(np.float64)
    else:
        probs = np.full((batch, horizon, dim), 1.0 / dim)
    for i in range(iterations):
        if kind == "continuous":
            actions = np.clip(mean[:, None] + std[:, None] * noise[i], low, high)
        else:
            scores = np.log(probs[:, None] + 1e-8) - np.log(-np.log(noise[i]))
            actions = np.eye(dim)[scores.argmax(-1)]
        returns = ((actions * weights).sum(-1) * discounts).sum(-1)  # [B, N]
        order = np.argsort(-returns, axis=1, kind="stable")[:, :top_k]
        elite = np.take_along_axis(actions, order[..., None, None], axis=1)
        if kind == "continuous":
            mean = elite.mean(1)
            std = np.sqrt(((elite - mean[:, None]) ** 2).mean(1))
        else:
            probs = elite.mean(1)
    if kind == "continuous":
        return mean[:, 0], mean, returns
    return np.eye(dim)[probs[:, 0].argmax(-1)], probs, returns


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_cem_matches_numpy_on_a_hand_built_rollout(kind):
    rng = np.random.default_rng(0)
    weights = np.array([1.0, -0.5, 0.25])
    shape = (3, 2, 40, 5, 3)
    noise = rng.standard_normal(shape) if kind == "continuous" else \
        rng.uniform(0.001, 0.999, shape)
    low, high = np.array([-1.0, -2.0, 0.0]), np.array([0.5, 2.0, 1.0])
    h, z = tf.zeros([2, 4]), tf.zeros([2, 6])
    out = cem(linear_rollout(weights), h, z, tf.constant(noise, tf.float32), 6, 0.9, kind,
              tf.constant(low, tf.float32), tf.constant(high, tf.float32))
    action, plan, returns = numpy_cem(noise, 6, 0.9, kind, low, high, weights)
    np.testing.assert_allclose(out["action"].numpy(), action, atol=1e-5)
    np.testing.assert_allclose(out["plan"].numpy(), plan, atol=1e-5)
    np.testing.assert_allclose(out["returns"].numpy(), returns, atol=1e-4)
    top = np.sort(returns, 1)[:, ::-1][:, :6].mean(1)
    np.testing.assert_allclose(out["elite_return"].numpy(), top, atol=1e-4)


def test_cem_finds_the_best_actions():
    """Reward a * w: the best plan is +high where w > 0, low where w < 0 (continuous),
    and the action with the largest weight (discrete)."""
    rng = np.random.default_rng(1)
    weights = np.array([1.0, -0.5])
    h, z = tf.zeros([1, 4]), tf.zeros([1, 6])
    noise = tf.constant(rng.standard_normal((6, 1, 300, 4, 2)), tf.float32)
    out = cem(linear_rollout(weights), h, z, noise, 30, 1.0, "continuous",
              tf.constant([-1.0, -2.0]), tf.constant([0.5, 2.0]))
    np.testing.assert_allclose(out["action"].numpy(), [[0.5, -2.0]], atol=0.1)
    noise = tf.constant(rng.uniform(0.01, 0.99, (3, 1, 100, 4, 3)), tf.float32)
    out = cem(linear_rollout([0.1, 0.5, -1.0]), h, z, noise, 10, 1.0, "discrete")
    np.testing.assert_array_equal(out["action"].numpy(), [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(out["plan"].numpy().argmax(-1), [[1, 1, 1, 1]])


def test_planner_config_validates_by_name():
    for fields, words in (({"top_k": 600}, "top_k must be <= candidates (500)"),
                          ({"horizon": 0}, "horizon must be a positive integer"),
                          ({"iterations": 1.5}, "iterations must be a positive integer"),
                          ({"kind": "gaussian"}, "kind must be one of"),
                          ({"low": -np.inf}, "low must be a finite number"),
                          ({"high": [1.0, np.nan]}, "high must be a finite"),
                          ({"low": 1.0, "high": 1.0}, "low must be below high"),
                          ({"discount": 0.0}, "discount must be in (0, 1]")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            PlannerConfig(**fields)
    PlannerConfig(kind="discrete", low=-np.inf)  # bounds are not used for discrete actions
    with pytest.raises(ValueError, match=r"low must have 2 entries \(action_dim\), got 3"):
        PlannerConfig(low=[-1, -1, -1], high=1.0).bounds(2)


@pytest.fixture(scope="module")
def model():
    """A small world model whose reward head predicts clearly different rewards for
    different states (its last layer is random, not DreamerV3's zeros)."""
    config = RssmConfig(obs_dim=3, action_dim=2, deterministic_size=16, n_categories=4,
                        n_classes=4, hidden_size=16, n_blocks=2)
    wm = WorldModel(config, seed=0)
    wm.rssm.observe(np.zeros((1, 2, 3), "f"), np.zeros((1, 2, 2), "f"), np.ones((1, 2), "f"))
    rng = np.random.default_rng(0)
    last = wm.rssm.reward_head.trainable_weights[-2]
    last.assign(rng.normal(size=last.shape).astype("f") * 0.3)
    return wm


def test_keras_planner_compiled_and_eager_agree_and_seed_reproduces(model):
    fields = dict(horizon=5, candidates=40, top_k=40, iterations=1, low=-1.0, high=1.0,
                  seed=3)
    plans = []
    for jit in (True, False):
        planner = Planner(model, jit_compile=jit, **fields)
        planner.reset(2)
        planner.observe(np.zeros((2, 2)), {"obs": np.ones((2, 3), "f")})
        plans.append(planner.plan_details())
    for key in ("action", "plan", "returns", "elite_return"):
        np.testing.assert_allclose(plans[0][key], plans[1][key], atol=1e-5, err_msg=key)
    assert np.ptp(plans[0]["returns"]) > 0.1  # the candidates are told apart
    # top_k = N and one iteration: the plan is the mean of the clipped candidates
    noise = PlannerConfig(**fields).noise(np.random.default_rng(3), 2, 2)
    np.testing.assert_allclose(plans[0]["plan"], np.clip(noise[0], -1, 1).mean(1), atol=1e-5)


def test_keras_planner_refuses_bad_calls(model):
    planner = Planner(model, horizon=3, candidates=8, top_k=2, iterations=1)
    with pytest.raises(RuntimeError, match="call reset"):
        planner.plan()
    planner.reset(1)
    with pytest.raises(ValueError, match=r"noise must have shape \[1, 1, 8, 3, 2\]"):
        planner.plan(np.zeros((1, 1, 8, 4, 2)))
    with pytest.raises(ValueError, match="obs"):
        planner.observe(np.zeros((1, 2)), {"obs": np.ones((1, 4), "f")})
    with pytest.raises(TypeError, match="model must be a WorldModel or an Rssm"):
        Planner(object())
    with pytest.raises(TypeError, match="either config or its fields"):
        Planner(model, PlannerConfig(), horizon=3)


class ScriptedPlanner:
    """A test double with the planner protocol: records what it observes, plans
    action index ``step % 2`` (one-hot), so the episode is known in advance."""

    obs_keys = ("obs",)

    def __init__(self):
        self.seen, self.step = [], 0

    def reset(self, batch_size):
        self.batch = batch_size

    def observe(self, action, obs):
        self.seen.append((np.array(action), np.array(obs["obs"])))

    def plan(self):
        self.step += 1
        return np.eye(2, dtype=np.float32)[np.full(self.batch, self.step % 2)]


def test_run_episodes_records_what_the_environment_did(tmp_path):
    gym = pytest.importorskip("gymnasium")
    from rssm_tf.agent import run_episodes
    from rssm_tf.data import load_episode

    planner = ScriptedPlanner()
    results = run_episodes("CartPole-v1", planner, 2, seed=7, directory=tmp_path)
    for i, result in enumerate(results):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=7 + i)
        observations, total, step = [obs], 0.0, 0
        while True:  # the same actions by hand: 1, 0, 1, 0, ...
            step += 1
            obs, reward, terminated, truncated, _ = env.step(step % 2)
            observations.append(obs)
            total += reward
            if terminated or truncated:
                break
        episode = load_episode(result["path"])
        assert result["return"] == total and result["length"] == step
        np.testing.assert_allclose(episode["obs"], np.array(observations), rtol=1e-6)
        assert episode["is_first"][0] == 1 and episode["is_terminal"][-1] == 1
        np.testing.assert_array_equal(episode["action"][1:].argmax(-1),
                                      np.arange(1, step + 1) % 2)
        np.testing.assert_array_equal(episode["action"][0], [0, 0])
    first_action, first_obs = planner.seen[0]
    assert not first_action.any() and first_obs.shape == (2, 4)  # reset: no action yet
    np.testing.assert_array_equal(planner.seen[1][0], [[0, 1], [0, 1]])  # what was taken


def test_run_episodes_refuses_bad_arguments():
    pytest.importorskip("gymnasium")
    from rssm_tf.agent import run_episodes

    with pytest.raises(ValueError, match="explore must be in"):
        run_episodes("CartPole-v1", ScriptedPlanner(), 1, explore=2.0)
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        run_episodes("CartPole-v1", ScriptedPlanner(), 0)
    planner = ScriptedPlanner()
    planner.obs_keys = ("image",)
    with pytest.raises(ValueError, match=r"needs observation keys \['image'\]"):
        run_episodes("CartPole-v1", planner, 1)
