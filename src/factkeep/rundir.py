"""Run folders: atomic file writes, the resolved config and ``env.json`` beside every result.

Every command that produces files writes them through these helpers, so a crash never leaves a
half-written file: content goes to a temporary name in the same folder and is renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from factkeep.config import config_to_dict

_PACKAGES = (
    "factkeep",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "safetensors",
    "numpy",
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, then rename.

    The file gets the permissions an ordinary ``open(path, "w")`` would give (``0o666`` less the
    umask), not the private ``0o600`` of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)


def git_revision(start: str | Path | None = None) -> str | None:
    """The git commit of the factkeep source tree (``+dirty`` if modified), or None."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(seed: int | None = None) -> dict[str, Any]:
    """Versions, platform, device, git revision and seed: what ``env.json`` records."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = "cpu"
    try:
        import torch  # lazily: slow to import, and the light commands' modules import this one

        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "versions": versions,
        "git": git_revision(),
        "seed": seed,
        "argv": sys.argv,
    }


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a resolved config (a dataclass instance) as YAML, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, text)


def write_run_metadata(out_dir: str | Path, cfg: Any, seed: int | None = None) -> None:
    """Write ``config.yaml`` (the resolved config) and ``env.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / "env.json", environment_info(seed))
