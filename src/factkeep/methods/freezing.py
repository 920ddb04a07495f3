"""Choose which parameters of a causal LM train: named groups, layer ranges and regexes.

Every parameter is put in one group by its module name: ``attention``, ``mlp``, ``embeddings``,
``norms``, ``lm_head`` or ``other`` (see :func:`parameter_groups`). Llama, Qwen2, Gemma, Gemma3,
GPT-2 and GPT-NeoX naming is recognised; other models go through the same suffix heuristics, and
whatever fits no group lands in ``other``. A :class:`FreezeSpec` says what trains:

1. If ``train`` names groups, or no ``freeze`` group is named but ``layers`` or ``train_regex``
   is given, only the selection trains; otherwise everything trains.
2. ``train`` groups are trainable; ``layers`` alone (no groups) selects whole blocks.
3. ``freeze`` groups are frozen.
4. Names matching a ``train_regex`` become trainable.
5. Names matching a ``freeze_regex`` are frozen (applied last).

``layers`` restricts the ``train``/``freeze`` groups to those transformer blocks (parameters outside
the blocks, e.g. embeddings, are then not selected); regexes are not restricted. Layer syntax:
comma-separated items, each ``N`` (negative counts from the end: ``-1`` is the last block),
``A-B`` (inclusive, non-negative) or a Python slice ``A:B`` (end exclusive, either bound optional,
negatives allowed): ``"0-1"``, ``"2,3"``, ``"-1"``, ``"-2:"`` (last two), ``":2"`` (first two).

Tied embeddings: when the LM head shares the input embedding tensor, ``named_parameters`` lists it
once (under the embedding name) and :func:`parameter_groups` puts it in ``embeddings``; a spec
naming ``lm_head`` still selects it, because training either name trains the shared tensor. A
``freeze`` selection wins over ``train``; if the two names would be decided differently a warning
is logged.

Example::

    spec = parse_freeze_spec({"train": ["attention"], "layers": "-2:"})
    trainable, total = apply_freezing(model, spec)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from factkeep.errors import FactkeepError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

GROUPS = ("attention", "mlp", "embeddings", "norms", "lm_head")
OTHER = "other"
_ALIASES = {"attn": "attention", "ffn": "mlp", "embedding": "embeddings", "norm": "norms"}
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_ATTENTION = re.compile(r"(self_|cross_)?(attn|attention)")
_MLP = {"mlp", "feed_forward", "ffn", "block_sparse_moe"}


class FreezeSpecError(FactkeepError, ValueError):
    """A freezing spec is invalid or selects nothing in the model; the message says which part."""


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass(frozen=True)
class FreezeSpec:
    """Which parameters train. An empty spec trains everything.

    Attributes:
        train: groups to train (all others frozen), e.g. ``("attention",)``.
        freeze: groups to freeze (all others train), e.g. ``("mlp",)``.
        layers: restrict the named groups to these transformer blocks, e.g. ``"-2:"``.
        train_regex: parameter names matching any of these (``re.search``) are trainable.
        freeze_regex: parameter names matching any of these are frozen (applied last).
    """

    train: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    layers: str | None = None
    train_regex: tuple[str, ...] = ()
    freeze_regex: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        valid = (*GROUPS, OTHER)
        for attr in ("train", "freeze"):
            groups = tuple(_ALIASES.get(g, g) for g in _names(getattr(self, attr)))
            for group in groups:
                if group not in valid:
                    raise FreezeSpecError(
                        f"unknown parameter group {group!r} in '{attr}'; valid: {', '.join(valid)}"
                    )
            object.__setattr__(self, attr, groups)
        both = sorted(set(self.train) & set(self.freeze))
        if both:
            raise FreezeSpecError(f"group(s) {', '.join(both)} both trained and frozen")
        for attr in ("train_regex", "freeze_regex"):
            patterns = _names(getattr(self, attr))
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise FreezeSpecError(f"invalid {attr} {pattern!r}: {err}") from None
            object.__setattr__(self, attr, patterns)
        if self.layers is not None:
            object.__setattr__(self, "layers", str(self.layers).strip())


def layer_index(name: str) -> int | None:
    """The transformer block a parameter belongs to (``model.layers.3.mlp...`` -> 3), else None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def _group_of(name: str) -> str:
    modules = name.split(".")[:-1]
    last = modules[-1] if modules else name
    if last in ("lm_head", "embed_out"):
        return "lm_head"
    if last.startswith("embed") or last in ("wte", "wpe", "word_embeddings"):
        return "embeddings"
    if "norm" in last.lower() or re.fullmatch(r"ln(_\w+)?", last):
        return "norms"
    if any(_ATTENTION.fullmatch(m) for m in modules):
        return "attention"
    if any(m in _MLP for m in modules):
        return "mlp"
    return OTHER


def _tensor_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Canonical parameter name -> every name of that tensor (canonical first; ties share one)."""
    by_tensor: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return {names[0]: names for names in by_tensor.values()}


def parameter_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Group name -> names of its parameters; every parameter tensor appears exactly once.

    A tied LM head is not listed separately (its tensor is the embedding's, in ``embeddings``).
    The ``other`` key is present only if some parameter fits no group.
    """
    groups: dict[str, list[str]] = {group: [] for group in GROUPS}
    for name in _tensor_names(model):
        groups.setdefault(_group_of(name), []).append(name)
    return groups


def parse_layers(text: str, num_layers: int) -> set[int]:
    """The block indices named by ``text`` (syntax in the module docstring).

    Raises:
        FreezeSpecError: if ``text`` is malformed, out of range for ``num_layers``, or empty.
    """
    chosen: set[int] = set()
    for item in (part.strip() for part in text.split(",")):
        bad = f"layer {item!r} out of range for a model with {num_layers} layers"
        if re.fullmatch(r"-?\d+", item):
            index = int(item)
            if not -num_layers <= index < num_layers:
                raise FreezeSpecError(bad)
            chosen.add(index % num_layers)
        elif match := re.fullmatch(r"(\d+)-(\d+)", item):
            start, end = int(match.group(1)), int(match.group(2))
            if start > end or end >= num_layers:
                raise FreezeSpecError(bad)
            chosen.update(range(start, end + 1))
        elif match := re.fullmatch(r"(-?\d+)?:(-?\d+)?", item):
            bounds = [int(b) if b else None for b in match.groups()]
            if any(b is not None and not -num_layers <= b <= num_layers for b in bounds):
                raise FreezeSpecError(bad)
            chosen.update(range(num_layers)[slice(*bounds)])
        else:
            raise FreezeSpecError(
                f"malformed layer spec {text!r}: use e.g. '0-1', '2,3', '-1', '-2:' or ':2'"
            )
    if not chosen:
        raise FreezeSpecError(f"layer spec {text!r} selects no layer")
    return chosen


def select_trainable(model: torch.nn.Module, spec: FreezeSpec) -> list[str]:
    """Names (as in ``model.named_parameters()``) of the parameters ``spec`` leaves trainable.

    Raises:
        FreezeSpecError: if a group, layer spec or regex matches no parameter, or nothing trains.
    """
    tensors = _tensor_names(model)
    all_names = [name for names in tensors.values() for name in names]
    chosen: set[int] | None = None
    if spec.layers is not None:
        indices = {i for i in map(layer_index, all_names) if i is not None}
        if not indices:
            raise FreezeSpecError(f"layers={spec.layers!r}: the model has no numbered layers")
        chosen = parse_layers(spec.layers, max(indices) + 1)

    def in_layers(name: str) -> bool:
        return chosen is None or layer_index(name) in chosen

    where = f" in layers {spec.layers!r}" if spec.layers is not None else ""
    for group in (*spec.train, *spec.freeze):
        if not any(_group_of(n) == group and in_layers(n) for n in all_names):
            raise FreezeSpecError(f"group {group!r} matched no parameter{where}")
    for pattern in (*spec.train_regex, *spec.freeze_regex):
        if not any(re.search(pattern, n) for n in all_names):
            raise FreezeSpecError(f"regex {pattern!r} matched no parameter name")
    only_selected = bool(spec.train) or (
        not spec.freeze and (spec.layers is not None or bool(spec.train_regex))
    )

    def decide(names: list[str]) -> bool:
        def any_name(test: Callable[[str], bool]) -> bool:
            return any(test(n) for n in names)

        trainable = not only_selected
        if spec.train:
            trainable = any_name(lambda n: _group_of(n) in spec.train and in_layers(n))
        elif only_selected and spec.layers is not None:
            trainable = any_name(lambda n: layer_index(n) is not None and in_layers(n))
        if any_name(lambda n: _group_of(n) in spec.freeze and in_layers(n)):
            trainable = False
        if any_name(lambda n: any(re.search(p, n) for p in spec.train_regex)):
            trainable = True
        if any_name(lambda n: any(re.search(p, n) for p in spec.freeze_regex)):
            trainable = False
        return trainable

    selected = []
    for name, names in tensors.items():
        trainable = decide(names)
        if len({decide([n]) for n in names}) > 1:
            logger.warning(
                "%s are one tied tensor but the spec trains one name and freezes the other; "
                "the shared tensor is %s",
                " and ".join(names),
                "trainable" if trainable else "frozen",
            )
        if trainable:
            selected.append(name)
    if not selected:
        raise FreezeSpecError(f"freezing spec {spec} leaves no trainable parameter")
    return selected


def apply_freezing(model: torch.nn.Module, spec: FreezeSpec) -> tuple[int, int]:
    """Set ``requires_grad`` of every parameter of ``model`` from ``spec``.

    Returns:
        (trainable, total) parameter element counts (a tied tensor is counted once).
    """
    trainable_names = set(select_trainable(model, spec))
    trainable = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable_names)
        total += param.numel()
        trainable += param.numel() if name in trainable_names else 0
    logger.info(
        "trainable %s / %s parameters (%.1f%%)",
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )
    return trainable, total


def parse_freeze_spec(value: str | Mapping[str, Any] | FreezeSpec | None) -> FreezeSpec:
    """A :class:`FreezeSpec` from a shorthand string, a mapping of its fields, or a spec.

    Shorthands: ``""``/``"none"``/``"full"`` (train everything), ``"<group>_only"`` (e.g.
    ``"attention_only"``, ``"mlp_only"``, ``"ffn_only"``) and ``"freeze_<group>"`` (e.g.
    ``"freeze_mlp"``). Mapping values may be lists or single strings.
    """
    if isinstance(value, FreezeSpec):
        return value
    if value is None:
        return FreezeSpec()
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "full", "all"):
            return FreezeSpec()
        if text.endswith("_only"):
            return FreezeSpec(train=(text.removesuffix("_only"),))
        if text.startswith("freeze_"):
            return FreezeSpec(freeze=(text.removeprefix("freeze_"),))
        raise FreezeSpecError(
            f"unknown freezing shorthand {value!r}: use '<group>_only' or 'freeze_<group>' "
            f"with a group in {', '.join(GROUPS)}, or 'none'"
        )
    known = {f.name for f in fields(FreezeSpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise FreezeSpecError(f"unknown freezing key(s) {unknown}; valid: {sorted(known)}")
    kwargs: dict[str, Any] = {k: v if k == "layers" else _names(v) for k, v in value.items()}
    return FreezeSpec(**kwargs)
