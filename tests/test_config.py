"""Config precedence (defaults < YAML < overrides), type checks and unknown-key suggestions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from factkeep.cli import command_help, main, split_args
from factkeep.config import ConfigError, help_field, iter_options, nested, resolve_config


@dataclass
class Inner:
    lr: float = help_field(1e-3, "Learning rate.")
    steps: int = help_field(10, "Steps.")
    mode: Literal["a", "b"] = help_field("a", "Mode.")


@dataclass
class Outer:
    name: str = help_field("x", "Name.")
    tags: list[str] = help_field([], "Tags.")
    limit: int | None = help_field(None, "Optional limit.")
    flag: bool = help_field(False, "A flag.")
    inner: Inner = nested(Inner, "Inner section.")


def test_defaults_yaml_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from_yaml\ninner:\n  lr: 0.5\n  steps: 20\n")
    cfg = resolve_config(Outer, path, ["inner.steps=30", "flag=true", "limit=7"])
    assert cfg.name == "from_yaml"  # YAML beats default
    assert cfg.inner.lr == 0.5  # YAML
    assert cfg.inner.steps == 30  # override beats YAML
    assert cfg.flag is True and cfg.limit == 7
    assert cfg.inner.mode == "a"  # default kept


def test_scientific_notation_and_lists():
    cfg = resolve_config(Outer, None, ["inner.lr=3e-4", "tags=a,b", "limit=null"])
    assert cfg.inner.lr == pytest.approx(3e-4)
    assert cfg.tags == ["a", "b"]
    assert cfg.limit is None


def test_mutable_defaults_not_shared():
    a, b = Outer(), Outer()
    a.tags.append("z")
    assert b.tags == []


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown option 'inner.lrr'.*did you mean 'inner.lr'"):
        resolve_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'inner.steps'"):
        resolve_config(Outer, None, ["stepz=1"])


def test_unknown_key_in_yaml_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  lrate: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown option 'inner.lrate'"):
        resolve_config(Outer, path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("inner.steps=abc", "expected an integer"),
        ("inner.mode=c", "not one of"),
        ("flag=maybe", "expected true/false"),
        ("inner=3", "is a section"),
        ("name", "expected key=value"),
    ],
)
def test_bad_values_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(Outer, None, [override])


def test_iter_options_lists_every_leaf():
    keys = [o.key for o in iter_options(Outer)]
    assert keys == ["name", "tags", "limit", "flag", "inner.lr", "inner.steps", "inner.mode"]


def test_split_args_accepts_all_forms():
    path, overrides, want_help = split_args(
        ["--config", "c.yaml", "a=1", "--b", "2", "--c=3", "--help"]
    )
    assert path == "c.yaml" and overrides == ["a=1", "b=2", "c=3"] and want_help


def test_cli_help_documents_every_option(capsys):
    from factkeep.study.world import WorldCommandConfig

    text = command_help("world", WorldCommandConfig)
    for opt in iter_options(WorldCommandConfig):
        assert opt.key in text
    assert main(["world", "--help"]) == 0
    assert "pretrain.lr" in capsys.readouterr().out


def test_cli_unknown_option_exits_2(capsys, tmp_path):
    assert main(["world", f"out={tmp_path}", "pretrain.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.lrr" in err and "did you mean 'pretrain.lr'" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_command_group_needs_a_subcommand(capsys):
    assert main(["analyze"]) == 2
    assert "give one of: drift, keys, overlap" in capsys.readouterr().err
    assert main(["analyze", "keys", "--help"]) == 0
    assert "key_types" in capsys.readouterr().out


def test_cli_unknown_command(capsys):
    assert main(["wrold"]) == 2
    assert "did you mean 'world'" in capsys.readouterr().err


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from factkeep.rundir import atomic_write_bytes, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "héllo\n")
        atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    for name in ("a.txt", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temp files left


@dataclass
class _Section:
    size: int = help_field(3, "A size.")


@dataclass
class _TwoSections:
    plain: _Section = nested(_Section, "Class default.")
    small: _Section = nested(_Section, "Own default.", factory=lambda: _Section(size=1))


def test_a_nested_section_with_its_own_default_reports_it() -> None:
    defaults = {o.key: o.default for o in iter_options(_TwoSections)}
    assert defaults == {"plain.size": 3, "small.size": 1}
    assert _TwoSections().small.size == 1


def test_a_literal_spelled_like_a_yaml_bool_is_the_string() -> None:
    from factkeep.training.config import TrainCommandConfig

    cfg = resolve_config(TrainCommandConfig, None, ["model=m", "optim.mixed_precision=no"])
    assert cfg.optim.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        resolve_config(TrainCommandConfig, None, ["model=m", "optim.mixed_precision=yes"])
