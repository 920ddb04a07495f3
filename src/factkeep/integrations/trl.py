"""factkeep's loss terms, teachers and freezing in a TRL ``SFTTrainer`` run.

:class:`FactkeepSFTTrainer` is ``trl.SFTTrainer`` with the loss of
:class:`~factkeep.training.trainer.FactTrainer`: both put
:class:`~factkeep.training.trainer.FactLossMixin` in front of their Trainer, so the loss math is
one implementation (:mod:`factkeep.methods.terms` over :mod:`factkeep.methods.functional`).
Everything else is TRL's: dataset preparation (tokenisation, EOS, truncation to ``max_length``),
the collator, ``SFTConfig``, PEFT, callbacks. On a prompt/completion dataset
(``{"prompt": ..., "completion": ...}``) TRL's completion-only loss sets the labels of the prompt
tokens to -100, so the ``nll`` term covers the completion (answer and EOS) only, as in
``factkeep train``, and ``KLToTeacher(positions=...)`` tells prompt from answer positions the same
way.

The helpers are thin wrappers over the functions ``factkeep train`` uses:

- :func:`prompt_completion_dataset`: facts -> a ``datasets.Dataset`` of prompt/completion rows
  in the ``Q: {question}\\nA:`` format;
- :func:`self_distillation_terms`: ``[NLLTerm, KLToTeacher]`` (λ, τ, positions, direction, ...);
- :func:`snapshot_teacher`: a frozen copy of the model as it is now (for the base model or a
  saved snapshot, ``Teacher.from_pretrained(folder)``); ``ema_decay=`` on the trainer makes the
  teacher follow the student;
- :func:`l2_anchor_term`, :func:`ewc_term` (with :func:`fact_batches`): the parameter-space
  controls;
- :func:`freeze`: a freezing spec (``"attention_only"``, ``{"train": ["mlp"], "layers": "-2:"}``)
  applied to a model; ``freeze=`` on the trainer does the same.

Example::

    model, tok = load_model_and_tokenizer("runs/demo/model", device="cpu")
    data = prompt_completion_dataset(read_facts("d_known.jsonl") + read_facts("d_unknown.jsonl"))
    trainer = FactkeepSFTTrainer(
        model, SFTConfig("out", bf16=False), train_dataset=data, processing_class=tok,
        loss_terms=self_distillation_terms(weight=1.0, temperature=0.5),
        teacher=snapshot_teacher(model),
    )
    trainer.train()

Needs ``pip install 'factkeep[trl]'``; importing this module without TRL raises
:class:`~factkeep.errors.FactkeepError`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader

from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_completion, format_prompt
from factkeep.errors import FactkeepError
from factkeep.methods.ewc import diagonal_fisher
from factkeep.methods.freezing import FreezeSpec, apply_freezing, parse_freeze_spec
from factkeep.methods.teacher import Teacher
from factkeep.methods.teacher_cache import TeacherCache
from factkeep.methods.terms import EWCTerm, KLToTeacher, L2ToAnchor, LossTerm, NLLTerm
from factkeep.training.callbacks import EMACallback
from factkeep.training.examples import QACollator, QADataset
from factkeep.training.trainer import FactLossMixin

try:
    import datasets
    from trl import SFTTrainer
except ImportError as exc:
    raise FactkeepError(
        f"factkeep's TRL integration needs TRL and datasets ({exc}): pip install 'factkeep[trl]'"
    ) from exc

__all__ = [
    "FactkeepSFTTrainer",
    "ewc_term",
    "fact_batches",
    "freeze",
    "l2_anchor_term",
    "prompt_completion_dataset",
    "self_distillation_terms",
    "snapshot_teacher",
]

log = logging.getLogger(__name__)

FreezeLike = str | Mapping[str, Any] | FreezeSpec
"""A freezing spec: a shorthand (``"attention_only"``), a mapping of its fields, or a spec."""


def _unwrap(model: Any) -> Any:
    """The bare model under DDP-style wrappers (``.module``)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def prompt_completion_dataset(
    facts: Iterable[Fact], template: str = DEFAULT_TEMPLATE
) -> datasets.Dataset:
    """TRL prompt/completion rows of ``facts``, as ``factkeep train`` formats them.

    Each fact becomes ``{"prompt": template.format(question=...), "completion": " " + answer}``
    (the first gold alias); TRL appends EOS to the completion.

    Raises:
        FactkeepError: no facts.
    """
    rows = [
        {
            "prompt": format_prompt(f.question, template),
            "completion": format_completion(f.answers[0]),
        }
        for f in facts
    ]
    if not rows:
        raise FactkeepError("no facts to train on")
    return datasets.Dataset.from_list(rows)


def self_distillation_terms(
    weight: float = 1.0,
    temperature: float = 0.5,
    *,
    positions: Literal["all", "answer", "prompt"] = "all",
    direction: Literal["forward", "reverse"] = "forward",
    top_k: int | None = None,
    chunk_size: int | None = None,
    min_teacher_prob: float = 0.0,
    exclude_target: bool = False,
    cached: bool = False,
    label_smoothing: float = 0.0,
) -> list[LossTerm]:
    """The self-distillation loss ``NLL + λ·τ²·KL(p_T^τ ‖ p_S^τ)`` as factkeep's terms.

    Args:
        weight: ``λ``.
        temperature: ``τ``.
        positions, direction, top_k, chunk_size, min_teacher_prob, exclude_target, cached: as
            in :class:`~factkeep.methods.terms.KLToTeacher` (``cached``: read a precomputed
            top-k teacher cache, which :class:`FactkeepSFTTrainer` builds).
        label_smoothing: of the NLL term.

    Returns:
        ``[NLLTerm, KLToTeacher]``.
    """
    return [
        NLLTerm(label_smoothing=label_smoothing),
        KLToTeacher(
            weight=weight,
            temperature=temperature,
            positions=positions,
            direction=direction,
            top_k=top_k,
            chunk_size=chunk_size,
            min_teacher_prob=min_teacher_prob,
            exclude_target=exclude_target,
            cached=cached,
        ),
    ]


def snapshot_teacher(model: nn.Module) -> Teacher:
    """A frozen copy of ``model`` as it is now (weights copied; later training does not move it).

    Call it before the model is sharded (FSDP, ZeRO-3); a forward that a trainer patched on the
    instance (TRL's fused LM head) is dropped from the copy, so it runs the model's own forward.
    """
    clone = copy.deepcopy(_unwrap(model))
    # A patched instance forward closes over the original model: the copy would run the student.
    clone.__dict__.pop("forward", None)
    return Teacher(clone)


def l2_anchor_term(
    anchor: Teacher | nn.Module,
    weight: float = 1.0,
    *,
    match: KLToTeacher | None = None,
    every: int = 1,
) -> L2ToAnchor:
    """``μ·‖θ − θ_anchor‖²`` with the anchor copied from ``anchor``'s current parameters.

    Args:
        anchor: a teacher or a model (e.g. the student before training).
        weight: ``μ`` (its initial value when ``match`` is set).
        match: a KL term whose gradient norm ``μ`` is re-matched to every ``every`` steps (the
            gradient-matched control; the trainer then needs a teacher).
        every: steps between two re-calibrations of ``μ``.
    """
    named = (
        anchor.named_parameters()
        if isinstance(anchor, Teacher)
        else _unwrap(anchor).named_parameters()
    )
    values = {n: p.detach().clone() for n, p in named}
    return L2ToAnchor(anchor=values, weight=weight, match=match, every=every)


def fact_batches(
    tokenizer: Any,
    facts: Sequence[Fact],
    batch_size: int = 8,
    template: str = DEFAULT_TEMPLATE,
) -> DataLoader:
    """Collated batches of ``facts`` (``input_ids``, ``attention_mask``, ``labels``), as
    ``factkeep train`` builds them, e.g. for :func:`ewc_term`."""
    if not facts:
        raise FactkeepError("no facts to build batches from")
    data = QADataset.from_facts(tokenizer, facts, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataLoader(data, batch_size=batch_size, collate_fn=QACollator(int(pad)))


def ewc_term(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    weight: float = 1.0,
    max_batches: int = 0,
) -> EWCTerm:
    """``μ·Σ F·(θ − θ_anchor)²``: diagonal Fisher of ``model`` on ``batches``, anchor = now.

    Only parameters that are trainable now get a Fisher entry, so apply :func:`freeze` first
    (as ``factkeep train`` does); the Fisher is normalised to mean 1 over those parameters.

    Args:
        model: the model at the anchor point.
        batches: collated batches of the facts to protect (see :func:`fact_batches`).
        weight: ``μ``.
        max_batches: stop after this many batches (0 = all).
    """
    fisher = diagonal_fisher(model, batches, max_batches)
    bare = _unwrap(model)
    anchor = {n: p.detach().clone() for n, p in bare.named_parameters() if n in fisher}
    return EWCTerm(anchor=anchor, fisher=fisher, weight=weight)


def freeze(model: nn.Module, spec: FreezeLike | None) -> tuple[int, int]:
    """Apply a freezing spec (see :mod:`factkeep.methods.freezing`) to ``model``.

    Returns:
        (trainable, total) parameter element counts.

    Raises:
        FreezeSpecError: the spec is invalid or selects nothing in the model.
    """
    return apply_freezing(_unwrap(model), parse_freeze_spec(spec))


_TEXT_COLUMNS = (("prompt", "completion"), ("text",), ("messages",), ("input_ids",))


def _as_dataset(data: Any, name: str) -> Any:
    """A ``datasets`` dataset with columns SFTTrainer can train on (lists of rows converted)."""
    if isinstance(data, list | tuple):
        if not data:
            raise FactkeepError(f"{name} is empty")
        if not all(isinstance(row, Mapping) for row in data):
            raise FactkeepError(f"{name} must be a datasets.Dataset or a list of row dicts")
        data = datasets.Dataset.from_list([dict(row) for row in data])
    if not isinstance(data, datasets.Dataset | datasets.IterableDataset):
        raise FactkeepError(
            f"{name} must be a datasets.Dataset (or a list of {{'prompt', 'completion'}} dicts), "
            f"got {type(data).__name__}"
        )
    if isinstance(data, datasets.Dataset) and len(data) == 0:
        raise FactkeepError(f"{name} is empty")
    columns = set(data.column_names or [])
    if not any(set(group) <= columns for group in _TEXT_COLUMNS):
        raise FactkeepError(
            f"{name} has columns {sorted(columns)}; expected 'prompt' and 'completion' "
            "(or TRL's 'text' / 'messages', or tokenized 'input_ids')"
        )
    return data


def _check_terms(
    terms: Sequence[LossTerm],
    teacher: Teacher | None,
    teacher_cache: TeacherCache | None,
    ema_decay: float | None,
) -> list[KLToTeacher]:
    """Refuse term / teacher combinations that cannot train; returns the cached KL terms."""
    if not terms:
        raise FactkeepError("FactkeepSFTTrainer needs at least one loss term, e.g. [NLLTerm()]")
    needing = [t.name for t in terms if t.needs_teacher]
    if needing and teacher is None:
        raise FactkeepError(
            f"loss terms {needing} need a teacher: pass teacher=snapshot_teacher(model) "
            "or teacher=Teacher.from_pretrained(folder)"
        )
    if ema_decay is not None:
        if teacher is None:
            raise FactkeepError("ema_decay needs a teacher to move (e.g. snapshot_teacher(model))")
        if not 0.0 <= ema_decay <= 1.0:
            raise FactkeepError(f"ema_decay must be in [0, 1], got {ema_decay}")
    cached = [t for t in terms if isinstance(t, KLToTeacher) and t.cached]
    if not cached:
        return cached
    if ema_decay is not None:
        raise FactkeepError(
            "a cached KL term needs a fixed teacher: an EMA teacher moves every step"
        )
    if any(t.top_k or t.min_teacher_prob > 0 or t.exclude_target for t in cached):
        raise FactkeepError(
            "a cached KL term replaces top_k by the cache's k and does not support "
            "min_teacher_prob or exclude_target"
        )
    temperatures = {t.temperature for t in cached}
    if teacher_cache is not None:
        temperatures.add(teacher_cache.temperature)
    if len(temperatures) > 1:
        raise FactkeepError(
            "cached KL terms and the teacher cache must share one temperature, "
            f"got {sorted(temperatures)}"
        )
    if teacher_cache is None and teacher is None:
        raise FactkeepError("a cached KL term needs teacher_cache=, or a teacher to build it from")
    return cached


def _check_args(args: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse SFTConfig options whose loss or batches factkeep's terms cannot honour."""
    if args is None:
        return
    if getattr(args, "packing", False):
        raise FactkeepError(
            "packing is not supported: factkeep's terms need one example per row (packing=False)"
        )
    if getattr(args, "padding_free", False):
        raise FactkeepError(
            "padding_free is not supported: factkeep's terms need an attention mask "
            "(padding_free=False)"
        )
    if getattr(args, "loss_type", "nll") != "nll":
        raise FactkeepError(
            f"loss_type={args.loss_type!r} is replaced by loss_terms: leave it at 'nll'"
        )
    if getattr(args, "label_smoothing_factor", 0.0) > 0:
        raise FactkeepError(
            "label_smoothing_factor is replaced by NLLTerm(label_smoothing=...): leave it at 0"
        )
    if kwargs.get("compute_loss_func") is not None:
        raise FactkeepError("compute_loss_func is replaced by loss_terms: do not pass it")


class FactkeepSFTTrainer(FactLossMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose loss is the weighted sum of factkeep's ``loss_terms``.

    Takes every argument of ``SFTTrainer`` (``train_dataset`` and everything after ``args``
    by keyword) plus the ones below. Packing, padding-free batches, ``loss_type='dft'``,
    ``label_smoothing_factor`` and ``compute_loss_func`` are refused: the terms replace them.

    Args:
        model: the student (a model or a model folder, as for ``SFTTrainer``).
        args: an ``SFTConfig`` (or ``TrainingArguments``).
        train_dataset: a ``datasets.Dataset`` or a list of ``{"prompt", "completion"}`` dicts
            (see :func:`prompt_completion_dataset`).
        loss_terms: the terms whose weighted sum is the loss (e.g.
            :func:`self_distillation_terms`).
        teacher: the frozen teacher of the terms that need one.
        teacher_cache: precomputed top-k teacher targets for cached KL terms; if not given and
            a cached term is, the cache is built from ``teacher`` over the prepared training
            sequences (``cache_top_k`` tokens per position), and the teacher is then released
            unless another term needs it.
        cache_top_k: ``k`` of a cache built here.
        cache_batch_size: sequences per teacher forward when building it.
        ema_decay: if set, the teacher follows the student after every optimiser step,
            ``θ_T <- d·θ_T + (1-d)·θ_S`` (an EMA teacher), and is saved in each checkpoint.
        freeze: a freezing spec applied to the student before training (see :func:`freeze`).

    Raises:
        FactkeepError: unsupported options, a missing teacher, or unusable data.
    """

    def __init__(
        self,
        model: Any,
        args: Any = None,
        *,
        train_dataset: Any,
        loss_terms: Sequence[LossTerm],
        teacher: Teacher | None = None,
        teacher_cache: TeacherCache | None = None,
        cache_top_k: int = 32,
        cache_batch_size: int = 16,
        ema_decay: float | None = None,
        freeze: FreezeLike | None = None,
        callbacks: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        cached = _check_terms(loss_terms, teacher, teacher_cache, ema_decay)
        _check_args(args, kwargs)
        train_dataset = _as_dataset(train_dataset, "train_dataset")
        if cached and teacher_cache is None and not isinstance(train_dataset, datasets.Dataset):
            raise FactkeepError("building a teacher cache needs a map-style datasets.Dataset")
        if cached and kwargs.get("eval_dataset") is not None:
            raise FactkeepError(
                "a cached KL term only covers the training sequences: evaluate without it"
            )
        if freeze is not None and kwargs.get("peft_config") is not None:
            raise FactkeepError("peft_config trains adapters only: do not pass freeze as well")
        spec = parse_freeze_spec(freeze) if freeze is not None else None
        if cached and teacher_cache is None and cache_top_k < 1:
            raise FactkeepError(f"cache_top_k must be >= 1, got {cache_top_k}")
        callbacks = list(callbacks or [])
        if ema_decay is not None:
            assert teacher is not None
            callbacks.append(EMACallback(teacher, ema_decay))
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            callbacks=callbacks,
            loss_terms=loss_terms,
            teacher=teacher,
            teacher_cache=teacher_cache,
            teacher_needs_full_parameters=ema_decay is not None
            or any(isinstance(t, L2ToAnchor) for t in loss_terms),
            **kwargs,
        )
        if spec is not None:
            apply_freezing(_unwrap(self.model), spec)
        if cached and self.teacher_cache is None:
            self.build_teacher_cache(cached[0].temperature, cache_top_k, cache_batch_size)
            if not any(t.needs_teacher for t in self.loss_terms):
                self.teacher = None  # training never runs it: free its memory

    def build_teacher_cache(
        self, temperature: float, k: int = 32, batch_size: int = 16
    ) -> TeacherCache:
        """Run the teacher once over the prepared training sequences and keep its top-k targets
        (sets and returns ``self.teacher_cache``)."""
        if self.teacher is None:
            raise FactkeepError("building a teacher cache needs a teacher")
        data = self.train_dataset
        if not isinstance(data, datasets.Dataset) or "input_ids" not in data.column_names:
            raise FactkeepError("building a teacher cache needs a tokenized datasets.Dataset")
        pad = getattr(self.data_collator, "pad_token_id", None)
        if pad is None:
            pad = self.processing_class.pad_token_id  # type: ignore[union-attr]
        self.place_teacher()
        self.teacher_cache = TeacherCache.build(
            self.teacher,
            list(data["input_ids"]),
            temperature=temperature,
            k=k,
            batch_size=batch_size,
            pad_id=int(pad),
            progress=not self.args.disable_tqdm,
        )
        return self.teacher_cache
