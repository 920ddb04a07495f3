"""The ``factkeep`` command line: argv -> typed config -> ``run(config)``.

Usage::

    factkeep COMMAND [--config FILE.yaml] [key=value | --key value | --key=value ...]
    factkeep COMMAND --help        # every option of COMMAND, with type, default and help
    factkeep train --config self_distill   # a shipped method config (factkeep/configs/*.yaml)

Options resolve as dataclass defaults < the YAML file < the command-line overrides. This is the only
module that reads ``sys.argv``; each command's implementation is imported only when it runs, so
``factkeep --help`` is fast.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from factkeep import __version__
from factkeep.config import ConfigError, iter_options, resolve_config
from factkeep.configs import resolve_config_path
from factkeep.errors import FactkeepError

log = logging.getLogger("factkeep")


@dataclass(frozen=True)
class Command:
    """A subcommand: what it does, and where its config class and runner live (``module:name``)."""

    summary: str
    config: str
    runner: str


COMMANDS: dict[str, Command] = {
    "world": Command(
        "Build the synthetic world, pretrain its tiny model (cached) and report its QA accuracy.",
        config="factkeep.study.world:WorldCommandConfig",
        runner="factkeep.study.world:run_world",
    ),
    "data entityquestions": Command(
        "Write EntityQuestions (local copy, or download=true) as a facts JSONL file.",
        config="factkeep.study.data:EntityQuestionsCommandConfig",
        runner="factkeep.study.data:run_entityquestions",
    ),
    "models": Command(
        "List the real models installable by name (make models), and where they are.",
        config="factkeep.study.models:ModelsCommandConfig",
        runner="factkeep.study.models:run_models",
    ),
    "probe": Command(
        "Estimate what a model knows per fact (SLiCK categories).",
        config="factkeep.study.probe:ProbeCommandConfig",
        runner="factkeep.study.probe:run_probe",
    ),
    "split": Command(
        "Build D_known / D_unknown / D_held (+ dev) from probed categories.",
        config="factkeep.study.split:SplitCommandConfig",
        runner="factkeep.study.split:run_split",
    ),
    "train": Command(
        "Fine-tune with SFT, self-distillation, freezing, controls and baselines.",
        config="factkeep.training.config:TrainCommandConfig",
        runner="factkeep.study.train:run_train",
    ),
    "eval": Command(
        "Accuracy per split, relation and category.",
        config="factkeep.study.eval:EvalCommandConfig",
        runner="factkeep.study.eval:run_eval",
    ),
    "report": Command(
        "HTML/Markdown report with plots from run folders.",
        config="factkeep.study.report:ReportCommandConfig",
        runner="factkeep.study.report:run_report",
    ),
    "analyze keys": Command(
        "Mechanism study: forgetting vs scale for name-like vs UUID keys of new facts.",
        config="factkeep.study.analyze_keys:KeysCommandConfig",
        runner="factkeep.study.analyze_keys:run_keys",
    ),
    "analyze drift": Command(
        "Mechanism study: hidden-state drift of held-out entities along training runs.",
        config="factkeep.study.analyze:DriftCommandConfig",
        runner="factkeep.study.analyze:run_drift",
    ),
    "analyze overlap": Command(
        "Mechanism study: regress forgetting on interference measures and confounds.",
        config="factkeep.study.analyze:OverlapCommandConfig",
        runner="factkeep.study.analyze:run_overlap",
    ),
    "audit": Command(
        "Before fine-tuning: the Unknown share of a training set and the known facts at risk.",
        config="factkeep.study.audit:AuditCommandConfig",
        runner="factkeep.study.audit:run_audit",
    ),
    "sweep": Command(
        "Run a grid of training runs (methods x options x seeds) with Ray.",
        config="factkeep.study.sweep:SweepCommandConfig",
        runner="factkeep.study.sweep:run_sweep",
    ),
    "demo": Command(
        "The whole study on the synthetic world with a tiny model, on a laptop CPU.",
        config="factkeep.study.demo:DemoConfig",
        runner="factkeep.study.demo:run_demo",
    ),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: factkeep COMMAND [--config FILE.yaml] [key=value ...]",
        "",
        "Fine-tune language models on new facts without forgetting what they knew.",
        "",
        "commands:",
    ]
    for name, cmd in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {cmd.summary}")
    lines += ["", "Run 'factkeep COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def command_help(name: str, config_cls: type | None) -> str:
    """The ``--help`` text of a command: every option with its type, default and help."""
    cmd = COMMANDS[name]
    lines = [
        f"usage: factkeep {name} [--config FILE.yaml] [key=value | --key value ...]",
        "",
        cmd.summary,
    ]
    if config_cls is not None:
        lines += ["", "options (defaults < --config file < key=value overrides):"]
        for opt in iter_options(config_cls):
            lines.append(f"  {opt.key} ({opt.type_name}, default: {opt.default!r})")
            if opt.help:
                lines += textwrap.wrap(
                    opt.help, width=96, initial_indent="      ", subsequent_indent="      "
                )
    return "\n".join(lines)


def split_args(args: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """Split a command's arguments into (config file, ``key=value`` overrides, help requested).

    Accepts ``key=value``, ``--key=value`` and ``--key value`` for every option.
    """
    config_path: str | None = None
    overrides: list[str] = []
    want_help = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            want_help = True
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                config_path = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                config_path = args[i + 1]
                i += 1
            else:
                raise ConfigError("--config needs a file name")
        elif arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(args):
                raise ConfigError(f"option '{arg}' needs a value")
            overrides.append(f"{arg[2:]}={args[i + 1]}")
            i += 1
        elif "=" in arg:
            overrides.append(arg[2:] if arg.startswith("--") else arg)
        else:
            raise ConfigError(f"unexpected argument '{arg}': options are key=value")
        i += 1
    return config_path, overrides, want_help


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``factkeep`` command. Returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"factkeep {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if rest and f"{name} {rest[0]}" in COMMANDS:  # two-word commands: ``analyze keys``
        name, rest = f"{name} {rest[0]}", rest[1:]
    group = sorted(c.split(" ", 1)[1] for c in COMMANDS if c.startswith(f"{name} "))
    if name not in COMMANDS and group:
        print(f"factkeep {name}: give one of: {', '.join(group)}\n\n{_usage()}", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"factkeep: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        config_path, overrides, want_help = split_args(rest)
        config_cls = _load(cmd.config)
        if want_help:
            print(command_help(name, config_cls))
            return 0
        if config_path:
            config_path = resolve_config_path(config_path)
        cfg = resolve_config(config_cls, config_path, overrides)
        runner: Callable[[Any], int | None] = _load(cmd.runner)
        return int(runner(cfg) or 0)
    except ConfigError as exc:
        print(f"factkeep {name}: configuration error: {exc}", file=sys.stderr)
        return 2
    except FactkeepError as exc:
        print(f"factkeep {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"factkeep {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
