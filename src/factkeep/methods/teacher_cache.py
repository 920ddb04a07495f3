"""A precomputed top-k teacher: self-distillation without a teacher forward per training step.

The teacher of self-distillation is frozen, and a training example is the same token sequence in
every epoch, so its teacher distributions can be computed once. :class:`TeacherCache` runs the
teacher over every distinct training sequence once and keeps, per position, the top-k tokens of
the tempered distribution, their log-probabilities (float16) and the log of the remaining mass
(float32); training then uses :func:`~factkeep.methods.topk_kl.cached_topk_kl`, which needs only
the student's logits. Storage is ``k · 6 + 4`` bytes per position (k = 32: 196 bytes, against
``4 · V`` for full float32 logits).

This is an approximation of the exact KL (see :mod:`factkeep.methods.topk_kl`): the teacher's
tail beyond its top-k is one bucket, and log-probabilities are rounded to float16 (relative error
< 1e-3). Sequences are looked up by their token ids, so any batching, shuffling, padding or
replay mix finds its rows. The cache is tied to one teacher and one temperature.

Example::

    cache = TeacherCache.build(teacher, [ex["input_ids"] for ex in data], temperature=0.5, k=32)
    targets = cache.lookup(batch["input_ids"], batch["attention_mask"])  # shifted, (B, T-1, k)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from factkeep.methods.teacher import Teacher
from factkeep.methods.topk_kl import TAIL_FLOOR, TopKTargets, topk_targets

__all__ = ["TeacherCache"]

log = logging.getLogger(__name__)


class TeacherCache:
    """Top-k tempered teacher targets for a fixed set of token sequences (see module docstring).

    Attributes:
        temperature: the ``τ`` the log-probabilities are tempered with.
        k: tokens kept per position.
        ids: ``(P, k)`` int32 token ids over all cached positions.
        logp: ``(P, k)`` float16 log-probabilities.
        tail_logp: ``(P,)`` float32 log tail mass.
        index: token sequence -> first row of its ``len - 1`` positions in the flat tensors.
    """

    def __init__(
        self,
        temperature: float,
        k: int,
        sequences: Sequence[tuple[int, ...]],
        ids: torch.Tensor,
        logp: torch.Tensor,
        tail_logp: torch.Tensor,
    ) -> None:
        self.temperature = temperature
        self.k = k
        self.ids, self.logp, self.tail_logp = ids, logp, tail_logp
        self.index: dict[tuple[int, ...], int] = {}
        row = 0
        for seq in sequences:
            self.index[seq] = row
            row += len(seq) - 1
        if row != ids.shape[0]:
            raise ValueError(f"cache holds {ids.shape[0]} positions, its sequences need {row}")

    @property
    def sequences(self) -> list[tuple[int, ...]]:
        """The cached token sequences, in storage order."""
        return list(self.index)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored targets."""
        return sum(t.numel() * t.element_size() for t in (self.ids, self.logp, self.tail_logp))

    def covers(self, sequences: Iterable[Sequence[int]]) -> bool:
        """Whether every one of ``sequences`` is cached."""
        return all(tuple(s) in self.index for s in sequences)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        teacher: Teacher,
        sequences: Iterable[Sequence[int]],
        temperature: float,
        k: int,
        batch_size: int = 64,
        pad_id: int = 0,
        progress: bool = True,
    ) -> TeacherCache:
        """Run ``teacher`` once over the distinct ``sequences`` (each at least 2 tokens)."""
        unique = sorted({tuple(s) for s in sequences}, key=len)  # similar lengths share a batch
        if any(len(s) < 2 for s in unique):
            raise ValueError("every cached sequence needs at least 2 tokens")
        device = next(teacher.model.parameters()).device
        ids, logp, tail = [], [], []
        batches = range(0, len(unique), batch_size)
        for start in tqdm(batches, desc="teacher cache", unit="batch", disable=not progress):
            chunk = unique[start : start + batch_size]
            width = len(chunk[-1])
            input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = teacher.logits(input_ids.to(device), mask.to(device))[:, :-1]  # (b, T-1, V)
            targets = topk_targets(logits, temperature, k)
            for row, seq in enumerate(chunk):
                n = len(seq) - 1
                ids.append(targets.ids[row, :n].to("cpu", torch.int32))
                logp.append(targets.logp[row, :n].to("cpu", torch.float16))
                tail.append(targets.tail_logp[row, :n].to("cpu", torch.float32))
        cache = cls(temperature, k, unique, torch.cat(ids), torch.cat(logp), torch.cat(tail))
        log.info(
            "teacher cache: %d sequences, %d positions, top-%d, %.1f MB",
            len(unique),
            cache.ids.shape[0],
            k,
            cache.nbytes / 1e6,
        )
        return cache

    def lookup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TopKTargets:
        """Targets of a right-padded batch, aligned with shifted logits ``(B, T-1, ...)``.

        Padded positions get id 0, log-prob :data:`TAIL_FLOOR` and tail 0 (they are never in a
        KL mask). Raises ``KeyError`` naming the first sequence that is not cached.
        """
        batch, width = input_ids.shape
        k = self.ids.shape[1]
        ids = torch.zeros((batch, width - 1, k), dtype=torch.long)
        logp = torch.full((batch, width - 1, k), TAIL_FLOOR, dtype=torch.float32)
        tail = torch.zeros((batch, width - 1), dtype=torch.float32)
        lengths = attention_mask.sum(dim=1).tolist()
        rows = input_ids.tolist()
        for b in range(batch):
            seq = tuple(rows[b][: int(lengths[b])])
            start = self.index.get(seq)
            if start is None:
                raise KeyError(f"sequence not in the teacher cache: {list(seq)[:12]}...")
            n = len(seq) - 1
            ids[b, :n] = self.ids[start : start + n]
            logp[b, :n] = self.logp[start : start + n]
            tail[b, :n] = self.tail_logp[start : start + n]
        device = input_ids.device
        return TopKTargets(ids=ids.to(device), logp=logp.to(device), tail_logp=tail.to(device))

    def save(self, path: str | Path) -> None:
        """Write the cache as one safetensors file (atomically)."""
        seqs = self.sequences
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {
            "ids": self.ids,
            "logp": self.logp,
            "tail_logp": self.tail_logp,
            "tokens": flat,
            "lengths": lengths,
        }
        meta = {"temperature": json.dumps(self.temperature), "k": json.dumps(self.k)}
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        """Read a cache written by :meth:`save`."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            t = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
        seqs: list[tuple[int, ...]] = []
        start = 0
        tokens = t["tokens"].tolist()
        for n in t["lengths"].tolist():
            seqs.append(tuple(tokens[start : start + n]))
            start += n
        temperature, k = json.loads(meta["temperature"]), json.loads(meta["k"])
        return cls(temperature, k, seqs, t["ids"], t["logp"], t["tail_logp"])
