"""The ``factkeep probe`` command end to end on a tiny random model: files, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import factkeep.probing.slick as slick
from factkeep.cli import main
from factkeep.data.facts import CATEGORIES, Fact, read_facts, write_facts
from factkeep.data.world import WorldSpec, build_world
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer

SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=30, n_bio=20, n_unseen=10
)
COUNTRIES = ["France", "Chile", "Japan", "Kenya", "Peru", "Italy", "Nepal", "Spain"]
CITIES = ["Lyon", "Arica", "Osaka", "Mombasa", "Cusco", "Turin", "Pokhara", "Seville"]
# Quick protocol and decoding for a random model (it never stops early).
FAST = ["n_prompts=2", "num_samples=2", "max_new_tokens=2", "progress=false"]


def _eq_facts(split: str) -> list[Fact]:
    """EntityQuestions-like facts: ids ``P17.{split}.i``, templated questions, P17 and P36."""
    facts = []
    offset = 0 if split == "test" else 100
    for i, (city, country) in enumerate(zip(CITIES, COUNTRIES, strict=True)):
        meta = {"split": split, "source": "entityquestions"}
        place = f"{city}{offset + i}"
        facts.append(
            Fact(f"P17.{split}.{i}", f"Which country is {place} located in?", [country],
                 "P17", place, None, dict(meta))
        )  # fmt: skip
        facts.append(
            Fact(f"P36.{split}.{i}", f"What is the capital of {country}{offset + i}?", [city],
                 "P36", f"{country}{offset + i}", None, dict(meta))
        )  # fmt: skip
    return facts


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    world = build_world(SMALL)
    eq_test, eq_dev = _eq_facts("test"), _eq_facts("dev")
    texts = world.vocabulary_texts() + [f"Q: {f.question}\nA: {f.answers[0]}" for f in eq_dev]
    texts += [f.question for f in eq_test]
    tok = build_word_tokenizer(texts)
    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = build_tiny_model(shape, tok, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    paths = {
        "model": root / "model",
        "world": root / "world.jsonl",
        "eq_test": root / "eq_test.jsonl",
        "eq_dev": root / "eq_dev.jsonl",
    }
    write_facts(paths["world"], world.facts())
    write_facts(paths["eq_test"], eq_test)
    write_facts(paths["eq_dev"], eq_dev)
    return paths


def _probe(files: dict[str, Path], out: Path, *extra: str, facts: str = "world") -> int:
    args = ["probe", f"model={files['model']}", f"facts={files[facts]}", f"out={out}", *FAST]
    return main([*args, *extra])


def test_probe_world_facts_end_to_end(files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _probe(files, out, "preset=cheap", "limit=20", "chunk_size=8") == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "categories.jsonl",
        "config.yaml",
        "env.json",
        "summary.json",
    ]
    facts = read_facts(out / "categories.jsonl")  # read back as Facts, categories set
    source = read_facts(files["world"])[:20]
    assert [f.id for f in facts] == [f.id for f in source]
    for fact, original in zip(facts, source, strict=True):
        assert fact.category in CATEGORIES
        probe = fact.meta["probe"]
        assert len(probe["greedy_answers"]) == 2 and len(probe["sampled_answers"]) == 4
        assert 0 <= probe["p_greedy"] <= 1 and 0 <= probe["p_sample"] <= 1
        assert fact.meta["population"] == original.meta["population"]  # meta kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_facts"] == 20
    assert sum(summary["totals"].values()) == 20
    assert summary["protocol"] == {
        "n_prompts": 2, "k_exemplars": 4, "num_samples": 2, "temperature": 0.5, "top_k": 40,
        "exemplar_sets": "per_fact",
    }  # fmt: skip
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["n_prompts"] == 2 and config["k_exemplars"] == 4  # resolved preset recorded
    printed = capsys.readouterr().out
    assert "HighlyKnown" in printed and "birth_city" in printed and "all" in printed


def test_probe_entityquestions_like_with_exemplar_file(files, tmp_path) -> None:
    out = tmp_path / "eq"
    args = [f"exemplars={files['eq_dev']}", "relations=P36", "k_exemplars=3"]
    assert _probe(files, out, *args, facts="eq_test") == 0
    facts = read_facts(out / "categories.jsonl")
    assert [f.id for f in facts] == [f"P36.test.{i}" for i in range(8)]
    assert all(f.category is not None for f in facts)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["counts"]) == ["P36"]


def test_same_seed_same_results_other_seed_other_samples(files, tmp_path) -> None:
    args = ("limit=12", "chunk_size=5")
    assert _probe(files, tmp_path / "a", *args) == 0
    assert _probe(files, tmp_path / "b", *args) == 0
    assert _probe(files, tmp_path / "c", *args, "seed=1") == 0
    a, b = ((tmp_path / n / "categories.jsonl").read_bytes() for n in "ab")
    assert a == b
    samples = lambda p: [f.meta["probe"]["sampled_answers"] for f in read_facts(p)]  # noqa: E731
    assert samples(tmp_path / "a" / "categories.jsonl") != samples(
        tmp_path / "c" / "categories.jsonl"
    )


def test_resume_after_interruption_is_byte_identical(files, tmp_path, monkeypatch) -> None:
    args = ("limit=17", "chunk_size=5")  # chunks of 5, 5, 5, 2
    assert _probe(files, tmp_path / "full", *args) == 0
    expected = (tmp_path / "full" / "categories.jsonl").read_bytes()

    real = slick.probe_chunk
    calls: list[int] = []

    def interrupting(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while probing chunk 1
        return real(*a, **k)

    out = tmp_path / "resumed"
    monkeypatch.setattr(slick, "probe_chunk", interrupting)
    assert _probe(files, out, *args) == 130
    assert not (out / "categories.jsonl").exists()
    partial = out / "categories.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 5
    with partial.open("a") as handle:  # a crash in the middle of writing the next line
        handle.write('{"chunk": 1, "fact": {"id": "p0')

    # A partial run with other settings is refused, and nothing is changed.
    assert _probe(files, out, *args, "seed=7") == 1
    assert partial.is_file()

    calls.clear()
    monkeypatch.setattr(slick, "probe_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _probe(files, out, *args) == 0
    assert len(calls) == 3  # chunk 0 was not probed again
    assert (out / "categories.jsonl").read_bytes() == expected
    assert not partial.exists() and not (out / "categories.partial.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_facts"] == 5 and summary["probed_in_this_run"] == 12


def test_resume_false_starts_over(files, tmp_path, monkeypatch) -> None:
    out = tmp_path / "again"
    monkeypatch.setattr(
        slick, "probe_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    assert _probe(files, out, "limit=4", "chunk_size=2") == 130
    monkeypatch.undo()
    assert _probe(files, out, "limit=4", "chunk_size=2", "seed=3", "resume=false") == 0
    assert len(read_facts(out / "categories.jsonl")) == 4


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["facts=/nonexistent/facts.jsonl"], 1, "file not found"),
        (["relations=birth_city,P999"], 1, "unknown relation(s) 'P999'"),
        (["k_exemplars=8", "facts={eq_test}", "relations=P17"], 1, "has 8 exemplar(s) in"),
        (["exemplars={eq_dev}", "facts={world}"], 1, "no exemplars in"),
        (["model=/nonexistent/model"], 1, "cannot load model"),
        (["preset=huge"], 2, "preset"),
        (["n_prompts=0"], 2, "n_prompts must be >= 1"),
        (["batch_size=0"], 2, "batch_size must be >= 1"),
        (["limit=-1"], 2, "limit must be >= 0"),
    ],
)
def test_input_errors_exit_nonzero_and_write_nothing(
    files, tmp_path, capsys, extra, code, message
) -> None:
    out = tmp_path / "never"
    extra = [e.format(**{k: str(v) for k, v in files.items()}) for e in extra]
    args = ["probe", f"model={files['model']}", f"facts={files['world']}", f"out={out}", *FAST]
    assert main([*args, *extra]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_model_and_facts_are_required(files, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["probe", f"facts={files['world']}", f"out={out}"]) == 2
    assert "model= is required" in capsys.readouterr().err
    assert main(["probe", f"model={files['model']}", f"out={out}"]) == 2
    assert "facts= is required" in capsys.readouterr().err
    assert not out.exists()


def test_bad_facts_file_names_line_and_field(files, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "question": "q?", "answers": [], "relation": "r", "subject": "s"}\n'
    )
    assert main(["probe", f"model={files['model']}", f"facts={bad}", f"out={tmp_path / 'o'}"]) == 1
    assert "bad.jsonl:1: field 'answers'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_probe_help_lists_options(capsys) -> None:
    assert main(["probe", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("preset", "n_prompts", "exemplars", "chunk_size", "gguf_file"):
        assert option in text


def test_stale_partial_file_without_state_is_not_continued(files, tmp_path) -> None:
    out = tmp_path / "stale"
    out.mkdir()
    (out / "categories.partial.jsonl").write_text('{"chunk": 0, "fact": {"id": "nope"}}\n')
    assert _probe(files, out, "limit=3", "chunk_size=2") == 0
    assert [f.id for f in read_facts(out / "categories.jsonl")] == [
        f.id for f in read_facts(files["world"])[:3]
    ]


def test_ground_truth_table_for_world_facts():
    from factkeep.data.facts import HIGHLY_KNOWN, UNKNOWN, Fact
    from factkeep.study.probe import format_category_table, ground_truth_counts

    def fact(i: int, population: str, category: str) -> Fact:
        return Fact(f"f{i}", "q?", ["a"], "r", "s", category, {"population": population})

    facts = [fact(0, "bio", HIGHLY_KNOWN), fact(1, "bio", UNKNOWN), fact(2, "unseen", UNKNOWN)]
    counts = ground_truth_counts(facts)
    assert counts == {
        "bio": {"HighlyKnown": 1, "MaybeKnown": 0, "WeaklyKnown": 0, "Unknown": 1},
        "unseen": {"HighlyKnown": 0, "MaybeKnown": 0, "WeaklyKnown": 0, "Unknown": 1},
    }
    assert "population" in format_category_table(counts, label="population")
    assert ground_truth_counts([Fact("x", "q?", ["a"], "r", "s")]) is None


def test_fast_preset_reuses_prefixes_with_the_same_results(files, tmp_path) -> None:
    runs = {}
    for reuse in ("true", "false"):
        out = tmp_path / f"fast-{reuse}"
        args = ["preset=fast", "limit=24", "chunk_size=12", f"reuse_prefix={reuse}"]
        assert _probe(files, out, *args) == 0
        runs[reuse] = (out / "categories.jsonl").read_text()
    assert runs["true"] == runs["false"]
    summary = json.loads((tmp_path / "fast-true" / "summary.json").read_text())
    assert summary["protocol"]["exemplar_sets"] == "per_relation"
