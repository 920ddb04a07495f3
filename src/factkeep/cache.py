"""factkeep's cache folder, and the one way cached work is keyed.

``$FACTKEEP_CACHE`` if set, else ``~/.cache/factkeep``. It holds ``entityquestions/`` (a verified
download of EntityQuestions, :mod:`factkeep.data.eq_download`) and ``models/<name>/`` (catalog
models assembled from chunks, :mod:`factkeep.models.catalog`).

Work that is reused when asked again (the world's pretrained model, the demo's stages and runs) is
keyed by :func:`cache_key`: a short hash of everything the result depends on, as JSON. A finished
stage leaves a marker file holding its key (:func:`mark_done`); :func:`is_done` reuses it only if
its product exists and the key matches. (Resuming an *interrupted* probe or training run is a
different matter: those compare their saved settings, see ``factkeep probe`` and ``train``.)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from factkeep.rundir import atomic_write_json

__all__ = ["CACHE_ENV", "cache_key", "default_cache_dir", "is_done", "mark_done", "marked_key"]

CACHE_ENV = "FACTKEEP_CACHE"
"""Environment variable that overrides factkeep's cache folder (default ``~/.cache/factkeep``)."""


def default_cache_dir() -> Path:
    """factkeep's cache folder: ``$FACTKEEP_CACHE`` if set, else ``~/.cache/factkeep``.

    Returns:
        The cache folder (it may not exist).
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "factkeep"


def cache_key(payload: Any) -> str:
    """A 16-hex-digit hash of ``payload`` (JSON, keys sorted): equal payloads, equal keys.

    Args:
        payload: JSON-serialisable data (dicts, lists, strings, numbers, ``None``).
    """
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_done(folder: Path, marker: str, key: str, product: str) -> bool:
    """Whether ``folder`` holds a finished ``product`` made with ``key`` (see :func:`mark_done`).

    Args:
        folder: the stage's folder.
        marker: the marker file's name in it.
        key: the :func:`cache_key` of what the product depends on now.
        product: a file or folder name in ``folder`` that the stage makes.
    """
    path = folder / marker
    if not (folder / product).exists() or not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


def marked_key(folder: Path, marker: str) -> str | None:
    """The key recorded in ``folder``'s marker file, or None without a readable one."""
    try:
        key = json.loads((folder / marker).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def mark_done(folder: Path, marker: str, key: str) -> None:
    """Record that the work in ``folder`` is done, or being done, with ``key``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / marker, {"key": key})
