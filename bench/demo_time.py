"""Benchmark: wall time of ``factkeep demo`` from nothing, with the base model cached, and cached.

Runs ``python -m factkeep demo`` three times in one output folder (a temporary one unless
``--out`` is given), each as a fresh process, so interpreter start and imports are counted:

1. from nothing: build and pretrain the world, probe, split, train every method, report;
2. base model cached: the probe, splits and runs are deleted first, the pretrained world is kept;
3. everything cached: every stage is reused.

Prints the three totals first, then the time of each stage (from the demo's ``timing.json``).
Run it alone on the machine: timings of concurrent jobs mean little.

Run::

    PYTHONPATH=src python bench/demo_time.py            # about 9 minutes on 2 CPU cores
    PYTHONPATH=src python bench/demo_time.py --out runs/demo_bench methods=[sft,self_distill]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES_AFTER_THE_MODEL = ("probe", "probe_facts.jsonl", "split", "runs", "report.html")


def _run(out: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "factkeep", "demo", f"out={out}", *extra],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"factkeep demo failed with exit code {proc.returncode}")
    return seconds, json.loads((out / "timing.json").read_text())


def main() -> None:
    """Time the demo from nothing, with the base model cached and fully cached."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="factkeep demo options (key=value)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp) / "demo"
        if out.exists():
            shutil.rmtree(out)
        cold = _run(out, args.overrides)
        for name in STAGES_AFTER_THE_MODEL:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        model_cached = _run(out, args.overrides)
        cached = _run(out, args.overrides)
    rows = (("from nothing", cold), ("base model cached", model_cached), ("all cached", cached))
    print(
        ", ".join(f"{name} {seconds:.0f} s ({seconds / 60:.1f} min)" for name, (seconds, _) in rows)
    )
    for name, (_, stages) in rows:
        print(f"  {name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))


if __name__ == "__main__":
    main()
