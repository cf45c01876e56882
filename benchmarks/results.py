"""Where the benchmarks put their results, and the machine they were measured on.

Every benchmark ends with :func:`write_results`, which writes
``benchmarks/results/<name>.json`` (the full report) and ``<name>.md`` (its table), both
headed by :func:`machine`: the date, the cores this process may use, the CPU model, the
CPU's vector extensions, the ISA caps set for oneDNN and XLA, whether TensorFlow runs
its oneDNN or Eigen CPU kernels, and the float32 matmul
peak measured in the same run, so that a table read later says what it was measured on.
``python benchmarks/report.py`` gathers the ``.md`` files into ``docs/performance.md``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# the CPU flags that decide which kernels oneDNN and XLA pick
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
         "amx_bf16")


def cpu_model() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`FLAGS` the CPU reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def isa_caps() -> dict[str, str | None]:
    """The ISA limits this process runs under (unset: the CPU's best)."""
    xla = [f for f in os.environ.get("XLA_FLAGS", "").split() if "max_isa" in f]
    return {"ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "xla_cpu_max_isa": xla[0].split("=", 1)[1] if xla else None}


def cpu_switches(argv: list[str]) -> None:
    """Applies ``--isa avx2`` and ``--onednn 0|1`` from ``argv`` before TensorFlow loads
    (oneDNN and XLA read their variables once, at load): ``--isa avx2`` caps oneDNN
    (``ONEDNN_MAX_CPU_ISA``) and XLA (``--xla_cpu_max_isa``) at AVX2, so a newer CPU
    measures AVX2 kernels; ``--onednn`` sets ``TF_ENABLE_ONEDNN_OPTS`` (TensorFlow's
    choice of Eigen's or oneDNN's CPU kernels; rssm_tf asks for oneDNN's when it is
    unset, rssm_tf/cpu.py). The scripts declare the same flags for ``--help``."""
    def value(flag: str) -> str | None:
        for i, arg in enumerate(argv):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
        return None

    isa, onednn = value("--isa"), value("--onednn")
    if isa not in (None, "native", "avx2"):
        raise SystemExit(f"--isa must be native or avx2, got {isa!r}")
    if onednn not in (None, "0", "1"):
        raise SystemExit(f"--onednn must be 0 or 1, got {onednn!r}")
    if "tensorflow" in sys.modules and (isa, onednn) != (None, None):
        raise RuntimeError("--isa and --onednn must be applied before TensorFlow is "
                           "imported")
    if isa == "avx2":
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_max_isa=AVX2").strip()
    if onednn is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = onednn
    import rssm_tf  # noqa: F401  (before TensorFlow: the library's kernel choice applies)


def add_cpu_switches(parser: Any) -> None:
    """The ``--isa`` and ``--onednn`` flags :func:`cpu_switches` applied, for ``--help``."""
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="cap oneDNN's and XLA's kernels at AVX2 (set before TF loads)")
    parser.add_argument("--onednn", choices=("0", "1"), default=None,
                        help="TF_ENABLE_ONEDNN_OPTS: Eigen's (0) or oneDNN's (1) CPU kernels "
                             "(default: rssm_tf's choice, oneDNN's unless already set)")


def onednn_kernels() -> bool | None:
    """Whether TensorFlow runs oneDNN's CPU kernels in this process (None: not loaded)."""
    if "tensorflow" not in sys.modules:
        return None
    from rssm_tf.cpu import onednn_enabled

    return onednn_enabled()


def matmul_peak(dtype: str = "float32", n: int = 2048, iters: int = 10) -> float:
    """GFLOP/s of an ``n``-cubed matmul under XLA: the machine's practical peak."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal([n, n]), dtype)
    fn = tf.function(lambda: tf.matmul(a, a), jit_compile=True)
    for _ in range(2):
        fn().numpy()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / 1e9 / sorted(times)[len(times) // 2]


def machine(peak_gflops: float | None = None) -> dict[str, Any]:
    """The date and machine of a run; measures the float32 matmul peak unless given."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cores": cores, "cpu": cpu_model(), "cpu_flags": cpu_flags(),
            "isa_caps": isa_caps(), "onednn_kernels": onednn_kernels(),
            "matmul_float32_gflops": round(peak_gflops if peak_gflops is not None
                                           else matmul_peak(), 1)}


def describe(info: dict[str, Any]) -> str:
    """One line: date, cores, CPU, flags, caps, matmul peak."""
    caps = ", ".join(f"{k}={v}" for k, v in info["isa_caps"].items() if v) or "no ISA cap"
    kernels = {True: "; TensorFlow's oneDNN kernels", False: "; TensorFlow's Eigen kernels",
               None: ""}[info.get("onednn_kernels")]
    return (f"{info['date']}; {info['cores']} cores, {info['cpu']} "
            f"({' '.join(info['cpu_flags']) or 'no AVX2'}; {caps}{kernels}); float32 matmul peak "
            f"{info['matmul_float32_gflops']:.0f} GFLOP/s")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats printed with 4 significant digits."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, report: dict[str, Any], table: str,
                  notes: str = "", info: dict[str, Any] | None = None,
                  json_path: str | os.PathLike | None = None) -> Path:
    """Writes ``results/<name>.json`` (``report`` with ``machine``) and ``<name>.md``
    (``title``, the machine line, ``table``, ``notes``); returns the JSON path. A run
    under an ISA cap writes ``<name>-<cap>.*`` and one with TensorFlow's Eigen kernels
    ``<name>-eigen.*``, so every variant's table is kept."""
    info = info or machine()
    cap = info["isa_caps"]["ONEDNN_MAX_CPU_ISA"] or info["isa_caps"]["xla_cpu_max_isa"]
    stem = f"{name}-{cap.lower()}" if cap else name
    if info.get("onednn_kernels") is False:
        stem += "-eigen"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(json_path) if json_path else RESULTS / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({"machine": info, **report}, indent=2))
    os.replace(tmp, out)
    md = RESULTS / f"{stem}.md"
    heading = title + (f" (ISA capped: {cap})" if cap else "") + (
        " (Eigen kernels)" if info.get("onednn_kernels") is False else "")
    text = f"### {heading}\n\n{describe(info)}; `{report.get('command', name)}`\n\n{table}\n"
    if notes:
        text += f"\n{notes}\n"
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)
    print(f"wrote {out} and {md}")
    return out
