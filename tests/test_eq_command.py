"""Tests of ``factkeep data entityquestions`` and the EntityQuestions download, all offline.

A tiny fake EntityQuestions tree is zipped the way the official archive is laid out
(``dataset/{train,dev,test}/P*.{split}.json``) and served through ``file://`` URLs; its manifest
is built with :func:`factkeep.data.eq_download.build_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import pytest

import factkeep.data.eq_download as eqd
from factkeep.cache import CACHE_ENV
from factkeep.cli import main
from factkeep.data.entityquestions import ENV_VAR, default_eq_root
from factkeep.data.facts import Fact, read_facts
from factkeep.errors import DataError

TEMPLATES = {
    "P17": "Which country is [X] located in?",
    "P36": "What is the capital of [X]?",
    "P40": "Who is [X]'s child?",
}
PLACES = [("Painblanc", "France"), ("Grímsstaðir", "Iceland"), ("Arica", "Chile"),
          ("Osaka", "Japan"), ("Cusco", "Peru"), ("Turin", "Italy"), ("Pokhara", "Nepal"),
          ("Seville", "Spain")]  # fmt: skip
SIZES = {"train": 8, "dev": 4, "test": 3}
CMD = ["data", "entityquestions"]
SHIPPED_MANIFEST = eqd.MANIFEST_PATH


def _rows(relation: str, split: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for i, (place, country) in enumerate(PLACES[: SIZES[split]]):
        if relation == "P17":
            rows.append({"question": f"Which country is {place}-{split} located in?",
                         "answers": [country]})  # fmt: skip
        else:
            rows.append({"question": f"What is the capital of {country}-{split}{i}?",
                         "answers": [place, place.upper()]})  # fmt: skip
    return rows


def _dump(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


def _make_tree(root: Path) -> Path:
    _dump(root / "relation_query_templates.json", TEMPLATES)
    for split in SIZES:
        for relation in ("P17", "P36"):
            _dump(root / split / f"{relation}.{split}.json", _rows(relation, split))
    return root


def _zip(tree: Path, archive: Path, templates: str | None = "top") -> Path:
    """Zip ``tree`` as ``dataset/...``; the templates file at the archive's top, in
    ``dataset/`` or left out (``templates`` = "top", "dataset" or None)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(tree.rglob("*.json")):
            rel = path.relative_to(tree).as_posix()
            if rel == "relation_query_templates.json":
                if templates == "top":
                    zf.write(path, rel)
                elif templates == "dataset":
                    zf.write(path, f"dataset/{rel}")
            else:
                zf.write(path, f"dataset/{rel}")
    return archive


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _make_tree(tmp_path / "eq")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tree: Path) -> Path:
    """No $FACTKEEP_EQ_ROOT, an empty cache, no ../shared, and the fake tree's manifest."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(eqd.build_manifest(tree)), encoding="utf-8")
    monkeypatch.setattr(eqd, "MANIFEST_PATH", manifest)
    return cache


@pytest.fixture
def archive(tmp_path: Path, tree: Path) -> Path:
    return _zip(tree, tmp_path / "dataset.zip")


def _run(*args: str) -> int:
    return main([*CMD, *args])


def _ids(path: Path) -> list[str]:
    return [fact.id for fact in read_facts(path)]


# --------------------------------------------------------------------------------------------
# From a local copy
# --------------------------------------------------------------------------------------------


def test_local_root_all(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "folder" / "facts.jsonl"
    assert _run(f"root={tree}", f"out={out}") == 0
    facts = read_facts(out)
    assert [f.id for f in facts] == [f"P17.train.{i}" for i in range(8)] + [
        f"P36.train.{i}" for i in range(8)
    ]
    assert facts[1].subject == "Grímsstaðir-train" and facts[1].answers == ["Iceland"]
    assert facts[8].answers == ["Painblanc", "PAINBLANC"]
    assert all(f.meta == {"split": "train", "source": "entityquestions"} for f in facts)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["P17", "8", "facts"]
    assert lines[1].split()[:3] == ["P36", "8", "facts"]
    assert lines[-1].split()[:3] == ["total", "16", "facts"]


def test_filters(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.jsonl"
    assert _run(f"root={tree}", f"out={out}", "splits=test,dev", "relations=P36") == 0
    assert _ids(out) == [f"P36.test.{i}" for i in range(3)] + [f"P36.dev.{i}" for i in range(4)]


def test_root_from_env(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tree))
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "splits=dev") == 0
    assert len(_ids(out)) == 8


def test_root_from_shared(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared" / "data" / "entityquestions"
    shared.parent.mkdir(parents=True)
    tree.rename(shared)
    assert default_eq_root() == shared.resolve()
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "splits=test") == 0
    assert len(_ids(out)) == 6


def test_per_relation_sample(tree: Path, tmp_path: Path) -> None:
    def sample(name: str, *extra: str) -> list[str]:
        out = tmp_path / f"{name}.jsonl"
        assert _run(f"root={tree}", f"out={out}", "per_relation=3", *extra) == 0
        return _ids(out)

    first = sample("a", "splits=train,dev")
    assert first == sample("b", "splits=train,dev")  # reproducible
    per_group: dict[tuple[str, str], list[int]] = {}
    for fact_id in first:
        relation, split, index = fact_id.split(".")
        per_group.setdefault((relation, split), []).append(int(index))
    assert set(per_group) == {(r, s) for r in ("P17", "P36") for s in ("train", "dev")}
    for indices in per_group.values():
        assert len(indices) == 3 and indices == sorted(indices)  # file order
    # One relation's sample does not depend on what else is loaded.
    only = sample("c", "splits=train", "relations=P17")
    assert only == [i for i in first if i.startswith("P17.train.")]
    # Other seeds give other samples.
    others = {tuple(sample(f"s{seed}", "splits=train", f"seed={seed}")) for seed in range(1, 5)}
    assert len(others | {tuple(i for i in first if ".train." in i)}) > 1
    # More than there are keeps them all.
    assert len(sample("all", "per_relation=100", "splits=test")) == 6


def test_exemplars_out(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, shots = tmp_path / "train.jsonl", tmp_path / "sub" / "dev.jsonl"
    args = [f"root={tree}", f"out={out}", "relations=P17", "per_relation=2"]
    assert _run(*args, f"exemplars_out={shots}") == 0
    dev = read_facts(shots)
    assert len(dev) == 2 and all(f.id.startswith("P17.dev.") for f in dev)
    assert all(f.meta["split"] == "dev" for f in dev)
    assert len(_ids(out)) == 2
    summary = capsys.readouterr().out
    assert "2 dev exemplars" in summary and str(shots) in summary


# --------------------------------------------------------------------------------------------
# Bad input: a clear error, a non-zero exit code and nothing written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["splits=validation"], 2, "option 'splits': unknown split(s) 'validation'"),
        (["relations=P17,P999"], 1, "field 'relations': unknown relation(s) 'P999'"),
        (["per_relation=-1"], 2, "option 'per_relation'"),
    ],
)
def test_bad_options(
    tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    out = tmp_path / "f.jsonl"
    assert _run(f"root={tree}", f"out={out}", *args) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_out_required(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(f"root={tree}") == 2
    assert "out= is required" in capsys.readouterr().err


def test_malformed_local_file(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _dump(
        tree / "dev" / "P17.dev.json",
        [{"question": "Which country is A located in?", "answers": ["B"]}, {"question": "Q?"}],
    )
    out, shots = tmp_path / "f.jsonl", tmp_path / "d.jsonl"
    assert _run(f"root={tree}", f"out={out}", f"exemplars_out={shots}") == 1
    assert f"{bad}:8: field 'answers'" in capsys.readouterr().err
    assert not out.exists() and not shots.exists()


def test_no_local_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}") == 1
    err = capsys.readouterr().err
    for option in ("root=", "FACTKEEP_EQ_ROOT", "download=true"):
        assert option in err
    assert not out.exists()


def test_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(f"root={tmp_path / 'nowhere'}", f"out={tmp_path / 'f.jsonl'}") == 1
    assert "nowhere" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Download, verification and the cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("templates", ["top", "dataset", None])
def test_download_and_reuse(
    tree: Path,
    tmp_path: Path,
    isolated: Path,
    caplog: pytest.LogCaptureFixture,
    templates: str | None,
) -> None:
    archive = _zip(tree, tmp_path / "dataset.zip", templates)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = tmp_path / "f.jsonl"
    with caplog.at_level(logging.INFO):
        code = _run(f"out={out}", "download=true", f"url={archive.as_uri()}", "splits=test")
    assert code == 0
    assert digest in caplog.text  # the archive's hash is logged, to pin it
    cached = isolated / "entityquestions"
    assert sorted(p.name for p in cached.iterdir()) == [
        "dev",
        "download.json",
        "relation_query_templates.json",
        "test",
        "train",
    ]
    assert json.loads((cached / "relation_query_templates.json").read_text()) == TEMPLATES
    assert [p.name for p in isolated.iterdir()] == ["entityquestions"]  # no temp leftovers
    assert len(_ids(out)) == 6
    eqd.verify_tree(cached)

    # The second run reuses the cache: the archive is gone, and no download is attempted.
    archive.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = _run(f"out={out}", "download=true", f"url={archive.as_uri()}", "splits=dev")
    assert code == 0
    assert "Downloading" not in caplog.text
    assert len(_ids(out)) == 8
    assert default_eq_root() == cached.resolve()


def test_download_into_cache_dir(tree: Path, archive: Path, tmp_path: Path) -> None:
    cache = tmp_path / "elsewhere" / "cache"
    out = tmp_path / "f.jsonl"
    args = [f"out={out}", "download=true", f"url={archive.as_uri()}", f"cache_dir={cache}"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert _run(*args, f"sha256={digest.upper()}") == 0
    assert (cache / "entityquestions" / "train" / "P17.train.json").is_file()
    assert len(_ids(out)) == 16


def _assert_nothing_cached(cache: Path, out: Path) -> None:
    assert not cache.exists()
    assert not out.exists()


def test_tampered_archive(
    tree: Path, tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = _rows("P17", "train")
    rows[2]["answers"] = ["Peru"]
    _dump(tree / "train" / "P17.train.json", rows)  # after the manifest was built
    archive = _zip(tree, tmp_path / "dataset.zip")
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "download=true", f"url={archive.as_uri()}") == 1
    err = capsys.readouterr().err
    assert "dataset.zip/train/P17.train.json" in err and "content differs" in err
    _assert_nothing_cached(isolated, out)


def test_archive_missing_a_file(
    tree: Path, tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "test" / "P36.test.json").unlink()
    archive = _zip(tree, tmp_path / "dataset.zip")
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "download=true", f"url={archive.as_uri()}") == 1
    assert "test/P36.test.json: missing" in capsys.readouterr().err
    _assert_nothing_cached(isolated, out)


def test_wrong_sha256(
    archive: Path, tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "f.jsonl"
    args = [f"out={out}", "download=true", f"url={archive.as_uri()}", f"sha256={'0' * 64}"]
    assert _run(*args) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and hashlib.sha256(archive.read_bytes()).hexdigest() in err
    _assert_nothing_cached(isolated, out)


def test_malformed_json_in_archive(
    tree: Path, tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tree / "dev" / "P36.dev.json"
    path.write_text(
        '[\n  {"question": "What is the capital of A?",\n   "answers": ["B"]\n  ,\n]',
        encoding="utf-8",
    )
    archive = _zip(tree, tmp_path / "dataset.zip")
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "download=true", f"url={archive.as_uri()}") == 1
    err = capsys.readouterr().err
    assert "dataset.zip/dev/P36.dev.json:5: invalid JSON" in err
    _assert_nothing_cached(isolated, out)


def test_not_a_zip(tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = tmp_path / "dataset.zip"
    archive.write_text("<html>not found</html>")
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "download=true", f"url={archive.as_uri()}") == 1
    assert "not a valid zip archive" in capsys.readouterr().err
    _assert_nothing_cached(isolated, out)


def test_download_failure(
    tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = (tmp_path / "absent.zip").as_uri()
    out = tmp_path / "f.jsonl"
    assert _run(f"out={out}", "download=true", f"url={url}") == 1
    err = capsys.readouterr().err
    assert f"cannot download {url}" in err
    _assert_nothing_cached(isolated, out)


def test_existing_cache_parent_kept(
    tmp_path: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated / "other").mkdir(parents=True)
    url = (tmp_path / "absent.zip").as_uri()
    assert _run(f"out={tmp_path / 'f.jsonl'}", "download=true", f"url={url}") == 1
    assert [p.name for p in isolated.iterdir()] == ["other"]


# --------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------


def test_manifest_functions(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert eqd.main(["manifest", str(tree), str(out)]) == 0
    manifest = eqd.load_manifest(out)
    assert manifest["templates"] == TEMPLATES
    assert list(manifest["files"])[:3] == [
        "relation_query_templates.json",
        "train/P17.train.json",
        "train/P36.train.json",
    ]
    assert len(manifest["files"]) == 7
    # Canonical content: formatting and key order do not matter, content does.
    path = tree / "train" / "P17.train.json"
    rows = _rows("P17", "train")
    path.write_text(json.dumps([dict(reversed(r.items())) for r in rows]), encoding="utf-8")
    eqd.verify_tree(tree, manifest)
    assert eqd.main(["verify", str(tree), str(out)]) == 0
    rows[0]["question"] = "Which country is Elsewhere located in?"
    _dump(path, rows)
    with pytest.raises(DataError, match=r"train/P17\.train\.json: content differs"):
        eqd.verify_tree(tree, manifest)
    assert eqd.main(["verify", str(tree), str(out)]) == 1


def test_sample_helper_keeps_order() -> None:
    from factkeep.study.data import sample_per_relation

    facts = [
        Fact(f"P1.train.{i}", f"q{i}?", ["a"], "P1", f"s{i}", None, {"split": "train"})
        for i in range(20)
    ]
    kept = sample_per_relation(facts, 5, seed=3)
    assert kept == sample_per_relation(facts, 5, seed=3)
    assert len(kept) == 5 and kept == sorted(kept, key=lambda f: int(f.id.split(".")[-1]))
    assert sample_per_relation(facts, 0, seed=3) == facts


def test_shipped_manifest_matches_shared_data() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "entityquestions"
    if not shared.is_dir():
        pytest.skip(f"EntityQuestions not found at {shared}")
    shipped = eqd.load_manifest(SHIPPED_MANIFEST)
    built = eqd.build_manifest(shared)
    assert built["files"] == shipped["files"]
    assert built["templates"] == shipped["templates"]
    assert len(shipped["files"]) == 1 + 3 * 24
    eqd.verify_tree(shared, shipped)
