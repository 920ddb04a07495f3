"""The wheel ships what the package reads (.ci/wheel-smoke builds and runs it outside the repo)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

import factkeep

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "factkeep"


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_package_data_covers_every_non_python_file() -> None:
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["factkeep"]
    data = [p.relative_to(PACKAGE).as_posix() for p in _package_files() if p.suffix != ".py"]
    assert data, "the package ships data files (configs, manifests)"
    missing = [name for name in data if not any(fnmatch.fnmatch(name, g) for g in globs)]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"


def test_no_module_reads_the_source_tree() -> None:
    """A module finds its files next to itself (``Path(__file__).parent``), never above the
    package: the repository is not there once factkeep is installed from its wheel."""
    above = re.compile(r"__file__.*(\.parents\b|\.parent\.parent)")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if above.search(line)
    ]
    assert not offenders


def test_metadata_version_license_and_changelog() -> None:
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert "version" in project["dynamic"]
    version = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "factkeep.__version__"}
    assert project["classifiers"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"\n## {factkeep.__version__}" in changelog, "CHANGELOG.md: a section per version"
