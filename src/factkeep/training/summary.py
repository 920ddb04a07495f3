"""Forgetting and learning metrics over a run's accuracy curves (docs/method.md section 5).

- **forgetting** = relative decline of D_held accuracy from its peak during training,
  ``(max_t acc(t) − acc(final)) / max_t acc(t)`` (0 when the peak is 0);
- **absolute decline from the base model** = ``acc(start) − acc(final)``;
- the final accuracy of every evaluated set.

Input rows are those of ``metrics.jsonl`` (``{"step", "acc": {split: value}, ...}``), in order.

Example::

    summary = summarize_run(read_metrics("runs/sft/metrics.jsonl"))
    summary["forgetting"], summary["final"]["d_unknown"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["absolute_decline", "forgetting", "series", "summarize_run"]


def series(rows: Sequence[Mapping[str, Any]], split: str) -> list[float]:
    """Accuracy of ``split`` at each evaluation that measured it, in order."""
    return [float(r["acc"][split]) for r in rows if split in r.get("acc", {})]


def forgetting(values: Sequence[float]) -> float:
    """Relative decline of the last value from the maximum: ``(max − last) / max``.

    Raises:
        ValueError: for an empty series.
    """
    if not values:
        raise ValueError("forgetting of an empty accuracy series")
    peak = max(values)
    return (peak - values[-1]) / peak if peak > 0 else 0.0


def absolute_decline(values: Sequence[float]) -> float:
    """First value minus last value (the decline from the starting model)."""
    if not values:
        raise ValueError("decline of an empty accuracy series")
    return values[0] - values[-1]


def summarize_run(rows: Sequence[Mapping[str, Any]], held: str = "d_held") -> dict[str, Any]:
    """Final, peak and starting accuracy per split, and the forgetting of ``held``.

    Returns:
        ``{"final": {split: acc}, "peak": {...}, "start": {...}, "forgetting": float | None,
        "held_decline": float | None, "steps": int}``.
    """
    splits = sorted({name for r in rows for name in r.get("acc", {})})
    out: dict[str, Any] = {"final": {}, "peak": {}, "start": {}}
    for name in splits:
        values = series(rows, name)
        out["final"][name] = values[-1]
        out["peak"][name] = max(values)
        out["start"][name] = values[0]
    held_values = series(rows, held)
    out["forgetting"] = forgetting(held_values) if held_values else None
    out["held_decline"] = absolute_decline(held_values) if held_values else None
    out["steps"] = int(rows[-1]["step"]) if rows else 0
    return out
