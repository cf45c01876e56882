"""Puts the latest benchmark tables into ``docs/performance.md``.

Every benchmark writes ``benchmarks/results/<name>.md`` (see ``results.py``); this
replaces the part of ``docs/performance.md`` between its two ``results`` markers with
those files, in a fixed order, so the page shows the tables as they were last measured.

    python benchmarks/report.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- results: begin (benchmarks/report.py) -->", "<!-- results: end -->"
ORDER = ("train_speed", "profile_update", "serving_latency", "serving_latency_imagine",
         "serving_latency_plan", "int8", "serving_load", "data_pipeline",
         "data_pipeline_compressed", "end_to_end", "behavior_update", "agent", "pendulum_optimum")


def rank(path: Path) -> tuple[int, str]:
    base = path.stem.split("-")[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), path.stem)


def main() -> int:
    page = PAGE.read_text()
    if BEGIN not in page or END not in page:
        print(f"{PAGE}: the markers {BEGIN!r} and {END!r} are missing", file=sys.stderr)
        return 1
    tables = [p.read_text().strip() for p in sorted(RESULTS.glob("*.md"), key=rank)]
    body = "\n\n".join(tables) if tables else "(no results yet: run the benchmarks)"
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    tmp = PAGE.with_name(f".{PAGE.name}.tmp")
    tmp.write_text(f"{head}{BEGIN}\n\n{body}\n\n{END}{tail}")
    os.replace(tmp, PAGE)
    print(f"{PAGE}: {len(tables)} tables from {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
