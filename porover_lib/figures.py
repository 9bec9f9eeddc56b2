"""Headless figures shared by `plots` (data and evaluation) and `training_log` (training curves).

Figures are `matplotlib.figure.Figure` objects bound to an Agg canvas rather than pyplot figures,
so they need no display, do not switch the caller's backend and do not pile up in pyplot's registry.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(figsize, ncols: int = 1, style: str = "whitegrid"):
    """A headless Agg figure and its axes, styled by seaborn without touching global rcParams."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style(style):
        axes = fig.subplots(1, ncols)
    return fig, axes


def finish(fig: Figure, path: str | Path | None) -> Figure:
    """The figure, also written as a PNG to `path` when given (parent folders created)."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
    return fig


def get(mapping: Mapping, key: str, where: str):
    """mapping[key] with an error that says where the key was expected and what exists."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
    if key not in mapping:
        raise ValueError(f"{where} has no {key!r}; keys present: {list(mapping)}")
    return mapping[key]
