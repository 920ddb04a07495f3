"""Report figures as PNG bytes: learning curves, the forgetting/learning frontier, fact transitions.

Each function takes :class:`PlotGroup` s (one per table row: a method, or a method variant, with
the values of each of its runs) and returns the PNG of a :class:`matplotlib.figure.Figure` drawn
with the Agg canvas; no pyplot state is touched. A method keeps its colour in every figure
(:func:`method_color`).

Example::

    group = PlotGroup("sft", "sft", forgetting=[0.41, 0.42], unknown=[0.97, 0.96])
    png = frontier_png([group])
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import Bbox

__all__ = [
    "METHOD_COLORS",
    "PlotGroup",
    "figure_png",
    "frontier_png",
    "learning_curves_png",
    "method_color",
    "style_axes",
    "transitions_png",
]

METHOD_COLORS: dict[str, str] = {
    "sft": "#d62728",
    "known_only": "#7f7f7f",
    "self_distill": "#1f77b4",
    "self_distill_ffn_only": "#9edae5",
    "self_distill_nontarget": "#393b79",
    "freeze_attention_only": "#ff7f0e",
    "freeze_ffn_only": "#bcbd22",
    "l2_anchor": "#2ca02c",
    "kl_to_base": "#17becf",
    "ewc": "#9467bd",
    "replay": "#8c564b",
    "forecast_replay": "#c49c94",
    "known_patch": "#e377c2",
    "label_smoothing": "#393b79",
    "lora": "#637939",
    "early_stopping": "#843c39",
}
"""Colour of each shipped method, in the order reports list methods."""

_EXTRA_COLORS = ("#5254a3", "#8ca252", "#bd9e39", "#ad494a", "#a55194", "#6b6ecf", "#e7969c")
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "p", "h", "H", "d")
SPLIT_COLORS = {"d_known": "#55a868", "d_unknown": "#4c72b0", "d_held": "#c44e52"}
SPLIT_NAMES = {"d_known": "D_known", "d_unknown": "D_unknown", "d_held": "D_held"}
TRANSITION_STYLE = {
    "stable_right": ("right → right", "#59a14f"),
    "known_to_forgotten": ("known → forgotten", "#e15759"),
    "unknown_to_learned": ("unknown → learned", "#4e79a7"),
    "stable_wrong": ("wrong → wrong", "#c9c3bf"),
}
DPI = 110


@dataclass(frozen=True)
class PlotGroup:
    """One method (or method variant) and the values of its runs.

    Attributes:
        label: the row's name (``"self_distill (λ=5)"``).
        method: the method name (picks the colour).
        kl_weight: λ of the group's runs, if any.
        sweep: groups sharing this key differ only in λ (the frontier connects them).
        note: the annotation of the group's point on the frontier (``"λ=5"``; default: the
            method, with its λ when the group is part of a sweep).
        metrics: each run's ``metrics.jsonl`` rows.
        forgetting: each run's forgetting of D_held (fraction).
        unknown: each run's final D_unknown accuracy (fraction).
        transitions: each run's ``{split: {kind: count}}`` between first and last evaluation.
    """

    label: str
    method: str
    kl_weight: float | None = None
    sweep: str | None = None
    note: str = ""
    metrics: Sequence[Sequence[Mapping[str, Any]]] = ()
    forgetting: Sequence[float] = ()
    unknown: Sequence[float] = ()
    transitions: Sequence[Mapping[str, Mapping[str, int]]] = ()


def method_color(method: str) -> str:
    """The colour of ``method``: fixed for the shipped methods, stable for any other name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA_COLORS[sum(method.encode()) % len(_EXTRA_COLORS)]


def _marker(method: str) -> str:
    names = list(METHOD_COLORS)
    index = names.index(method) if method in names else len(names) + sum(method.encode())
    return _MARKERS[index % len(_MARKERS)]


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (reproducible: no software tag in the metadata)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def style_axes(ax: Axes) -> None:
    """factkeep's plot style: a light grid behind the data, no top and right spines."""
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _phase_starts(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Global steps at which a new training phase begins (after the first phase): the step of
    the previous phase's last evaluation (every phase is evaluated at its end)."""
    starts, phase, step = [], None, 0
    for row in rows:
        if phase is not None and row.get("phase") != phase:
            starts.append(step)
        phase, step = row.get("phase"), int(row["step"])
    return starts


def learning_curves_png(groups: Sequence[PlotGroup], columns: int = 4) -> bytes:
    """Accuracy on D_known / D_unknown / D_held against the training step, one panel per group.

    Lines are the mean over the group's runs at each evaluated step; the band spans the lowest
    and highest run. Dotted vertical lines mark where a training phase begins.
    """
    cols = max(1, min(columns, len(groups)))
    rows = max(1, math.ceil(len(groups) / cols))
    fig = Figure(figsize=(3.1 * cols, 2.35 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(groups):
            ax.set_visible(False)
            continue
        group = groups[i]
        for split, colour in SPLIT_COLORS.items():
            by_step: dict[int, list[float]] = {}
            for run in group.metrics:
                for row in run:
                    if split in row.get("acc", {}):
                        by_step.setdefault(int(row["step"]), []).append(100 * row["acc"][split])
            if not by_step:
                continue
            steps = sorted(by_step)
            ax.plot(steps, [mean(by_step[s]) for s in steps], color=colour, linewidth=1.6)
            if len(group.metrics) > 1:
                lows = [min(by_step[s]) for s in steps]
                highs = [max(by_step[s]) for s in steps]
                ax.fill_between(steps, lows, highs, color=colour, alpha=0.18, linewidth=0)
        for step in sorted({s for run in group.metrics for s in _phase_starts(run)}):
            ax.axvline(step, color="#999999", linestyle=":", linewidth=1)
        n = len(group.metrics)
        title = "\n".join(textwrap.wrap(group.label, 30))
        ax.set_title(f"{title}  ({n} run{'s' if n != 1 else ''})", fontsize=9, loc="left")
        ax.set_ylim(-3, 103)
        ax.tick_params(labelsize=8)
        style_axes(ax)
        if i % cols == 0:
            ax.set_ylabel("accuracy (%)", fontsize=8)
        if i >= len(groups) - cols:
            ax.set_xlabel("training step", fontsize=8)
    handles: list[Any] = [
        Line2D([], [], color=c, linewidth=2, label=SPLIT_NAMES[s]) for s, c in SPLIT_COLORS.items()
    ]
    handles.append(Line2D([], [], color="#999999", linestyle=":", label="new phase"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=9)
    return figure_png(fig)


_OFFSETS = (
    (6, 4, "left", "bottom"),
    (6, -4, "left", "top"),
    (-6, 4, "right", "bottom"),
    (-6, -4, "right", "top"),
    (0, 9, "center", "bottom"),
    (0, -9, "center", "top"),
    (10, 16, "left", "bottom"),
    (10, -16, "left", "top"),
    (-10, 16, "right", "bottom"),
    (-10, -16, "right", "top"),
)


def _overlap(box: Bbox, others: Sequence[Bbox]) -> float:
    """Total area of ``box`` covered by ``others``."""
    total = 0.0
    for other in others:
        width = min(box.x1, other.x1) - max(box.x0, other.x0)
        height = min(box.y1, other.y1) - max(box.y0, other.y0)
        total += max(width, 0.0) * max(height, 0.0)
    return total


def _place_labels(
    fig: Figure, ax: Axes, labels: Sequence[tuple[str, tuple[float, float], str]]
) -> None:
    """Annotate points, each label where it covers the least of the other points and labels."""
    fig.draw_without_rendering()  # settle the layout and limits before measuring
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    centres = [ax.transData.transform(xy) for _, xy, _ in labels]
    taken = [Bbox.from_bounds(x - 5, y - 5, 10, 10) for x, y in centres]
    for text, xy, colour in labels:
        best: tuple[float, int] | None = None
        for k, (dx, dy, ha, va) in enumerate(_OFFSETS):
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va)
            note.set_fontsize(8)
            box = note.get_window_extent(renderer).padded(1)
            note.remove()
            outside = box.width * box.height - _overlap(box, [frame])
            cost = _overlap(box, taken) + 4 * outside
            if best is None or cost < best[0]:
                best = (cost, k)
            if cost == 0:
                break
        dx, dy, ha, va = _OFFSETS[best[1] if best else 0]
        note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va)
        note.set(fontsize=8, color=colour)
        taken.append(note.get_window_extent(renderer).padded(1))


def frontier_png(groups: Sequence[PlotGroup]) -> bytes:
    """Forgetting of D_held (x) against final D_unknown accuracy (y): the trade-off frontier.

    Small points are single runs, large points the mean of a group; groups of the same sweep
    (differing only in λ) are joined by a line in order of λ and labelled with λ. The best place
    is the top left.
    """
    fig = Figure(figsize=(10, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sweeps: dict[str, list[tuple[float, float, float]]] = {}
    for group in groups:
        if not group.forgetting:
            continue
        colour, marker = method_color(group.method), _marker(group.method)
        xs = [100 * x for x in group.forgetting]
        ys = [100 * y for y in group.unknown]
        if len(xs) > 1:
            ax.scatter(xs, ys, s=18, color=colour, marker=marker, alpha=0.35, linewidths=0)
        x, y = mean(xs), mean(ys)
        ax.scatter(x, y, s=70, color=colour, marker=marker, zorder=3, edgecolors="white")
        if group.sweep is not None and group.kl_weight is not None:
            sweeps.setdefault(group.sweep, []).append((group.kl_weight, x, y))
    swept = {k for k, points in sweeps.items() if len(points) > 1}
    colours = {g.sweep: method_color(g.method) for g in groups}
    for key in swept:
        points = sorted(sweeps[key])
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.plot(xs, ys, color=colours[key], linewidth=1.2, alpha=0.7, zorder=2)
    ax.set_xlabel("forgetting of D_held (% relative decline from its peak)  →  worse")
    ax.set_ylabel("final D_unknown accuracy (%)  →  better")
    ax.set_ylim(-4, 106)
    low, high = ax.get_xlim()
    ax.set_xlim(min(low, -0.02 * high), high)  # show 0 (no forgetting)
    style_axes(ax)
    handles: dict[str, Line2D] = {}
    for group in groups:
        handles.setdefault(
            group.method,
            Line2D(
                [],
                [],
                color=method_color(group.method),
                linestyle="",
                markersize=8,
                marker=_marker(group.method),
                label=group.method,
            ),
        )
    fig.legend(
        handles=list(handles.values()),
        loc="outside right upper",
        fontsize=9,
        title="method",
        title_fontsize=9,
        frameon=False,
    )
    labels = []
    for group in groups:
        note = group.note or group.method
        if not group.note and group.sweep in swept and group.kl_weight is not None:
            note = f"{group.method}, λ={group.kl_weight:g}"
        if group.forgetting:
            xy = (100 * mean(group.forgetting), 100 * mean(group.unknown))
            labels.append((note, xy, method_color(group.method)))
    _place_labels(fig, ax, labels)
    return figure_png(fig)


def _mean_fractions(runs: Sequence[Mapping[str, Mapping[str, int]]], split: str) -> list[float]:
    """Mean over runs of the fraction of facts in each transition kind (zeros if none)."""
    fractions = []
    for counts in runs:
        c = counts.get(split)
        total = sum(c.values()) if c else 0
        if c and total:
            fractions.append([c.get(kind, 0) / total for kind in TRANSITION_STYLE])
    if not fractions:
        return [0.0] * len(TRANSITION_STYLE)
    return [mean(column) for column in zip(*fractions, strict=True)]


def transitions_png(
    groups: Sequence[PlotGroup], splits: Sequence[str] = ("d_held", "d_unknown")
) -> bytes:
    """Stacked bars of fact transitions between the first and the last evaluation.

    One panel per split; one bar per group: the share of facts right at both evaluations, right
    then wrong (forgotten), wrong then right (learned) and wrong at both (mean over runs).
    """
    fig = Figure(figsize=(11, 0.34 * len(groups) + 1.5), layout="constrained")
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    positions = list(range(len(groups)))[::-1]
    for ax, split in zip(axes, splits, strict=True):
        left = [0.0] * len(groups)
        shares = [_mean_fractions(g.transitions, split) for g in groups]
        for k, (_, colour) in enumerate(TRANSITION_STYLE.values()):
            widths = [100 * s[k] for s in shares]
            ax.barh(
                positions,
                widths,
                left=left,
                color=colour,
                height=0.72,
                edgecolor="white",
                linewidth=0.6,
            )
            for y, x0, w in zip(positions, left, widths, strict=True):
                if w >= 8:
                    ink = "white" if k in (1, 2) else "#222222"
                    ax.text(
                        x0 + w / 2, y, f"{w:.0f}", ha="center", va="center", fontsize=7, color=ink
                    )
            left = [a + b for a, b in zip(left, widths, strict=True)]
        ax.set_title(SPLIT_NAMES.get(split, split), fontsize=10)
        ax.set_xlim(0, 100)
        ax.set_xlabel("facts (%)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].set_yticks(positions, [g.label for g in groups])
    for tick, group in zip(axes[0].get_yticklabels(), groups, strict=True):
        tick.set_color(method_color(group.method))
    handles = [Patch(color=c, label=name) for name, c in TRANSITION_STYLE.values()]
    fig.legend(handles=handles, loc="outside upper center", ncols=4, fontsize=9, frameon=False)
    return figure_png(fig)
