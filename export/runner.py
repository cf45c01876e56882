"""Backend-neutral parity cases: inputs for the serving signatures and how to run them.

Needs only numpy, so a fresh process that must not import ``rssm_tf`` (the SavedModel
check) and the ONNX Runtime check run exactly the same cases as the Keras model.

A case is ``{"signature": name, "inputs": {name: array}}``; a rollout case also has
``"steps": {name: array [N, ...]}``, fed one step at a time while ``h``/``z`` come
from the previous step's ``h_next``/``z_next`` (and, for the actor's ``act*``, the
``action`` from its ``action_next``: the loop a deployed agent runs). A per-step case
(:func:`per_step_cases`) also has ``"carry": {name: array [N, ...]}``: step t starts
from the reference's carry of that step instead of the backend's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

Call = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def make_cases(dims: dict[str, int], batch: int = 4, rollout: int = 8, horizon: int = 15,
               seed: int = 0) -> dict[str, dict]:
    """Random inputs for every deterministic signature (the planners: one iteration of
    12 candidates of 4 steps) and two multi-step rollouts.

    ``dims``: ``deterministic_size``, ``n_categories``, ``n_classes``, ``action_dim``
    and ``obs_space`` as the manifest describes it (``{key: {"shape": per-step shape,
    "dtype": "float32", "uint8" or "int32"}}`` with ``"classes"`` for int32,
    ``ObsSpace.manifest()``); with ``actor``
    ("discrete" or "continuous", a Dreamer's export) also the ``act_*`` cases.
    """
    rng = np.random.default_rng(seed)
    d, s, k = dims["deterministic_size"], dims["n_categories"], dims["n_classes"]
    a, space = dims["action_dim"], dims["obs_space"]

    def f32(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)

    h = f32(rng.normal(size=(batch, d)) * 0.5)
    z = f32(np.eye(k)[rng.integers(0, k, (batch, s))].reshape(batch, s * k))
    action = f32(rng.uniform(-1, 1, (batch, a)))

    def observation(*lead: int) -> dict[str, np.ndarray]:
        out = {}
        for key, desc in space.items():
            shape = (*lead, *desc["shape"])
            if desc["dtype"] == "uint8":  # pixels
                out[key] = rng.integers(0, 256, shape).astype(np.uint8)
            elif desc["dtype"] == "int32":  # class indices
                out[key] = rng.integers(0, desc["classes"], shape).astype(np.int32)
            else:
                out[key] = f32(rng.normal(size=shape))
        return out

    obs = observation(batch)
    noise = f32(rng.uniform(0.001, 0.999, (batch, s, k)))
    actions = f32(rng.uniform(-1, 1, (batch, horizon, a)))
    noise_seq = f32(rng.uniform(0.001, 0.999, (batch, horizon, s, k)))
    steps = {"action": f32(rng.uniform(-1, 1, (rollout, batch, a))),
             **observation(rollout, batch),
             "noise": f32(rng.uniform(0.001, 0.999, (rollout, batch, s, k)))}
    zeros = {"h": np.zeros_like(h), "z": np.zeros_like(z)}
    # One iteration keeping all 12 candidates (horizon 4): the outputs are then smooth
    # functions of the model's, so backends agree to rounding; with fewer elites, which
    # ones win can rest on a reward difference below float32 rounding (an untrained
    # reward head predicts ~0 for every candidate)
    plan = dict(h=h, z=z, top_k=np.array(12, np.int32), discount=np.array(0.9, np.float32))
    plan_shape = (1, batch, 12, 4, a)
    cases = {
        "plan_continuous": {"signature": "plan_continuous", "inputs": dict(
            plan, noise=f32(rng.standard_normal(plan_shape)),
            low=np.full(a, -1.0, np.float32), high=np.full(a, 0.5, np.float32))},
        "plan_discrete": {"signature": "plan_discrete", "inputs": dict(
            plan, noise=f32(rng.uniform(0.001, 0.999, plan_shape)))},
        "obs_step_noise": {"signature": "obs_step_noise",
                           "inputs": dict(h=h, z=z, action=action, **obs, noise=noise)},
        "obs_step_mode": {"signature": "obs_step_mode",
                          "inputs": dict(h=h, z=z, action=action, **obs)},
        "imagine_step_noise": {"signature": "imagine_step_noise",
                               "inputs": dict(h=h, z=z, action=action, noise=noise)},
        "imagine_step_mode": {"signature": "imagine_step_mode",
                              "inputs": dict(h=h, z=z, action=action)},
        "predict": {"signature": "predict", "inputs": dict(h=h, z=z)},
        "decode": {"signature": "decode", "inputs": dict(h=h, z=z)},
        "imagine_noise": {"signature": "imagine_noise",
                          "inputs": dict(h=h, z=z, actions=actions, noise=noise_seq)},
        "imagine_mode": {"signature": "imagine_mode",
                         "inputs": dict(h=h, z=z, actions=actions)},
        "rollout_obs_step_noise": {"signature": "obs_step_noise", "inputs": zeros,
                                   "steps": steps},
        "rollout_obs_step_mode": {"signature": "obs_step_mode", "inputs": zeros,
                                  "steps": {k_: v for k_, v in steps.items()
                                            if k_ != "noise"}},
    }
    kind = dims.get("actor")
    if kind is not None:
        def action_noise(*lead: int) -> np.ndarray:
            return f32(rng.uniform(0.001, 0.999, (*lead, a)) if kind == "discrete"
                       else rng.standard_normal((*lead, a)))

        observed = dict(h=h, z=z, action=action, **obs)
        closed = {k_: v for k_, v in steps.items() if k_ not in ("action", "noise")}
        start = {**zeros, "action": np.zeros_like(action)}
        cases.update({
            "act_noise": {"signature": "act_noise",
                          "inputs": dict(observed, noise=action_noise(batch))},
            "act_mode": {"signature": "act_mode", "inputs": observed},
            "rollout_act_noise": {"signature": "act_noise", "inputs": start,
                                  "steps": dict(closed, noise=action_noise(rollout, batch))},
            "rollout_act_mode": {"signature": "act_mode", "inputs": start,
                                 "steps": closed}})
    return cases


def litert_cases(cases: dict[str, dict]) -> dict[str, dict]:
    """The cases of the signatures converted to LiteRT: not the planner's (LiteRT
    cannot lower their loops) nor ``decode`` (not converted)."""
    return {name: case for name, case in cases.items()
            if not case["signature"].startswith("plan_") and case["signature"] != "decode"}


CARRIED = {"h": "h_next", "z": "z_next", "action": "action_next"}  # input <- output
PER_STEP = "_per_step"  # the suffix of a rollout's per-step twin


def per_step_cases(cases: dict[str, dict], reference: dict[str, dict]) -> dict[str, dict]:
    """For each rollout case ``name``, ``name + PER_STEP``: the same steps, each
    starting from the carry (``h``, ``z``, the actor's ``action``) that ``reference``
    (that case's outputs, stacked over the steps) fed into it. A backend's outputs
    then differ from the reference's by one step's rounding, not by the rounding the
    free-running rollout compounds through its fed-back continuous outputs."""
    forced = {}
    for name, case in cases.items():
        if "steps" not in case:
            continue
        ref = reference[name]
        carry = {k: np.concatenate([np.asarray(case["inputs"][k])[None], ref[out][:-1]])
                 for k, out in CARRIED.items() if k in case["inputs"] and out in ref}
        forced[name + PER_STEP] = {**case, "carry": carry}
    return forced


def run_case(call: Call, case: dict) -> dict[str, np.ndarray]:
    """Outputs of one case through ``call(signature, inputs)``; rollouts stack each
    output over the steps ([N, ...])."""
    if "steps" not in case:
        return {k: np.asarray(v) for k, v in call(case["signature"], case["inputs"]).items()}
    carry = dict(case["inputs"])  # h, z (and the actor's first action)
    outputs: dict[str, list] = {}
    count = len(next(iter(case["steps"].values())))
    for t in range(count):
        carry.update({k: v[t] for k, v in case.get("carry", {}).items()})
        out = call(case["signature"], {**carry, **{k: v[t] for k, v in case["steps"].items()}})
        for key, value in out.items():
            outputs.setdefault(key, []).append(np.asarray(value))
        carry.update({k: np.asarray(out[o]) for k, o in CARRIED.items() if o in out})
    return {k: np.stack(v) for k, v in outputs.items()}


def run_all(call: Call, cases: dict[str, dict]) -> dict[str, dict[str, np.ndarray]]:
    return {name: run_case(call, case) for name, case in cases.items()}


def save_arrays(path: str | Path, nested: dict[str, dict]) -> None:
    """Saves ``{case: {kind: {key: array}}}`` or ``{case: {key: array}}`` as one npz."""
    flat, layout = {}, {}
    for case, parts in nested.items():
        layout[case] = {}
        for part, value in parts.items():
            if isinstance(value, dict):
                layout[case][part] = sorted(value)
                for key, array in value.items():
                    flat[f"{case}|{part}|{key}"] = array
            else:
                layout[case][part] = None
                flat[f"{case}|{part}"] = value
    np.savez(path, __layout__=np.array(json.dumps(layout)), **flat)


def load_arrays(path: str | Path) -> dict[str, dict]:
    with np.load(path, allow_pickle=False) as data:
        layout = json.loads(str(data["__layout__"]))
        nested: dict[str, dict] = {}
        for case, parts in layout.items():
            nested[case] = {}
            for part, keys in parts.items():
                if keys is None:
                    nested[case][part] = data[f"{case}|{part}"]
                else:
                    nested[case][part] = {k: data[f"{case}|{part}|{k}"] for k in keys}
    return nested


def load_cases(path: str | Path) -> dict[str, dict]:
    """Cases saved by :func:`save_arrays`; the signature names come from the layout."""
    raw = load_arrays(path)
    return {name: {"signature": str(parts.pop("signature")), **parts}
            for name, parts in raw.items()}


def save_cases(path: str | Path, cases: dict[str, dict]) -> None:
    save_arrays(path, {name: {**{k: v for k, v in case.items() if k != "signature"},
                              "signature": np.array(case["signature"])}
                       for name, case in cases.items()})
