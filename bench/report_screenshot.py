"""Build a report from run folders and screenshot it with headless Chromium, to look at it.

Usage::

    python bench/report_screenshot.py                      # runs/demo/runs -> /tmp/factkeep-report
    python bench/report_screenshot.py runs/exp --out /tmp/report --height 6000

Prints the path of the screenshot (PNG). Needs ``chromium`` (or ``chromium-browser`` /
``google-chrome``) on the PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from factkeep.eval.report import build_report, discover_runs, load_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400) -> Path:
    """Render ``html`` with headless Chromium into ``png`` (``width`` x ``height`` pixels)."""
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        raise SystemExit(f"no browser found (tried {', '.join(BROWSERS)})")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        html.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise SystemExit(f"{browser} wrote no screenshot")
    return png


def main(argv: list[str] | None = None) -> int:
    """Build the report, take the screenshot and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=["runs/demo/runs"], help="run folders")
    parser.add_argument("--out", default="/tmp/factkeep-report", help="output folder")
    parser.add_argument("--title", default="factkeep report")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=2400, help="page height to capture")
    args = parser.parse_args(argv)
    found = discover_runs(args.runs)
    if not found:
        print(f"no run folders in {', '.join(args.runs)}", file=sys.stderr)
        return 1
    out = Path(args.out)
    html = out / "report.html"
    build_report([load_run(p) for p in found], html, args.title)
    png = screenshot(html, out / "report.png", args.width, args.height)
    print(f"report: {html}")
    print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
