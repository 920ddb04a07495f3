"""Hugging Face datasets as fact sources (factkeep.data.hf_facts): saved folders, Parquet and JSON
files and hub ids, their column mapping, row-located errors, and the commands reading them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from factkeep.cli import main
from factkeep.config import ConfigError, resolve_config
from factkeep.data.fact_sets import fact_set_name, is_split_name, load_fact_set, read_fact_source
from factkeep.data.facts import Fact, read_facts, write_facts
from factkeep.data.hf_facts import (
    ColumnMap,
    DatasetRowError,
    parse_dataset_source,
    read_dataset_facts,
    rows_to_facts,
)
from factkeep.errors import DataError, FactkeepError
from factkeep.study.probe import ProbeCommandConfig, select_facts

datasets = pytest.importorskip("datasets")

ROWS = [
    {"id": "a.0", "question": "Where is Lyon?", "answers": ["France"], "relation": "P17",
     "subject": "Lyon", "extra": 1},
    {"id": "a.1", "question": "Where is Osaka?", "answers": ["Japan", "Nippon"], "relation": "P17",
     "subject": "Osaka", "extra": 2},
    {"id": "a.2", "question": "Capital of Peru?", "answers": ["Lima"], "relation": "P36",
     "subject": "Peru", "extra": 3},
]  # fmt: skip
EXPECTED = [Fact(r["id"], r["question"], r["answers"], r["relation"], r["subject"]) for r in ROWS]
RENAMED = [
    {"q": r["question"], "golds": r["answers"], "rel": r["relation"], "subj": r["subject"]}
    for r in ROWS
]


@pytest.fixture(autouse=True)
def _quiet_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def _save(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write rows as a dataset: a folder (no suffix), Parquet, or JSON Lines (.json/.jsonl)."""
    data = datasets.Dataset.from_list(rows)
    if path.suffix == ".parquet":
        data.to_parquet(str(path))
    elif path.suffix in (".json", ".jsonl"):
        data.to_json(str(path))
    else:
        data.save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["saved", "facts.parquet", "facts.json", "array.json"])
def test_each_local_format_gives_the_facts(tmp_path, name) -> None:
    if name == "array.json":  # a JSON array of objects, as many exports write it
        path = tmp_path / name
        path.write_text(json.dumps(ROWS))
    else:
        path = _save(ROWS, tmp_path / name)
    assert load_fact_set(str(path), "") == EXPECTED  # the extra column is ignored
    assert read_fact_source(str(path)) == EXPECTED


def test_a_jsonl_file_is_a_dataset_with_hf_prefix_or_a_mapping(tmp_path) -> None:
    path = _save(RENAMED, tmp_path / "renamed.jsonl")
    mapping = "#question=q#answers=golds#relation=rel#subject=subj"
    facts = load_fact_set(f"{path}{mapping}", "")
    assert [f.question for f in facts] == [r["question"] for r in ROWS]
    assert [f.id for f in facts] == ["renamed-0", "renamed-1", "renamed-2"]
    columns = ColumnMap(question="q", answers="golds", relation="rel", subject="subj")
    assert load_fact_set(f"hf:{path}", "", columns) == facts
    with pytest.raises(DataError, match=r"renamed\.jsonl:1: field 'q': unknown field .* write hf:"):
        load_fact_set(str(path), "")  # plain .jsonl: a factkeep facts file


def test_column_mapping_options_and_inline_pieces(tmp_path) -> None:
    path = _save(RENAMED, tmp_path / "renamed.parquet")
    columns = ColumnMap(question="q", answers="golds", relation="rel", subject="subj")
    facts = read_dataset_facts(str(path), columns)
    assert [(f.question, f.answers, f.relation, f.subject) for f in facts] == [
        (e.question, e.answers, e.relation, e.subject) for e in EXPECTED
    ]
    assert [f.id for f in facts] == ["renamed-0", "renamed-1", "renamed-2"]
    # A source's own pieces win over the options: the subject becomes the question.
    inline = read_dataset_facts(f"{path}#subject=q#id=subj", columns)
    assert [f.subject for f in inline] == [r["question"] for r in ROWS]
    assert [f.id for f in inline] == ["Lyon", "Osaka", "Peru"]
    # The same mapping from the command line: a section of options, or one YAML mapping.
    cfg = resolve_config(ProbeCommandConfig, None, ["columns.question=q", "columns.answers=golds"])
    assert cfg.columns.as_dict() == {"question": "q", "answers": "golds"}
    cfg = resolve_config(ProbeCommandConfig, None, ["columns={question: q, subject: subj}"])
    assert cfg.columns.as_dict() == {"question": "q", "subject": "subj"}


def test_default_alternatives_structs_and_answer_strings(tmp_path) -> None:
    popqa = [  # PopQA's columns: int ids, subj, prop, possible_answers as a JSON string
        {"id": 7, "subj": "Lyon", "prop": "country", "question": "Where is Lyon?",
         "possible_answers": '["France", "French Republic"]'},
        {"id": 8, "subj": "Osaka", "prop": "country", "question": "Where is Osaka?",
         "possible_answers": "Japan"},
    ]  # fmt: skip
    facts = read_dataset_facts(str(_save(popqa, tmp_path / "popqa.parquet")))
    assert [(f.id, f.subject, f.relation) for f in facts] == [
        ("7", "Lyon", "country"),
        ("8", "Osaka", "country"),
    ]
    assert [f.answers for f in facts] == [["France", "French Republic"], ["Japan"]]

    squad = [  # a struct of lists (SQuAD) and a list of structs
        {"question": "Q1?", "answers": {"text": ["x", "y"], "start": [0, 3]},
         "alts": [{"value": "x"}, {"value": "z"}], "relation": "r", "subject": "s1"},
    ]  # fmt: skip
    path = _save(squad, tmp_path / "squad")
    assert read_dataset_facts(f"{path}#answers=answers.text")[0].answers == ["x", "y"]
    assert read_dataset_facts(f"{path}#answers=alts.value")[0].answers == ["x", "z"]
    with pytest.raises(DatasetRowError, match=r"row 0: field 'answers': is a struct with fields"):
        read_dataset_facts(str(path))

    csv = tmp_path / "qa.csv"  # one string answer per row
    csv.write_text("query,answer,relation,subject\nWhere is Lyon?,France,P17,Lyon\n")
    facts = load_fact_set(str(csv), "")
    assert [(f.id, f.question, f.answers) for f in facts] == [
        ("qa-0", "Where is Lyon?", ["France"])
    ]

    both = [{"question": "Q?", "answer": "a", "aliases": ["a"], "relation": "r", "subject": "s"}]
    with pytest.raises(DatasetRowError, match="'answer' and 'aliases' could both be it"):
        read_dataset_facts(str(_save(both, tmp_path / "both.parquet")))


def test_generated_ids_are_stable_and_name_the_split(tmp_path) -> None:
    rows = [{k: v for k, v in r.items() if k != "id"} for r in ROWS]
    saved = _save(rows, tmp_path / "noids")
    assert [f.id for f in load_fact_set(str(saved), "")] == ["noids-0", "noids-1", "noids-2"]
    assert load_fact_set(str(saved), "") == load_fact_set(str(saved), "")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    test = load_fact_set(f"{tmp_path / 'dd'}:test", "")
    assert [f.id for f in test] == ["dd-test-0"]
    assert fact_set_name(f"{tmp_path / 'dd'}:test") == "dd-test"
    with pytest.raises(DataError, match=r"has splits train, test: choose one with .*dd:SPLIT"):
        load_fact_set(str(tmp_path / "dd"), "")
    with pytest.raises(DataError, match=r"no split 'dev' \(splits: train, test\)"):
        load_fact_set(f"{tmp_path / 'dd'}:dev", "")

    repo = tmp_path / "repo" / "data"  # a folder of data files, as a hub repository holds them
    repo.mkdir(parents=True)
    _save(rows, repo / "train-00000.parquet")
    with pytest.raises(ConfigError, match=r"not written by save_to_disk; .* write hf:"):
        load_fact_set(str(tmp_path / "repo"), "")
    assert [f.id for f in load_fact_set(f"hf:{tmp_path / 'repo'}:train", "")] == [
        "repo-train-0", "repo-train-1", "repo-train-2"
    ]  # fmt: skip


def _bad(rows: list[dict[str, Any]], row: int, field: str, value: Any) -> list[dict[str, Any]]:
    rows = [dict(r) for r in rows]
    rows[row][field] = value
    return rows


@pytest.mark.parametrize(
    ("rows", "mapping", "message"),
    [
        (_bad(ROWS, 2, "answers", []),
         "", "row 2: field 'answers': must be a non-empty list of strings (column 'answers')"),
        (_bad(ROWS, 1, "answers", ["Japan", ""]),
         "", "row 1: field 'answers': element 1 must be a non-empty string"),
        (_bad(ROWS, 1, "question", None), "", "row 1: field 'question': must be a string"),
        (_bad(ROWS, 0, "subject", " "), "", "row 0: field 'subject': must be a non-empty string"),
        (_bad(ROWS, 2, "id", "a.0"),
         "", "row 2: field 'id': duplicate id 'a.0' (first seen at row 0)"),
        ([{**r, "cat": "Known"} for r in ROWS],
         "#category=cat", "row 0: field 'category': must be null or one of"),
        (RENAMED, "#question=q#answers=golds#relation=nope",
         "field 'relation': no column 'nope' (columns: q, golds, rel, subj)"),
        (RENAMED, "#answers=golds#relation=rel",
         "field 'question': no column found (looked for question, query; columns: q, golds"),
    ],
)  # fmt: skip
def test_bad_rows_name_source_row_and_field(tmp_path, rows, mapping, message) -> None:
    path = _save(rows, tmp_path / "facts.parquet")
    with pytest.raises(DataError) as caught:
        load_fact_set(f"{path}{mapping}", "")
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_rows_to_facts_without_datasets() -> None:
    columns = {"question": "q", "answers": "golds", "relation": "rel"}  # subject: 'subj'
    facts = rows_to_facts(RENAMED, list(RENAMED[0]), columns, "x")
    assert [f.id for f in facts] == ["x-0", "x-1", "x-2"]
    assert facts[0].relation == "P17" and facts[1].answers == ["Japan", "Nippon"]


def test_source_syntax() -> None:
    hub = parse_dataset_source("hub:owner/trivia:rc:validation#answers=answer.aliases")
    assert hub is not None
    assert (hub.kind, hub.location, hub.config, hub.split) == (
        "hub",
        "owner/trivia",
        "rc",
        "validation",
    )
    assert hub.columns == {"answers": "answer.aliases"}
    assert hub.text == "hub:owner/trivia:rc:validation" and hub.name == "trivia-rc-validation"
    assert parse_dataset_source("hub:owner/trivia").split is None  # type: ignore[union-attr]
    assert parse_dataset_source("runs/split/d_known.jsonl") is None
    assert parse_dataset_source("hf:x.jsonl").kind == "file"  # type: ignore[union-attr]
    assert parse_dataset_source("data/x.parquet").name == "x"  # type: ignore[union-attr]
    entries = ("d_known", "./d_known", "x.parquet", "hub:a/b", "a#id=b")
    assert [is_split_name(e) for e in entries] == [True, False, False, False, False]
    assert fact_set_name("d_held") == "d_held" and fact_set_name("a/b/c.jsonl") == "c"
    for bad, message in (
        ("hf://owner/name", "hub:owner/name"),
        ("hub:", "expected hub:owner/name"),
        ("hub:a/b:c:d:e", "expected hub:owner/name"),
        ("x.parquet#quest=q", "unknown field 'quest'"),
        ("x.parquet#question=", "names no column"),
        ("x.parquet#question=q,answers=a", "with '#', not ','"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_dataset_source(bad)


def test_hub_sources_go_through_load_dataset(monkeypatch) -> None:
    calls: list[tuple[Any, ...]] = []
    trivia = [
        {"question": "Q1?", "answer": {"aliases": ["x", "X"], "value": "x"},
         "relation": "r", "subject": "s1"},
    ]  # fmt: skip

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None, **kw):
        calls.append((path, name, split))
        data = datasets.Dataset.from_list(trivia)
        return data if split else datasets.DatasetDict({"train": data})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    facts = load_fact_set("hub:owner/trivia:rc:validation#answers=answer.aliases", "")
    assert calls == [("owner/trivia", "rc", "validation")]
    assert [(f.id, f.answers) for f in facts] == [("trivia-rc-validation-0", ["x", "X"])]
    facts = load_fact_set("hub:owner/trivia", "", ColumnMap(answers="answer.value"))
    assert calls[-1] == ("owner/trivia", None, None)  # no split: the only one
    assert [(f.id, f.answers) for f in facts] == [("trivia-0", ["x"])]

    def failing(*args: Any, **kw: Any) -> Any:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match="hub:owner/x: cannot load the dataset: ConnectionError"):
        load_fact_set("hub:owner/x", "")


def test_missing_datasets_package_says_what_to_install(tmp_path, monkeypatch) -> None:
    path = _save(ROWS, tmp_path / "facts.parquet")
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(FactkeepError, match=r"pip install 'factkeep\[datasets\]'"):
        load_fact_set(str(path), "")
    write_facts(tmp_path / "d_known.jsonl", EXPECTED)  # JSONL needs no datasets
    assert load_fact_set("d_known", str(tmp_path)) == EXPECTED


def test_probe_command_reads_a_dataset(tiny_study, tmp_path) -> None:
    path = _save(RENAMED, tmp_path / "qa.parquet")
    cfg = ProbeCommandConfig(facts=str(path), relations=["P17"])
    cfg.columns = ColumnMap(question="q", answers="golds", relation="rel", subject="subj")
    all_facts, selected = select_facts(cfg)
    assert len(all_facts) == 3 and [f.id for f in selected] == ["qa-0", "qa-1"]

    study = tiny_study("hf_probe", n_known=4, n_unknown=4, n_held=4)
    world = _renamed_dataset(read_facts(study["world"]), tmp_path / "world_ds")
    out = tmp_path / "probe"
    args = ["probe", f"model={study['model']}", f"facts={world}", f"out={out}", "limit=4"]
    fast = ["preset=cheap", "n_prompts=2", "num_samples=2", "max_new_tokens=2", "progress=false"]
    columns = ["columns.question=q", "columns.answers=golds", "columns.relation=rel"]
    assert main([*args, *fast, *columns]) == 0
    probed = read_facts(out / "categories.jsonl")
    assert [f.id for f in probed] == [f"world_ds-{i}" for i in range(4)]
    assert all(f.category is not None for f in probed)


def _categorised(n: int) -> list[dict[str, Any]]:
    """Two relations of ``n`` facts each, alternately HighlyKnown and Unknown, in a dataset's
    shape (question/answer/category under other names)."""
    return [
        {"query": f"{rel} of P{i}?", "answer": f"{rel}{i % 7}", "relation": rel,
         "subject": f"P{i}", "label": "HighlyKnown" if i % 2 else "Unknown"}
        for rel in ("born", "city")
        for i in range(n)
    ]  # fmt: skip


def test_split_command_reads_a_dataset(tmp_path, capsys) -> None:
    path = _save(_categorised(40), tmp_path / "probed")
    out = tmp_path / "split"
    args = ["split", f"categories={path}", f"out={out}", "n_held=10", "n_dev=4", "n_train=20"]
    assert main([*args, "held_disjoint_answers=false", "columns.category=label"]) == 0
    known = read_facts(out / "d_known.jsonl")
    assert known and all(f.id.startswith("probed-") and f.category == "HighlyKnown" for f in known)
    assert len(read_facts(out / "d_held.jsonl")) == 10
    # Without the category column every fact lacks a category: an error, nothing written.
    assert main([*args, "held_disjoint_answers=false", f"out={tmp_path / 'bad'}"]) == 1
    assert "has no category" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _renamed_dataset(facts: list[Fact], path: Path) -> Path:
    rows = [
        {"q": f.question, "golds": f.answers, "rel": f.relation, "subj": f.subject} for f in facts
    ]
    return _save(rows, path)


def test_eval_command_on_a_saved_dataset(tiny_study, tmp_path, capsys) -> None:
    study = tiny_study("hf_eval", n_known=8, n_unknown=4, n_held=6)
    held = read_facts(study["splits"] / "d_held.jsonl")
    saved = _renamed_dataset(held, tmp_path / "held_ds")
    out = tmp_path / "eval"
    common = [f"model={study['model']}", f"splits={study['splits']}", "max_new_tokens=3"]
    columns = ["columns.question=q", "columns.answers=golds", "columns.relation=rel"]
    args = ["eval", *common, f"facts=[d_known,{saved}]", *columns, "columns.subject=subj"]
    assert main([*args, f"out={out}", "progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["d_known", "held_ds"]
    assert results["results"]["held_ds"]["n"] == len(held)
    assert results["files"]["held_ds"] == str(saved)
    samples = [json.loads(s) for s in (out / "samples.jsonl").read_text().splitlines()]
    ids = [s["id"] for s in samples if s["split"] == "held_ds"]
    assert ids == [f"held_ds-{i}" for i in range(len(held))]

    bad_facts = [held[0], Fact(held[1].id, held[1].question, [], held[1].relation, "s")]
    bad = _renamed_dataset(bad_facts, tmp_path / "bad.parquet")  # row 1 has no answers
    args = ["eval", *common, f"facts=[d_known,{bad}]", *columns, "columns.subject=subj"]
    assert main([*args, f"out={tmp_path / 'bad_out'}"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: row 1: field 'answers': must be a non-empty list of strings" in err
    assert not (tmp_path / "bad_out").exists()


def test_train_command_on_a_saved_dataset(tiny_study, tmp_path) -> None:
    study = tiny_study("hf_train", n_known=8, n_unknown=8, n_held=6)
    unknown = read_facts(study["splits"] / "d_unknown.jsonl")
    saved = _renamed_dataset(unknown, tmp_path / "new_facts")
    mapping = "#question=q#answers=golds#relation=rel#subject=subj"

    def train(out: Path, train_sets: str, *extra: str) -> int:
        return main([
            "train", f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}",
            f"data.train={train_sets}", "data.eval=[d_held]", "optim.epochs=1",
            "optim.batch_size=8", "eval.max_new_tokens=3", "eval.at_start=false",
            "progress=false", *extra,
        ])  # fmt: skip

    assert train(tmp_path / "train", f"[d_known,{saved}{mapping}]") == 0
    assert (tmp_path / "train" / "model").is_dir()
    results = json.loads((tmp_path / "train" / "results.json").read_text())
    assert results["steps"] == 2  # 8 known + 8 dataset facts, batches of 8, one epoch
    assert train(tmp_path / "bad", f"[{saved}]") == 1  # the default columns are absent
    assert not (tmp_path / "bad").exists()
    columns = ["data.columns.question=q", "data.columns.answers=golds"]
    columns += ["data.columns.relation=rel", "data.columns.subject=subj"]
    assert train(tmp_path / "columns", f"[d_known,{saved}]", *columns) == 0  # the option form
    assert json.loads((tmp_path / "columns" / "results.json").read_text())["steps"] == 2
