"""Hidden states of fact keys and their drift along a training run (docs/method.md section 6).

The representation of a held-out entity is the hidden state of its name (or of its whole question
prompt) at one layer of the model: the middle layer by default, at the last token or averaged over
the tokens. Drift is the cosine distance between that vector under a trained model and under a
reference model (by default the run's starting model), for every model a run saved: its
checkpoints and the model at the end of each phase, in training order.

Example::

    model, tok = load_model_and_tokenizer("runs/world/model")
    states = hidden_states(model, tok, ["Gouga Weawudeas"])          # (1, D), middle layer
    rows = drift_along_run("runs/exp/sft", read_facts("runs/split/d_held.jsonl"))
    rows[-1]["mean_distance"]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factkeep.config import ConfigError
from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_prompt
from factkeep.models.loading import load_model_and_tokenizer, resolve_device, resolve_dtype
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run_folder import PHASE_ORDER, RunFolder

__all__ = [
    "PHASE_ORDER",
    "SavedModel",
    "cosine_distance",
    "drift_along_run",
    "hidden_states",
    "key_texts",
    "load_run_model",
    "middle_layer",
    "read_run_config",
    "run_models",
]

log = logging.getLogger(__name__)


def middle_layer(model: Any) -> int:
    """The default probe layer: ``num_hidden_layers // 2`` (an index into ``hidden_states``)."""
    return int(model.config.num_hidden_layers) // 2


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@torch.no_grad()
def hidden_states(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layer: int | None = None,
    position: Literal["last", "mean"] = "last",
    batch_size: int = 64,
) -> torch.Tensor:
    """The hidden state of each text at one layer, in float32 on the CPU.

    Each text is encoded on its own (with the tokenizer's special tokens, as prompts are) and the
    batches are right-padded here, whatever the tokenizer's padding side: with causal attention a
    token never sees the padding after it, so a text's vector does not depend on the other texts
    of its batch. Texts are batched by length to keep padding short.

    Args:
        model: a Hugging Face causal LM (switched to eval mode).
        tokenizer: its tokenizer.
        texts: the texts to encode.
        layer: index into ``output_hidden_states`` (0 = embeddings, ``num_hidden_layers`` = the
            last block's output); None = :func:`middle_layer`.
        position: ``last``: the last token; ``mean``: the average over the text's tokens.
        batch_size: texts per forward pass.

    Returns:
        A ``(N, D)`` float32 tensor, rows in the order of ``texts``.

    Raises:
        ConfigError: the layer is out of range (a ValueError, as the other errors).
        ValueError: a text encodes to no token, or another argument is out of range.
    """
    n_layers = int(model.config.num_hidden_layers)
    layer = middle_layer(model) if layer is None else layer
    if not 0 <= layer <= n_layers:
        raise ConfigError(f"layer must be in [0, {n_layers}] for this model, got {layer}")
    if position not in ("last", "mean"):
        raise ValueError(f"position must be 'last' or 'mean', got {position!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [list(ids) for ids in tokenizer(list(texts))["input_ids"]] if texts else []
    for text, token_ids in zip(texts, encoded, strict=True):
        if not token_ids:
            raise ValueError(f"text {text!r} encodes to no token")
    model.eval()
    device = _device(model)
    base = getattr(model, "base_model", model)  # skips the LM head: no (B, T, V) logits
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = torch.empty((len(encoded), int(model.config.hidden_size)), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        result = base(
            input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
        )
        states = result.hidden_states[layer].float().cpu()  # (B, T, D)
        if position == "last":
            last = mask.sum(dim=1) - 1  # (B,)
            vectors = states[torch.arange(len(rows)), last]  # (B, D)
        else:
            weights = mask.unsqueeze(-1).float()  # (B, T, 1)
            vectors = (states * weights).sum(dim=1) / weights.sum(dim=1)  # (B, D)
        out[torch.tensor(rows)] = vectors
    return out


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 - cos(a_i, b_i)`` of two ``(N, D)`` tensors; returns ``(N,)``."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return 1.0 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def key_texts(
    facts: Iterable[Fact],
    kind: Literal["subject", "prompt"],
    template: str = DEFAULT_TEMPLATE,
) -> list[str]:
    """The text whose hidden state stands for each fact: its subject, or its question prompt."""
    if kind == "subject":
        return [fact.subject for fact in facts]
    if kind == "prompt":
        return [format_prompt(fact.question, template) for fact in facts]
    raise ValueError(f"kind must be 'subject' or 'prompt', got {kind!r}")


def _run_config(run: RunFolder) -> TrainCommandConfig:
    config = run.config
    if not config.model:
        raise ConfigError(f"{run.config_path}: not a training run config (no 'model' option)")
    return config


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` of a training run folder, as a nested dict (checked against the
    options of ``factkeep train``; :attr:`RunFolder.config` gives it typed).

    Raises:
        ConfigError: the folder holds no readable ``config.yaml``, one with an unknown option or
            a value of the wrong type, or one without a model.
    """
    run = RunFolder(run_dir)
    _run_config(run)
    return run.config_dict


@dataclass(frozen=True)
class SavedModel:
    """One model a run saved: its phase, global optimiser step and folder."""

    phase: str
    step: int
    model_dir: Path


def run_models(run_dir: str | Path) -> list[SavedModel]:
    """The models a training run saved, in training order.

    Checkpoints (``checkpoints/<phase>/checkpoint-N``, N counted within the phase) get the global
    step ``N + (steps of the earlier phases)``; the end of a finished phase
    (``phases/<phase>/done.json``) is its ``phases/<phase>/model``, or ``model/`` for the last
    phase. A checkpoint at the step of a phase end is listed once, as the phase end.

    Args:
        run_dir: a folder written by ``factkeep train``.

    Returns:
        The saved models, sorted by global step.

    Raises:
        DataError: a finished phase's ``done.json`` is unreadable.
    """
    run = RunFolder(run_dir)
    names = run.phases
    found: dict[int, SavedModel] = {}
    offset = 0
    for i, phase in enumerate(names):
        for ckpt in run.checkpoints(phase):
            if (ckpt.path / "config.json").is_file():
                step = offset + ckpt.step
                found.setdefault(step, SavedModel(phase, step, ckpt.path))
        if not run.phase_done(phase):
            continue
        phase_steps = run.phase_steps(phase)
        end = run.phase_model_dir(phase)
        if not end.is_dir() and i == len(names) - 1:
            end = run.model_dir
        if (end / "config.json").is_file():
            found[offset + phase_steps] = SavedModel(phase, offset + phase_steps, end)
        offset += phase_steps
    return [found[step] for step in sorted(found)]


def load_run_model(
    model_dir: str | Path, fallback_tokenizer: str | Path, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any]:
    """Load a saved model; its tokenizer, or ``fallback_tokenizer``'s when the folder has none."""
    folder = Path(model_dir)
    has_tok = any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json"))
    local = Path(fallback_tokenizer).exists() or has_tok
    tokenizer = AutoTokenizer.from_pretrained(
        folder if has_tok else fallback_tokenizer, local_files_only=local
    )
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, dtype=resolve_dtype(dtype), local_files_only=True
    )
    model.to(resolve_device(device))
    model.eval()
    return model, tokenizer


def drift_along_run(
    run_dir: str | Path,
    facts: Sequence[Fact],
    reference: str | None = None,
    layer: int | None = None,
    position: Literal["last", "mean"] = "last",
    kind: Literal["subject", "prompt"] = "subject",
    batch_size: int = 64,
    dtype: str = "auto",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Cosine distance of the facts' key hidden states to the reference model's, model by model.

    Each distinct key text counts once (facts sharing a subject are one entity). The first row is
    the starting model (phase ``start``, step 0), then every model of :func:`run_models`.

    Args:
        run_dir: a training run folder.
        facts: the facts whose keys are measured (e.g. D_held).
        reference: model folder or hub id to compare with; None = the run's starting model.
        layer: hidden-state index (None = the middle layer).
        position: ``last`` token or ``mean`` over tokens.
        kind: ``subject`` (the entity name) or ``prompt`` (the question prompt).
        batch_size: texts per forward pass.
        dtype: model dtype (``auto``, ``float32``, ...).
        device: ``auto``, ``cpu``, ``cuda``, ...

    Returns:
        One ``{"phase", "step", "model_dir", "mean_distance", "median_distance", "n"}`` per model.
    """
    run = RunFolder(run_dir)
    config = _run_config(run)
    start = config.model
    template = config.data.template or DEFAULT_TEMPLATE
    texts = list(dict.fromkeys(key_texts(facts, kind, template)))
    if not texts:
        raise ValueError("no facts to measure")
    ref_model, ref_tok = load_model_and_tokenizer(reference or start, dtype=dtype, device=device)
    ref = hidden_states(ref_model, ref_tok, texts, layer, position, batch_size)  # (N, D)
    del ref_model
    tok_dir = run.model_dir if run.model_dir.is_dir() else reference or start
    rows = []
    for saved in [SavedModel("start", 0, Path(start)), *run_models(run_dir)]:
        if saved.phase == "start" and (reference or start) == start:
            states = ref  # the reference is the starting model
        else:
            if saved.phase == "start":
                model, tok = load_model_and_tokenizer(start, dtype=dtype, device=device)
            else:
                model, tok = load_run_model(saved.model_dir, tok_dir, dtype, device)
            states = hidden_states(model, tok, texts, layer, position, batch_size)  # (N, D)
            del model
        dist = cosine_distance(states, ref)  # (N,)
        rows.append(
            {
                "phase": saved.phase,
                "step": saved.step,
                "model_dir": str(saved.model_dir),
                "mean_distance": float(dist.mean()),
                "median_distance": float(torch.quantile(dist, 0.5)),
                "n": len(texts),
            }
        )
        log.info(
            "%s step %d (%s): mean distance %.4f",
            saved.phase,
            saved.step,
            saved.model_dir,
            rows[-1]["mean_distance"],
        )
    return rows
