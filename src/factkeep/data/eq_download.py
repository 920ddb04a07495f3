"""Finding, downloading and verifying EntityQuestions (Sciavolino et al., 2021; MIT licence).

A local copy is looked up in this order (:func:`locate_eq_root`):

1. ``$FACTKEEP_EQ_ROOT``, if set;
2. the copy downloaded before into the cache, ``$FACTKEEP_CACHE/entityquestions`` (the cache
   defaults to ``~/.cache/factkeep``);
3. ``../shared/data/entityquestions`` relative to the current directory.

:func:`download_entityquestions` fetches the official release archive (:data:`DEFAULT_URL`, a
zip holding ``dataset/{train,dev,test}/P*.{split}.json``, with or without
``relation_query_templates.json``) into a temporary folder inside the cache, extracts it, checks
every published file against the manifest shipped beside this module
(``entityquestions_manifest.json``) and only then renames the finished folder into place, so the
cache holds either a complete, verified copy or nothing. The cached folder has the layout of a
local copy (``relation_query_templates.json``, ``train/``, ``dev/``, ``test/``) plus
``download.json`` (the URL and the archive's sha256).

The archive's own hash is not known in advance; the manifest pins each file's *canonical
content* instead: the sha256 of the parsed JSON re-serialised with
``json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))`` in UTF-8, which
does not depend on indentation or key order. The manifest also holds the relation templates, used
when the archive lacks the templates file. The archive's sha256 is logged on every download so it
can be pinned with ``sha256=``.

Run as a module to (re)build the manifest from a local copy, or to check a copy against it::

    python -m factkeep.data.eq_download manifest ROOT OUT   # write the manifest of ROOT to OUT
    python -m factkeep.data.eq_download verify ROOT         # check ROOT against the manifest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from factkeep.cache import default_cache_dir
from factkeep.data.entityquestions import (
    _FILE_RE,
    ENV_VAR,
    SPLITS,
    TEMPLATES_FILE,
    _read_json,
    _relation_key,
)
from factkeep.errors import DataError, FactkeepError
from factkeep.rundir import atomic_write_json

logger = logging.getLogger(__name__)

DEFAULT_URL = "https://nlp.cs.princeton.edu/projects/entity-questions/dataset.zip"
"""The official release archive of EntityQuestions."""

CACHE_SUBDIR = "entityquestions"
"""Name of the downloaded copy's folder inside the cache."""

MANIFEST_PATH = Path(__file__).with_name("entityquestions_manifest.json")
"""The shipped manifest: canonical-content sha256 of every published file, and the templates."""

_CHUNK = 1 << 20


class DownloadError(FactkeepError):
    """The archive could not be fetched (network failure, bad URL, HTTP error)."""


# --------------------------------------------------------------------------------------------
# Where a copy is
# --------------------------------------------------------------------------------------------


def eq_cache_path(cache_dir: str | Path | None = None) -> Path:
    """Where a downloaded copy lives: ``CACHE/entityquestions``.

    Args:
        cache_dir: The cache folder; :func:`default_cache_dir` if None.

    Returns:
        The (resolved) folder; it may not exist.
    """
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return (base / CACHE_SUBDIR).resolve()


def shared_eq_root() -> Path:
    """The shared copy's usual place, ``../shared/data/entityquestions`` from the current folder.

    Returns:
        The (resolved) folder; it may not exist.
    """
    return (Path.cwd() / ".." / "shared" / "data" / "entityquestions").resolve()


def locate_eq_root(cache_dir: str | Path | None = None) -> Path | None:
    """Find a local copy: ``$FACTKEEP_EQ_ROOT``, else the cached download, else ``../shared``.

    Args:
        cache_dir: The cache folder; :func:`default_cache_dir` if None.

    Returns:
        ``$FACTKEEP_EQ_ROOT`` whenever it is set (even if it does not exist, so that the caller
        reports it), else the first of the other two places that is a folder, else None.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    for candidate in (eq_cache_path(cache_dir), shared_eq_root()):
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# Manifest and verification
# --------------------------------------------------------------------------------------------


def canonical_sha256(obj: Any) -> str:
    """The sha256 of a parsed JSON value's canonical serialisation.

    Args:
        obj: A JSON-serialisable value.

    Returns:
        The hex digest of ``json.dumps(obj, sort_keys=True, ensure_ascii=False,
        separators=(",", ":"))`` encoded as UTF-8.
    """
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_sha256(path: str | Path) -> str:
    """The canonical-content sha256 of a JSON file (see :func:`canonical_sha256`).

    Args:
        path: The JSON file.

    Returns:
        The hex digest.

    Raises:
        DataError: The file is missing, not UTF-8 or not valid JSON (located by line).
    """
    obj, _ = _read_json(Path(path))
    return canonical_sha256(obj)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes.

    Args:
        path: The file.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def published_files(root: str | Path) -> list[str]:
    """The published files under ``root``, as manifest keys (relative, ``/``-separated).

    Args:
        root: A copy of EntityQuestions.

    Returns:
        The templates file (if present) then ``{split}/P*.{split}.json`` split by split
        (train, dev, test), relation by relation (by property number).
    """
    root = Path(root)
    keys = [TEMPLATES_FILE] if (root / TEMPLATES_FILE).is_file() else []
    for split in SPLITS:
        found: dict[str, str] = {}
        for path in (root / split).glob(f"P*.{split}.json"):
            match = _FILE_RE.fullmatch(path.name)
            if match and match.group(2) == split:
                found[match.group(1)] = f"{split}/{path.name}"
        keys += [found[rel] for rel in sorted(found, key=_relation_key)]
    return keys


def build_manifest(root: str | Path) -> dict[str, Any]:
    """Build the manifest of a copy of EntityQuestions.

    Args:
        root: The copy; it must hold ``relation_query_templates.json`` and the split folders.

    Returns:
        ``{"canonical": how the hashes are made, "files": {key: sha256}, "templates": {...}}``
        where ``key`` is e.g. ``"train/P17.train.json"``.

    Raises:
        DataError: The templates file or every data file is missing, or a file is malformed.
    """
    root = Path(root)
    templates, _ = _read_json(root / TEMPLATES_FILE)
    if not isinstance(templates, dict):
        raise DataError("expected a JSON object", root / TEMPLATES_FILE)
    keys = published_files(root)
    if len(keys) < 2:
        raise DataError("no P*.{split}.json files under train/, dev/ or test/", root)
    files = {key: content_sha256(root / key) for key in keys}
    return {
        "source": "EntityQuestions (Sciavolino et al., 2021), MIT licence",
        "url": DEFAULT_URL,
        "canonical": "sha256 of json.dumps(obj, sort_keys=True, ensure_ascii=False, "
        'separators=(",", ":")) in UTF-8',
        "files": files,
        "templates": templates,
    }


def _check_manifest(manifest: Any, where: str | Path) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise DataError("a manifest must be a JSON object", where)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise DataError("must be a non-empty object of file -> sha256", where, field="files")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise DataError("must map file names to sha256 strings", where, field="files")
    templates = manifest.get("templates")
    if not isinstance(templates, dict):
        raise DataError("must be an object of relation -> template", where, field="templates")
    return manifest


def load_manifest(path: str | Path | None = None) -> dict[str, Any]:
    """Read a manifest (the shipped one by default).

    Args:
        path: The manifest file; :data:`MANIFEST_PATH` if None.

    Returns:
        The manifest.

    Raises:
        DataError: The file is missing or malformed.
    """
    path = Path(path) if path is not None else MANIFEST_PATH
    manifest, _ = _read_json(path)
    return _check_manifest(manifest, path)


def verify_tree(
    root: str | Path,
    manifest: Mapping[str, Any] | None = None,
    label: str | None = None,
) -> None:
    """Check that every manifest file is under ``root`` with the right canonical content.

    Files under ``root`` that the manifest does not list are ignored.

    Args:
        root: The copy to check.
        manifest: The manifest; the shipped one (:func:`load_manifest`) if None.
        label: What to call ``root`` in errors (e.g. the archive's name), if not its path.

    Raises:
        DataError: A listed file is missing, malformed (located by line) or has other content;
            the error names the file.
    """
    root = Path(root)
    checked = load_manifest() if manifest is None else _check_manifest(dict(manifest), "<manifest>")
    files: dict[str, str] = checked["files"]
    shown = label if label is not None else str(root)
    for key, expected in files.items():
        path = root / key
        where = f"{shown}/{key}"
        if not path.is_file():
            raise DataError("missing (listed in the EntityQuestions manifest)", where)
        try:
            actual = content_sha256(path)
        except DataError as exc:
            raise DataError(exc.reason, where, exc.line, exc.field) from None
        if actual != expected:
            raise DataError(
                f"content differs from the published file (canonical sha256 {actual}, "
                f"expected {expected})",
                where,
            )
    logger.info("Verified %d EntityQuestions files in %s", len(files), shown)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def download_file(url: str, dest: str | Path, progress: bool | None = None) -> str:
    """Stream ``url`` into ``dest`` with a progress bar.

    Args:
        url: An ``http(s)://`` or ``file://`` URL.
        dest: The file to write (it is left partial on failure; the caller removes it).
        progress: Show a tqdm bar; None shows it only on a terminal.

    Returns:
        The sha256 of the bytes written.

    Raises:
        DownloadError: The URL is invalid or cannot be fetched.
    """
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            disable = None if progress is None else not progress
            with (
                open(dest, "wb") as handle,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc="EntityQuestions",
                    disable=disable,
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"cannot download {url}: {reason}. Check the network connection, or fetch the "
            "archive another way and pass url=file:///path/to/dataset.zip (or root= an "
            "extracted copy)"
        ) from None
    return digest.hexdigest()


def _dataset_dir(extracted: Path, label: str) -> Path:
    """The folder of the extracted archive that holds the split folders."""
    candidates = [extracted / "dataset", extracted]
    candidates += sorted(
        (p.parent for p in extracted.rglob("train") if p.is_dir() and "__MACOSX" not in p.parts),
        key=lambda p: len(p.parts),
    )
    for folder in candidates:
        if all((folder / split).is_dir() for split in SPLITS):
            return folder
    raise DataError("the archive holds no dataset/ folder with train/, dev/ and test/", label)


def _extract(archive: Path, dest: Path, label: str) -> None:
    """Extract a zip archive, refusing members that would land outside ``dest``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            top = dest.resolve()
            for name in zf.namelist():
                target = (dest / name).resolve()
                if target != top and top not in target.parents:
                    raise DataError(f"unsafe member path {name!r}", label)
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"not a valid zip archive: {exc}", label) from None


def _assemble(extracted: Path, staging: Path, manifest: Mapping[str, Any], label: str) -> None:
    """Move the manifest's files from the extracted archive into ``staging`` and verify them."""
    dataset = _dataset_dir(extracted, label)
    files: dict[str, str] = manifest["files"]
    staging.mkdir()
    for key in files:
        if key == TEMPLATES_FILE:
            continue
        source = dataset / key
        if not source.is_file():
            raise DataError("missing (listed in the EntityQuestions manifest)", f"{label}/{key}")
        (staging / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), staging / key)
    extra = [k for k in published_files(dataset) if k not in files and k != TEMPLATES_FILE]
    if extra:
        logger.info("Ignoring %d archive files not in the manifest: %s", len(extra), extra[:5])

    templates = next(
        (p for p in (dataset / TEMPLATES_FILE, extracted / TEMPLATES_FILE) if p.is_file()), None
    )
    if templates is not None:
        shutil.move(str(templates), staging / TEMPLATES_FILE)
    else:
        logger.info("The archive has no %s; writing the manifest's templates", TEMPLATES_FILE)
        mapping = manifest["templates"]
        expected = files.get(TEMPLATES_FILE)
        if expected is not None and canonical_sha256(mapping) != expected:
            raise DataError("the manifest's templates do not match its hash", "<manifest>")
        text = json.dumps(mapping, indent=4, ensure_ascii=False) + "\n"
        (staging / TEMPLATES_FILE).write_text(text, encoding="utf-8")
    verify_tree(staging, manifest, label=label)


def download_entityquestions(
    cache_dir: str | Path | None = None,
    url: str = DEFAULT_URL,
    sha256: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    progress: bool | None = None,
) -> Path:
    """Download, verify and cache EntityQuestions; reuse the cached copy if there is one.

    Everything happens in a temporary folder inside the cache folder, which is renamed to
    ``CACHE/entityquestions`` only once every file is verified; on failure nothing is left
    (cache folders this call created are removed again if empty).

    Args:
        cache_dir: The cache folder; :func:`default_cache_dir` if None.
        url: The release archive (``http(s)://`` or ``file://``).
        sha256: If given, the archive's expected sha256 (hex).
        manifest: What to verify against; the shipped manifest if None.
        progress: Show a download progress bar; None shows it only on a terminal.

    Returns:
        The folder of the verified copy.

    Raises:
        DownloadError: The archive cannot be fetched.
        DataError: The archive's hash differs from ``sha256``, it is not a valid zip, or a
            published file is missing, malformed or changed (the error names the file).
    """
    final = eq_cache_path(cache_dir)
    if final.is_dir():
        logger.info("Using the EntityQuestions copy cached in %s", final)
        return final
    checked = load_manifest() if manifest is None else _check_manifest(dict(manifest), "<manifest>")
    label = url.rstrip("/").rsplit("/", 1)[-1] or "archive"

    created: list[Path] = []
    folder = final.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.", suffix=".tmp", dir=final.parent))
    try:
        archive = work / "archive.zip"
        logger.info("Downloading EntityQuestions from %s", url)
        digest = download_file(url, archive, progress=progress)
        logger.info("EntityQuestions archive sha256: %s (pin it with sha256=%s)", digest, digest)
        if sha256 is not None and digest != sha256.strip().lower():
            raise DataError(f"archive sha256 is {digest}, expected sha256={sha256}", url)
        extracted = work / "extracted"
        _extract(archive, extracted, label)
        staging = work / CACHE_SUBDIR
        _assemble(extracted, staging, checked, label)
        record = {"url": url, "archive_sha256": digest, "files": len(checked["files"])}
        atomic_write_json(staging / "download.json", record)
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("Another process cached EntityQuestions meanwhile; using its copy")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(work, ignore_errors=True)
    logger.info("EntityQuestions verified and cached in %s", final)
    return final


# --------------------------------------------------------------------------------------------
# python -m factkeep.data.eq_download
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m factkeep.data.eq_download {manifest ROOT OUT | verify ROOT [MANIFEST]}``.

    Args:
        argv: The arguments (``sys.argv[1:]`` if None).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(
        prog="python -m factkeep.data.eq_download",
        description="Build or check the manifest of a copy of EntityQuestions.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("manifest", help="write the manifest of ROOT to OUT")
    build.add_argument("root")
    build.add_argument("out")
    check = sub.add_parser("verify", help="check ROOT against a manifest (default: shipped)")
    check.add_argument("root")
    check.add_argument("manifest", nargs="?")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "manifest":
            manifest = build_manifest(args.root)
            atomic_write_json(args.out, manifest)
            logger.info("Wrote the manifest of %d files to %s", len(manifest["files"]), args.out)
        else:
            verify_tree(args.root, load_manifest(args.manifest))
    except FactkeepError as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
