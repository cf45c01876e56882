"""rssm_tf/cpu.py: importing rssm_tf asks TensorFlow for oneDNN's CPU kernels, keeps a
user's choice, and an image model compiled without them on a CPU says so.

Each case is a fresh Python process, since TensorFlow reads its variable once, at load.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# TensorFlow's own default (DefaultOneDnnPolicy in tensorflow/core/util/port.cc): oneDNN's
# kernels on Linux x86 CPUs with any of these features, Eigen's elsewhere
ONEDNN_DEFAULT_FLAGS = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                        "amx_bf16"}

PROBE = """
import json, os, sys, warnings
{imports}
from rssm_tf.cpu import SET_BY_RSSM_TF, onednn_enabled
import tensorflow as tf
out = {{"variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "set": SET_BY_RSSM_TF,
        "enabled": onednn_enabled(), "gpu": bool(tf.config.list_physical_devices("GPU"))}}
if {compile_image}:
    from rssm_tf import RssmConfig, WorldModel
    model = WorldModel(RssmConfig(obs_dim=0, action_dim=1, image_shape=(16, 16, 3),
                                  cnn_depth=4, cnn_minres=4, deterministic_size=8,
                                  n_categories=2, n_classes=2, hidden_size=8, n_blocks=0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile()
    out["warnings"] = [str(w.message) for w in caught if "oneDNN" in str(w.message)]
    out["xla"] = model.jit_compile
print("RESULT " + json.dumps(out))
"""


def probe(imports: str, variable: str | None, compile_image: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if variable is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = variable
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = PROBE.format(imports=imports, compile_image=compile_image)
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def tensorflow_default() -> bool:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return bool(flags & ONEDNN_DEFAULT_FLAGS)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists() or os.uname().machine != "x86_64",
                    reason="TensorFlow's oneDNN policy is read here for Linux x86 CPUs")
def test_importing_rssm_tf_first_turns_onednn_on_and_tensorflow_first_keeps_its_default():
    first = probe("import rssm_tf", None, compile_image=True)
    assert first["variable"] == "1" and first["set"] is True and first["enabled"] is True
    assert first["warnings"] == [] and first["xla"] is first["gpu"]

    late = probe("import tensorflow\nimport rssm_tf", None)
    assert late["variable"] is None and late["set"] is False
    assert late["enabled"] is tensorflow_default()


def test_a_users_setting_is_kept_and_eigen_kernels_warn_for_an_image_model():
    off = probe("import rssm_tf", "0", compile_image=True)
    assert off["variable"] == "0" and off["set"] is False and off["enabled"] is False
    if off["gpu"]:  # convolutions run on the GPU: nothing to warn about
        assert off["warnings"] == [] and off["xla"] is True
    else:
        assert len(off["warnings"]) == 1 and "TF_ENABLE_ONEDNN_OPTS=1" in off["warnings"][0]
        assert off["xla"] is False

    on = probe("import rssm_tf", "1")
    assert on["variable"] == "1" and on["set"] is False and on["enabled"] is True


def test_the_benchmarks_cpu_switches_reach_tensorflow_and_name_the_results():
    """benchmarks/results.py: ``--isa avx2 --onednn 0`` set before TensorFlow loads, the
    process runs Eigen's kernels under the AVX2 caps, and the tables get their own names."""
    code = """
import json, sys
sys.path.insert(0, "benchmarks")
from results import cpu_switches, isa_caps, onednn_kernels
cpu_switches(["x", "--isa", "avx2", "--onednn=0"])
import tensorflow
print("RESULT " + json.dumps({"caps": isa_caps(), "onednn": onednn_kernels()}))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "XLA_FLAGS")}
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert out == {"caps": {"ONEDNN_MAX_CPU_ISA": "AVX2", "xla_cpu_max_isa": "AVX2"},
                   "onednn": False}
    bad = subprocess.run([sys.executable, "-c", code.replace("avx2", "avx9")], env=env,
                         cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert bad.returncode != 0 and "--isa must be native or avx2, got 'avx9'" in bad.stderr
