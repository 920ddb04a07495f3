"""Interference measures of held-out known facts against a training set, and their confounds.

The localised-interference hypothesis (docs/method.md section 6) says that a known fact is forgotten
when the new facts trained on have keys that overlap with its own. For each held-out fact this
module measures that overlap against the training facts, under the reference (starting) model:

- ``max_key_cosine`` / ``mean_key_cosine``: cosine similarity of the fact's subject hidden state
  (probe layer, last token) with the training subjects' (max and mean over training facts);
- ``token_overlap``: the largest Jaccard overlap of the subject's token set with a training
  subject's; ``shared_tokens_count``: how many distinct training subjects share a token with it;
- ``same_relation_share``: the fraction of training facts with the fact's relation;
- ``shared_answer``: 1 when one of the fact's answer aliases is a training fact's answer;

and the confounds ``relation``, ``answer_frequency`` (facts, held and training, whose canonical
answer is this fact's), ``question_length`` (tokens) and ``base_confidence`` (the reference
model's teacher-forced probability of the canonical answer: exp of the mean token log-probability
over the answer tokens and EOS).

The labels come from a run's per-fact evaluations (``samples/step-N.jsonl``): a fact right at the
"before" evaluation is forgotten (1) when wrong at the "after" one, kept (0) otherwise.

Example::

    before, _ = split_correctness("runs/sft/samples/step-000000.jsonl", "d_held")
    after, _ = split_correctness("runs/sft/samples/step-000300.jsonl", "d_held")
    labels = forgotten_labels(before, after)            # id -> 1 (forgotten) or 0 (kept)
    rows = overlap_features(model, tok, [f for f in held if f.id in labels], train)
    X, names = design_matrix([r for r in rows if r["id"] in labels])
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from factkeep.analysis.representations import hidden_states, key_texts
from factkeep.config import ConfigError
from factkeep.data.facts import Fact, read_jsonl_objects
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.errors import DataError
from factkeep.probing.scoring import match_key
from factkeep.training.examples import QACollator, encode_fact

__all__ = [
    "FEATURE_NAMES",
    "REGRESSION_COLUMNS",
    "answer_confidence",
    "answer_log_probs",
    "design_matrix",
    "forgotten_labels",
    "key_cosines",
    "overlap_features",
    "pick_evaluation",
    "split_correctness",
    "subject_tokens",
    "token_overlaps",
]

log = logging.getLogger(__name__)

FEATURE_NAMES = (
    "max_key_cosine",
    "mean_key_cosine",
    "token_overlap",
    "shared_tokens_count",
    "same_relation_share",
    "shared_answer",
    "answer_frequency",
    "question_length",
    "base_confidence",
)
"""The numeric measures :func:`overlap_features` gives each held fact."""

REGRESSION_COLUMNS = tuple(n for n in FEATURE_NAMES if n != "shared_tokens_count")
"""The numeric columns of the forgetting regression (plus the relation one-hot)."""

_WORD_MARKERS = "Ġ▁ "  # prefixes BPE / SentencePiece tokenizers put on word-initial tokens


def subject_tokens(tokenizer: Any, subject: str) -> frozenset[str]:
    """The set of a subject's tokens, lowercased, word-start markers (``Ġ``, ``▁``) removed."""
    tokens = (
        t.lower().lstrip(_WORD_MARKERS).removeprefix("##") for t in tokenizer.tokenize(subject)
    )
    return frozenset(t for t in tokens if t)


def token_overlaps(
    tokenizer: Any, held: Sequence[str], train: Sequence[str]
) -> list[tuple[float, int]]:
    """For each held subject: the largest Jaccard overlap of token sets with a training subject,
    and the number of distinct training subjects sharing at least one token with it."""
    train_sets = [subject_tokens(tokenizer, s) for s in dict.fromkeys(train)]
    index: dict[str, list[int]] = {}
    for i, tokens in enumerate(train_sets):
        for token in tokens:
            index.setdefault(token, []).append(i)
    out = []
    for subject in held:
        tokens = subject_tokens(tokenizer, subject)
        sharing = {i for t in tokens for i in index.get(t, ())}
        best = max(
            (len(tokens & train_sets[i]) / len(tokens | train_sets[i]) for i in sharing),
            default=0.0,
        )
        out.append((float(best), len(sharing)))
    return out


def key_cosines(
    held: torch.Tensor, train: torch.Tensor, weights: torch.Tensor | None = None, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and (weighted) mean cosine similarity of each held row with the training rows.

    Args:
        held: ``(N, D)`` held-fact vectors.
        train: ``(M, D)`` training vectors.
        weights: ``(M,)`` weights of the mean (e.g. facts per distinct subject); None = equal.
        chunk: held rows per matrix product.

    Returns:
        ``(max, mean)``, each ``(N,)``.
    """
    h = torch.nn.functional.normalize(held.float(), dim=-1, eps=1e-12)  # (N, D)
    t = torch.nn.functional.normalize(train.float(), dim=-1, eps=1e-12)  # (M, D)
    w = torch.ones(len(t)) if weights is None else weights.float()  # (M,)
    w = w / w.sum()
    maxima, means = [], []
    for start in range(0, len(h), chunk):
        sims = h[start : start + chunk] @ t.T  # (n, M)
        maxima.append(sims.max(dim=1).values)
        means.append(sims @ w)
    return torch.cat(maxima), torch.cat(means)


@torch.no_grad()
def answer_log_probs(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    autocast: torch.dtype | None = None,
) -> list[float]:
    """The model's teacher-forced mean log-probability of each fact's canonical answer.

    Each fact is encoded as in training (``prompt + " answer" + EOS``, loss tokens = the answer
    and EOS); the result is the mean of ``log p(token)`` over those tokens. ``autocast`` (e.g.
    ``torch.bfloat16``) runs the forward passes under autocast; the log-softmax is float32.
    """
    model.eval()
    device = next(model.parameters()).device
    examples = [encode_fact(tokenizer, fact, template) for fact in facts]
    collate = QACollator.for_tokenizer(tokenizer)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    out = [0.0] * len(examples)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([examples[i] for i in rows])
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits  # (B, T, V)
        labels = batch["labels"][:, 1:].to(device)  # (B, T-1): token t is predicted at t-1
        scored = labels != -100  # (B, T-1)
        logp = torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)  # (K, V)
        token_logp = logp.gather(-1, labels[scored].unsqueeze(-1)).squeeze(-1)  # (K,)
        per_row = torch.zeros(len(rows), device=device).index_add_(
            0, scored.nonzero()[:, 0], token_logp
        )  # (B,)
        mean = (per_row / scored.sum(dim=1)).cpu()
        for r, i in enumerate(rows):
            out[i] = float(mean[r])
    return out


def answer_confidence(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
) -> list[float]:
    """The model's teacher-forced probability of each fact's canonical answer after its prompt:
    ``exp`` of :func:`answer_log_probs`."""
    return [math.exp(x) for x in answer_log_probs(model, tokenizer, facts, template, batch_size)]


def overlap_features(
    model: Any,
    tokenizer: Any,
    held: Sequence[Fact],
    train: Sequence[Fact],
    layer: int | None = None,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Every interference measure and confound of each held fact against ``train``.

    Args:
        model: the reference model (the run's starting model).
        tokenizer: its tokenizer.
        held: the held-out known facts.
        train: the training facts.
        layer: probe layer of the key vectors (None = the middle layer).
        template: the prompt template of ``base_confidence`` (the training runs').
        batch_size: texts per forward pass.

    Returns:
        One dict per held fact: ``id``, ``relation``, ``subject``, ``answer`` and every name of
        :data:`FEATURE_NAMES`.
    """
    if not held or not train:
        raise ValueError("overlap features need held facts and training facts")
    train_subjects = Counter(key_texts(train, "subject"))
    subjects = list(train_subjects)
    held_subjects = list(dict.fromkeys(key_texts(held, "subject")))
    h_states = hidden_states(model, tokenizer, held_subjects, layer, "last", batch_size)  # (N, D)
    t_states = hidden_states(model, tokenizer, subjects, layer, "last", batch_size)  # (M, D)
    weights = torch.tensor([train_subjects[s] for s in subjects], dtype=torch.float32)  # (M,)
    max_cos, mean_cos = key_cosines(h_states, t_states, weights)
    by_subject = {s: i for i, s in enumerate(held_subjects)}
    tokens = dict(
        zip(held_subjects, token_overlaps(tokenizer, held_subjects, subjects), strict=True)
    )
    relations = Counter(f.relation for f in train)
    train_answers = {match_key(a) for f in train for a in f.answers} - {""}
    canonical = Counter(match_key(f.answers[0]) for f in [*held, *train])
    confidence = answer_confidence(model, tokenizer, held, template, batch_size)
    rows = []
    for fact, conf in zip(held, confidence, strict=True):
        i = by_subject[fact.subject]
        overlap, sharing = tokens[fact.subject]
        keys = {match_key(a) for a in fact.answers} - {""}
        rows.append(
            {
                "id": fact.id,
                "relation": fact.relation,
                "subject": fact.subject,
                "answer": fact.answers[0],
                "max_key_cosine": float(max_cos[i]),
                "mean_key_cosine": float(mean_cos[i]),
                "token_overlap": overlap,
                "shared_tokens_count": sharing,
                "same_relation_share": relations[fact.relation] / len(train),
                "shared_answer": int(bool(keys & train_answers)),
                "answer_frequency": canonical[match_key(fact.answers[0])],
                "question_length": len(
                    tokenizer(fact.question, add_special_tokens=False)["input_ids"]
                ),
                "base_confidence": conf,
            }
        )
    return rows


def forgotten_labels(before: Mapping[str, bool], after: Mapping[str, bool]) -> dict[str, int]:
    """1 for facts right ``before`` and wrong ``after``, 0 for facts right at both.

    Facts wrong before (nothing to forget) or absent from either evaluation are left out.
    """
    return {i: int(not after[i]) for i, right in before.items() if right and i in after}


def design_matrix(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] = REGRESSION_COLUMNS,
    categorical: str | None = "relation",
) -> tuple[np.ndarray, list[str]]:
    """The regression's predictors: the numeric ``columns`` then a one-hot of ``categorical``.

    The most frequent category (ties: the first in sorted order) is the baseline and gets no
    column; the others are named ``relation=<value>``, sorted.

    Returns:
        ``(X, names)`` with ``X`` of shape ``(len(rows), len(names))``.
    """
    numeric = np.array([[float(row[c]) for c in columns] for row in rows], dtype=np.float64)
    numeric = numeric.reshape(len(rows), len(columns))
    names = list(columns)
    if categorical is None or not rows:
        return numeric, names
    counts = Counter(str(row[categorical]) for row in rows)
    baseline = min(counts, key=lambda c: (-counts[c], c))
    levels = sorted(c for c in counts if c != baseline)
    dummies = np.array(
        [[float(str(row[categorical]) == c) for c in levels] for row in rows], dtype=np.float64
    ).reshape(len(rows), len(levels))
    names += [f"{categorical}={c}" for c in levels]
    log.info("design matrix: %d rows, baseline %s=%s", len(rows), categorical, baseline)
    return np.hstack([numeric, dummies]), names


def split_correctness(path: str | Path, split: str) -> tuple[dict[str, bool], set[str]]:
    """``id -> correct`` of one split in a samples file, and every split the file holds.

    Raises:
        DataError: a line is not JSON, lacks ``split``/``id``/``correct`` or has a non-boolean
            ``correct`` (located by file and line).
    """
    correct: dict[str, bool] = {}
    splits: set[str] = set()
    for line, row in read_jsonl_objects(path):
        for key in ("split", "id", "correct"):
            if key not in row:
                raise DataError("missing required field", path, line, key)
        if not isinstance(row["correct"], bool):
            raise DataError(f"must be true or false, got {row['correct']!r}", path, line, "correct")
        splits.add(str(row["split"]))
        if row["split"] == split:
            correct[str(row["id"])] = row["correct"]
    return correct, splits


def pick_evaluation(option: str, name: str, evals: Mapping[int, Mapping[str, bool]]) -> int:
    """The global step of an evaluation chosen by ``option``.

    Args:
        option: ``start`` (first), ``final`` (last), ``peak`` (highest accuracy; ties: the
            earliest) or a step number.
        name: the option's name, for errors.
        evals: ``step -> (id -> correct)`` of one split, one entry per evaluation.

    Raises:
        ConfigError: an unknown option or a step without an evaluation.
    """
    steps = sorted(evals)
    if option == "start":
        return steps[0]
    if option == "final":
        return steps[-1]
    if option == "peak":
        acc = {s: sum(evals[s].values()) / max(1, len(evals[s])) for s in steps}
        return max(steps, key=lambda s: (acc[s], -s))  # ties: the earliest
    try:
        step = int(option)
    except ValueError:
        raise ConfigError(f"{name} must be peak, start, final or a step, got {option!r}") from None
    if step not in evals:
        raise ConfigError(f"{name}: no evaluation at step {step} (steps: {steps})")
    return step
