"""The shipped method configs (``sft``, ``self_distill``, ...), one YAML file each.

``factkeep train --config self_distill`` finds ``self_distill.yaml`` here; any other value of
``--config`` is a path. :func:`method_names` lists them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIG_DIR", "method_names", "resolve_config_path"]

CONFIG_DIR = Path(__file__).resolve().parent
"""The folder holding the shipped YAML files."""


def method_names() -> list[str]:
    """Names of the shipped configs, sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(value: str) -> str:
    """``value`` if it is an existing file, else the shipped config of that name if there is one."""
    if Path(value).exists():
        return value
    name = value[:-5] if value.endswith(".yaml") else value
    shipped = CONFIG_DIR / f"{Path(name).name}.yaml"
    if "/" not in name and shipped.is_file():
        return str(shipped)
    return value
