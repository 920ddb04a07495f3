"""Benchmark: wall time of ``factkeep demo`` from nothing and again with everything cached.

Runs the demo twice in one output folder (a temporary one unless ``--out`` is given): the first run
builds and pretrains the world, probes, splits, trains every method and writes the report; the
second reuses the cached stages. Prints the two totals first, then the time of each stage (from
the demo's ``timing.json``). Run it alone on the machine: timings of concurrent jobs mean little.

Run::

    PYTHONPATH=src python bench/demo_time.py            # about 25 minutes on 2 CPU cores
    PYTHONPATH=src python bench/demo_time.py --out runs/demo_bench methods=[sft,self_distill]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

from factkeep.cli import main as factkeep


def _run(out: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = factkeep(["demo", f"out={out}", *extra])
    if code:
        raise SystemExit(f"factkeep demo failed with exit code {code}")
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "timing.json").read_text())


def main() -> None:
    """Time the demo from nothing and cached; print the totals first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="factkeep demo options (key=value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "demo"
        cold, cold_stages = _run(out, args.overrides)
        warm, warm_stages = _run(out, args.overrides)
    print(f"demo from nothing {cold:.0f} s ({cold / 60:.1f} min); cached {warm:.0f} s")
    for name, stages in (("from nothing", cold_stages), ("cached", warm_stages)):
        print(f"  {name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))


if __name__ == "__main__":
    main()
