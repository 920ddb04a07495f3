"""factkeep's cache folder, where downloaded data and assembled model files are kept.

``$FACTKEEP_CACHE`` if set, else ``~/.cache/factkeep``. It holds ``entityquestions/`` (a verified
download of EntityQuestions, :mod:`factkeep.data.eq_download`) and ``models/<name>/`` (catalog
models assembled from chunks, :mod:`factkeep.models.catalog`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "default_cache_dir"]

CACHE_ENV = "FACTKEEP_CACHE"
"""Environment variable that overrides factkeep's cache folder (default ``~/.cache/factkeep``)."""


def default_cache_dir() -> Path:
    """factkeep's cache folder: ``$FACTKEEP_CACHE`` if set, else ``~/.cache/factkeep``.

    Returns:
        The cache folder (it may not exist).
    """
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "factkeep"
