"""Supervised QA examples: facts -> token ids with the loss on the answer tokens only.

Each fact becomes ``prompt + completion + EOS`` in the shared format of
:mod:`factkeep.data.prompts` (default ``Q: {question}\\nA: {answer}<eos>``). The prompt is tokenized
with the tokenizer's special tokens (BOS where the model has one, exactly as generation does), the
completion without; labels are ``-100`` on the prompt, so the cross-entropy covers the answer and
EOS. The first gold alias is the training target.

Batches are right-padded by :class:`QACollator`; padded positions have ``attention_mask = 0`` and
label ``-100``.

Example::

    data = QADataset.from_facts(tokenizer, facts)
    batch = QACollator(tokenizer.pad_token_id)([data[0], data[1]])
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from factkeep.config import ConfigError
from factkeep.data.facts import Fact, read_jsonl_objects
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_completion, format_prompt
from factkeep.errors import DataError
from factkeep.methods.functional import IGNORE_INDEX

__all__ = ["QACollator", "QADataset", "ReplayMix", "at_risk_pool", "encode_fact"]


def encode_fact(tokenizer: Any, fact: Fact, template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """Token ids and labels of one fact (labels ``-100`` on the prompt).

    Returns:
        ``{"input_ids": [...], "labels": [...]}`` as lists of ints.
    """
    prompt = tokenizer(format_prompt(fact.question, template))["input_ids"]
    answer = tokenizer(format_completion(fact.answers[0]), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to end answers with")
    answer = [*answer, tokenizer.eos_token_id]
    return {"input_ids": [*prompt, *answer], "labels": [IGNORE_INDEX] * len(prompt) + answer}


class QADataset(Dataset):
    """Encoded facts, in order; ``ids[i]`` is the fact id of example ``i``."""

    def __init__(self, examples: Sequence[dict[str, Any]], ids: Sequence[str]) -> None:
        self.examples = list(examples)
        self.ids = list(ids)

    @classmethod
    def from_facts(
        cls, tokenizer: Any, facts: Sequence[Fact], template: str = DEFAULT_TEMPLATE
    ) -> QADataset:
        """Encode ``facts`` (see :func:`encode_fact`)."""
        return cls([encode_fact(tokenizer, f, template) for f in facts], [f.id for f in facts])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


class ReplayMix(Dataset):
    """The main examples plus replayed ones, so that ``fraction`` of all examples are replays.

    Index ``i < len(main)`` is ``main[i]``; the extra indices map to a seeded permutation of the
    replay pool (cycled if the pool is small). The Trainer's shuffling then spreads replays over the
    batches: on average ``fraction`` of every batch is replay. The mapping is fixed for the run,
    so resuming reproduces it.
    """

    def __init__(self, main: QADataset, replay: QADataset, fraction: float, seed: int) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"replay fraction must be in [0, 1), got {fraction}")
        if fraction > 0 and len(replay) == 0:
            raise ValueError("replay is on but the replay pool is empty")
        self.main = main
        self.replay = replay
        n_extra = round(len(main) * fraction / (1.0 - fraction)) if fraction > 0 else 0
        order = list(range(len(replay)))
        random.Random(f"{seed}-replay").shuffle(order)
        self.extra = [order[i % len(order)] for i in range(n_extra)] if order else []

    def __len__(self) -> int:
        return len(self.main) + len(self.extra)

    @property
    def replayed_ids(self) -> list[str]:
        """The ids of the pool facts that are replayed (the pool's order)."""
        used = set(self.extra)
        return [fact_id for j, fact_id in enumerate(self.replay.ids) if j in used]

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.main):
            return self.main[i]
        return self.replay[self.extra[i - len(self.main)]]


def at_risk_pool(pool: Sequence[Fact], audit_dir: str | Path, share: float) -> list[Fact]:
    """The ``share`` of ``pool`` that an audit's forecast ranks most at risk (forecast-guided
    replay), most at risk first.

    ``audit_dir`` is a ``factkeep audit`` output folder whose ``known=`` facts include the pool:
    its ``exposed.jsonl`` ranks them (``rank`` 1 = most at risk).

    Raises:
        ConfigError: the folder has no ``exposed.jsonl``, or a pool fact has no rank in it.
        DataError: a line of ``exposed.jsonl`` lacks an ``id`` or an integer ``rank``.
    """
    path = Path(audit_dir) / "exposed.jsonl"
    if not path.is_file():
        raise ConfigError(f"replay.forecast: {path} not found (run factkeep audit first)")
    rank: dict[str, int] = {}
    for line, row in read_jsonl_objects(path):
        for key in ("id", "rank"):
            if key not in row:
                raise DataError("missing required field", path, line, key)
        if isinstance(row["rank"], bool) or not isinstance(row["rank"], int):
            raise DataError(f"must be an integer, got {row['rank']!r}", path, line, "rank")
        rank[str(row["id"])] = row["rank"]
    missing = [f.id for f in pool if f.id not in rank]
    if missing:
        raise ConfigError(
            f"replay.forecast: {len(missing)} of the {len(pool)} replay-pool facts have no "
            f"forecast in {path} (first: {missing[0]!r}); run the audit with known= the pool"
        )
    ordered = sorted(pool, key=lambda f: rank[f.id])
    return ordered[: max(1, round(share * len(ordered)))]


@dataclass
class QACollator:
    """Right-pads a list of examples into ``input_ids``, ``attention_mask`` and ``labels``."""

    pad_token_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> QACollator:
        """A collator padding with ``tokenizer``'s pad token (id 0 if it has none)."""
        pad = tokenizer.pad_token_id
        return cls(int(pad if pad is not None else 0))

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Stack ``examples`` (dicts with ``input_ids`` and ``labels``) into padded tensors."""
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
