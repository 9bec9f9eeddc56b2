"""Figures of the data and the evaluation (seaborn styling, Agg rendering; see `figures`).

Each function returns a matplotlib Figure and, given `path`, also writes a PNG there. Training
curves live in `training_log`, so editing a figure here reruns no training stage.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .figures import figure, finish, get
from .metrics import refusal_flags

RATE_METRICS = ("safety", "usefulness", "f1")
TRAJECTORY = ("base", "sft", "po")


def _ci(stats: Mapping, metric: str, where: str) -> tuple[float, float, float]:
    """(value, value - low, high - value) of a summary metric, i.e. errorbar half-widths."""
    value = get(stats, metric, where)
    return value, value - get(stats, f"{metric}_low", where), get(stats, f"{metric}_high", where) - value


def _summary(metrics_dict: Mapping) -> Mapping:
    summary = get(metrics_dict, "summary", "metrics_dict")
    if not summary:
        raise ValueError("metrics_dict['summary'] has no checkpoints")
    return summary


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    for col in columns:
        if col not in df.columns:
            raise ValueError(f"missing column {col!r}; columns present: {list(df.columns)}")


# --------------------------------------------------------------------------- rates


def rates_with_ci(metrics_dict: Mapping, path: str | Path | None = None) -> Figure:
    """Grouped bars (safety, usefulness, F1) per checkpoint with 95% CI error bars.

    Metrics a checkpoint lacks are left out rather than drawn as zero.
    """
    summary = _summary(metrics_dict)
    present = [m for m in RATE_METRICS if any(m in s for s in summary.values())]
    if not present:
        raise ValueError(f"metrics_dict['summary'] has none of {RATE_METRICS}")
    fig, ax = figure((max(4.5, 1.6 + 1.2 * len(summary)), 3.8))
    width = 0.8 / len(present)
    colors = sns.color_palette("deep", len(present))
    for j, metric in enumerate(present):
        xs, values, errs = [], [], [[], []]
        for i, (ckpt, stats) in enumerate(summary.items()):
            if metric not in stats:
                continue
            value, minus, plus = _ci(stats, metric, f"metrics_dict['summary'][{ckpt!r}]")
            xs.append(i + (j - (len(present) - 1) / 2) * width)
            values.append(value)
            errs[0].append(minus)
            errs[1].append(plus)
        label = "F1" if metric == "f1" else metric
        ax.bar(xs, values, width, yerr=errs, capsize=3, color=colors[j], label=label)
    ax.set_xticks(range(len(summary)), [str(c) for c in summary])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("share of prompts (95% CI)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(present), frameon=False)
    fig.suptitle("safety, usefulness and F1 per checkpoint")
    return finish(fig, path)


def completion_attack(attack: Mapping[str, Mapping], path: str | Path | None = None,
                      highlight: Collection[str] = ()) -> Figure:
    """Share of completion-attack prompts whose continuation refuses, per checkpoint, with 95% CIs.

    attack: checkpoint -> {"safety": {"value", "low", "high", "n"}} (metrics.json's completion_attack);
    highlight: checkpoints drawn in a second colour (DeRTa's, Params.derta_checkpoints).
    """
    if not attack:
        raise ValueError("completion_attack: no checkpoints")
    names = list(attack)
    rates = [get(get(attack[c], "safety", f"attack[{c!r}]"), "value", f"attack[{c!r}]['safety']") for c in names]
    lows = [r - attack[c]["safety"]["low"] for r, c in zip(rates, names)]
    highs = [attack[c]["safety"]["high"] - r for r, c in zip(rates, names)]
    fig, ax = figure((max(4.5, 1.2 + 0.9 * len(names)), 3.4))
    ax.bar(range(len(names)), rates, yerr=[lows, highs], capsize=3,
           color=[sns.color_palette("deep")[3 if c in highlight else 0] for c in names])
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("continuations that refuse (95% CI)")
    n = attack[names[0]]["safety"].get("n")
    fig.suptitle(f"completion attack: an unsafe answer's first words in place{f' (n={n})' if n else ''}")
    return finish(fig, path)


def _spread_labels(ax, names) -> None:
    """Move checkpoint labels that would overlap down, one under the next: checkpoints that land together
    (SFT and DPO, DeRTa and po_derta) would have their labels printed over each other."""
    fig = ax.figure
    fig.canvas.draw()  # constrained layout settles here, so the label boxes below are final
    renderer, points = fig.canvas.get_renderer(), 72 / fig.dpi
    labels = [t for t in ax.texts if t.get_text() in names and hasattr(t, "xyann")]
    labels.sort(key=lambda t: (-t.get_window_extent(renderer).y0, t.get_window_extent(renderer).x0))
    placed = []
    for label in labels:
        box = label.get_window_extent(renderer)
        while any(box.overlaps(other) for other in placed):
            dx, dy = label.xyann
            label.xyann = (dx, dy - (box.height + 1) * points)
            box = label.get_window_extent(renderer)
        placed.append(box)


def tradeoff_plane(
    metrics_dict: Mapping,
    paper_points: Sequence[Mapping] | None = None,
    path: str | Path | None = None,
    line: tuple[str, str] | None = None,
    *,
    xlabel: str = "usefulness (share of seemingly-toxic prompts not refused)",
    ylabel: str = "safety (share of harmful prompts answered safely)",
    title: str = "safety / usefulness trade-off",
) -> Figure:
    """Safety (y) vs usefulness (x) per checkpoint, with CI whiskers, iso-F1 curves and
    arrows along base -> sft -> po for the checkpoints that exist; labels that would overlap are moved apart.

    paper_points: optional [{"label", "safety", "usefulness"}] as fractions in [0, 1] (the papers' numbers,
    or a probe read as a classifier: harmful flagged, seemingly-toxic passed).
    line: two checkpoints (e.g. ("base", "sft")) whose line is drawn across the plane: a checkpoint on it
    traded one rate for the other along the same direction, one off it moved the boundary.
    """
    summary = _summary(metrics_dict)
    fig, ax = figure((5, 5))
    u = np.linspace(0.01, 1, 200)
    for level in (0.5, 0.7, 0.9):  # F1 = level  <=>  s = level * u / (2u - level)
        ok = 2 * u > level
        s = level * u[ok] / (2 * u[ok] - level)
        keep = s <= 1
        ax.plot(u[ok][keep], s[keep], color="0.8", lw=0.8, ls="--", zorder=0)
        ax.text(1.0, level * 1 / (2 - level), f"F1={level}", fontsize=7, color="0.5", ha="right", va="bottom")

    points = {}
    for ckpt, stats in summary.items():
        if "safety" not in stats or "usefulness" not in stats:
            continue  # a checkpoint needs both axes to be placed
        where = f"metrics_dict['summary'][{ckpt!r}]"
        sv, s_lo, s_hi = _ci(stats, "safety", where)
        uv, u_lo, u_hi = _ci(stats, "usefulness", where)
        ax.errorbar(uv, sv, xerr=[[u_lo], [u_hi]], yerr=[[s_lo], [s_hi]], fmt="o", capsize=3, label=str(ckpt))
        ax.annotate(str(ckpt), (uv, sv), xytext=(5, 5), textcoords="offset points", fontsize=9)
        points[ckpt] = (uv, sv)
    if not points:
        raise ValueError("no checkpoint in metrics_dict['summary'] has both 'safety' and 'usefulness'")

    if line is not None and all(name in points for name in line):
        (u0, s0), (u1, s1) = points[line[0]], points[line[1]]
        t = np.linspace(-5, 5, 400)
        lu, ls = u0 + t * (u1 - u0), s0 + t * (s1 - s0)
        inside = (lu >= 0) & (lu <= 1.02) & (ls >= 0) & (ls <= 1.02)
        ax.plot(lu[inside], ls[inside], color="0.55", lw=1.0, ls="-.", zorder=0, label=f"{line[0]}–{line[1]} line")

    path_names = [name for name in TRAJECTORY if name in points]
    for start, end in zip(path_names, path_names[1:]):
        ax.annotate("", xy=points[end], xytext=points[start],
                    arrowprops={"arrowstyle": "->", "color": "0.3", "lw": 1.2})

    for i, point in enumerate(paper_points or []):
        where = f"paper_points[{i}]"
        label, s, uv = get(point, "label", where), get(point, "safety", where), get(point, "usefulness", where)
        if not (0 <= s <= 1 and 0 <= uv <= 1):
            raise ValueError(f"{where} must hold fractions in [0, 1] (not percents), got safety={s}, usefulness={uv}")
        ax.scatter(uv, s, marker="X", s=60, color="0.35", zorder=3)
        ax.annotate(str(label), (uv, s), xytext=(5, -10), textcoords="offset points", fontsize=8, color="0.35")

    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _spread_labels(ax, {str(name) for name in points})  # after the titles: they move the layout
    return finish(fig, path)


def refusal_heatmap(
    df: pd.DataFrame, roles: Sequence[str] | None = None, path: str | Path | None = None
) -> Figure:
    """Refusal rate (full or partial) by category x checkpoint, annotated.

    `roles` (e.g. ["seemingly_toxic"]) keeps harmful and benign rows that share a
    category name from being averaged together. Rows without a refusal_label
    (not judged) are left out.
    """
    _require_columns(df, ("checkpoint", "category", "refusal_label") + (("role",) if roles else ()))
    judged = df.dropna(subset=["refusal_label"])
    if roles:
        judged = judged[judged["role"].isin(roles)]
    if judged.empty:
        raise ValueError(f"no rows with a refusal_label to plot (roles={roles})")
    if "role" in judged:  # "harmful · violence" and "seemingly_toxic · violence" are different rows
        judged = judged.assign(category=judged["role"] + " · " + judged["category"].astype(str))
    table = (
        judged.assign(refused=refusal_flags(judged["refusal_label"]))
        .pivot_table(index="category", columns="checkpoint", values="refused", aggfunc="mean", sort=False)
        .reindex(columns=pd.unique(judged["checkpoint"]))
    )
    fig, ax = figure((1.5 + 1.1 * table.shape[1], 1.2 + 0.45 * table.shape[0]), style="white")
    sns.heatmap(table, ax=ax, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="rocket_r",
                cbar_kws={"label": "refusal rate (share of responses)"})
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("prompt role · category")
    ax.set_title("refusals (full or partial) by category")
    return finish(fig, path)


# --------------------------------------------------------------------------- data selection


def score_distributions(
    df: pd.DataFrame, score_column: str, hue_column: str, kde: bool = True, xlabel: str | None = None,
    title: str | None = None, path: str | Path | None = None,
) -> Figure:
    """Histogram (+ KDE) of judge scores per group, each group normalised on its own."""
    _require_columns(df, (score_column, hue_column))
    data = df.dropna(subset=[score_column])
    if data.empty:
        raise ValueError(f"column {score_column!r} has no scores to plot")
    # a KDE needs spread: a group whose scores are all equal (e.g. every completion hit max_new_tokens)
    # has a singular covariance, so draw the KDE only when every group varies
    kde = kde and bool((data.groupby(hue_column)[score_column].nunique() > 1).all())
    fig, ax = figure((6, 3.5))
    sns.histplot(data=data, x=score_column, hue=hue_column, kde=kde, stat="density",
                 common_norm=False, element="step", ax=ax)
    ax.set_xlabel(xlabel or score_column)
    ax.set_ylabel("density (each group sums to 1)")
    ax.set_title(title or f"{score_column} by {hue_column}")
    return finish(fig, path)


def refusal_rate_histogram(rates: Mapping[str, Sequence[float]], tau: float | None = None,
                           path: str | Path | None = None) -> Figure:
    """Histogram of per-prompt student refusal rates, role -> rates stacked one colour per role (a pooled
    bar never hides which prompts it counts), with the selection threshold tau marked."""
    groups = {str(k): np.asarray(v, dtype=float) for k, v in rates.items()}
    x = np.concatenate(list(groups.values())) if groups else np.array([])
    if x.size == 0:
        raise ValueError("rates is empty")
    if not ((x >= 0) & (x <= 1)).all():
        raise ValueError("rates must be fractions in [0, 1] (NaN not allowed)")
    fig, ax = figure((5.5, 3.5))
    ax.hist(list(groups.values()), bins=20, range=(0, 1), stacked=True, edgecolor="white",
            label=[role.replace("_", "-") for role in groups])
    if tau is not None:
        if not 0 <= tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        above = int((x >= tau).sum())
        ax.axvline(tau, color="crimson", ls="--", label=f"τ = {tau:g} ({above}/{x.size} prompts ≥ τ)")
    ax.legend()
    ax.set_xlim(0, 1)
    ax.set_xlabel("student refusal rate per prompt (share of its samples)")
    ax.set_ylabel("prompts (count)")
    ax.set_title("how often the SFT student refuses each benign prompt")
    return finish(fig, path)


def probe_layers(probes: pd.DataFrame, table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Left: each checkpoint's probe accuracy (held-out, balanced) by layer. Right: `table` (probe.summary: the
    best layer's probe beside the checkpoint's own behaviour on the same prompts), one pair of bars per row."""
    _require_columns(probes, ("checkpoint", "layer", "balanced_accuracy"))
    probe_col, behaviour_col = "probe balanced accuracy", "behaviour (mean of safety, usefulness)"
    _require_columns(table, (probe_col, behaviour_col))
    if probes.empty:
        raise ValueError("probe_layers: no probe rows")
    names = list(dict.fromkeys(probes["checkpoint"]))
    colours = dict(zip(names, sns.color_palette("deep", len(names))))
    fig, (left, right) = figure((10, 3.8), ncols=2)
    for name in names:
        rows = probes[probes["checkpoint"] == name]
        left.plot(rows["layer"], rows["balanced_accuracy"], marker=".", color=colours[name], label=name)
    left.axhline(0.5, color="0.6", lw=0.8, ls=":")
    left.set_ylim(0.4, 1.01)
    left.set_xlabel("layer (0 = embeddings)")
    left.set_ylabel("probe balanced accuracy, held out")
    left.set_title("harmful vs seemingly-toxic, read off the hidden state")
    left.legend(fontsize=8, ncols=2)
    x = np.arange(len(names))
    table = table.reindex(names)
    right.bar(x - 0.2, table[probe_col], width=0.4, color=[colours[n] for n in names], label="probe (best layer)")
    right.bar(x + 0.2, table[behaviour_col], width=0.4, color=[colours[n] for n in names],
              alpha=0.45, hatch="//", label="behaviour (mean of safety, usefulness)")
    right.set_xticks(x, names, rotation=30, ha="right")
    right.set_ylim(0, 1.05)
    right.set_ylabel("balanced accuracy")
    right.set_title("what the model holds vs what it does")
    right.legend(fontsize=8, loc="lower right")
    return finish(fig, path)
