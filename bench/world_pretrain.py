"""Time and accuracy of pretraining the synthetic world's model at the default size.

Runs ``factkeep world`` from nothing (forced retraining, fresh output folder) and prints the
figures the foundation targets: pretraining wall time (goal <= 300 s on a 2-core CPU) and zero-shot
QA accuracy of people whose biographies only were pretrained (goal >= 0.90).

Usage::

    python bench/world_pretrain.py                 # default world, output in a temp folder
    python bench/world_pretrain.py pretrain.epochs=30 --keep runs/bench_world

Timings on shared machines are noisy; run it when the machine is otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from factkeep.cli import main as factkeep_main


def run(overrides: list[str], out: Path) -> dict:
    """Run ``factkeep world`` into ``out`` and return its evaluation plus wall time."""
    t0 = time.time()
    code = factkeep_main(["world", f"out={out}", "force=true", *overrides])
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"factkeep world failed with exit code {code}")
    report = json.loads((out / "world_eval.json").read_text())
    report["wall_seconds"] = round(wall, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="factkeep world options (key=value)")
    parser.add_argument("--keep", help="write the world here instead of a temp folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "world"
        report = run(args.overrides, out)
    pops = report["populations"]
    print(
        f"pretraining: {report['pretrain_seconds']:.0f} s (goal <= 300 s); "
        f"bio-only QA accuracy: {pops['bio']['accuracy']:.3f} (goal >= 0.90); "
        f"qa: {pops['qa']['accuracy']:.3f}; unseen: {pops['unseen']['accuracy']:.3f} (chance)"
    )
    print(f"whole command: {report['wall_seconds']:.0f} s; cpu_count={os.cpu_count()}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
