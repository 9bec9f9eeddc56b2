"""A training run as the notebooks show it: a compact table of its log and the loss / reward curves.

The trainer logs every step (`TrainResult.log_history`, also saved as `<output_dir>/log_history.json`);
a reader needs the first, middle and last steps and the curves, not every line.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .figures import figure, finish, get

# logged key -> column heading that says what it measures
COLUMNS = {
    "epoch": "epoch",
    "loss": "training loss",
    "grad_norm": "gradient norm",
    "learning_rate": "learning rate",
    "mean_token_accuracy": "next-token accuracy",
    "rewards/margins": "reward margin (chosen − rejected)",
    "rewards/accuracies": "share of pairs with chosen > rejected",
}
DPO_KEYS = ("rewards/margins", "rewards/accuracies")


def log_table(log_history: Sequence[Mapping]) -> pd.DataFrame:
    """First, middle and last logged training steps, the learning rate in scientific notation
    (a 4-decimal rounding would show 5e-5 as 0.0)."""
    steps = [e for e in log_history if "loss" in e and "step" in e]
    if not steps:
        raise ValueError(f"log_history has no training steps; keys logged: {_logged_keys(log_history)}")
    picked = [steps[i] for i in dict.fromkeys((0, len(steps) // 2, len(steps) - 1))]
    table = pd.DataFrame([{COLUMNS[k]: e[k] for k in COLUMNS if k in e} for e in picked],
                         index=pd.Index([e["step"] for e in picked], name="step"))
    if "learning rate" in table:
        table["learning rate"] = table["learning rate"].map("{:.1e}".format)
    return table.round(3)


def _series(log_history: Sequence[Mapping], key: str) -> tuple[list, list]:
    steps, values = [], []
    for i, entry in enumerate(log_history):
        if key in entry:
            steps.append(get(entry, "step", f"log_history[{i}]"))
            values.append(entry[key])
    return steps, values


def _logged_keys(log_history: Sequence[Mapping]) -> list[str]:
    return sorted({k for entry in log_history for k in entry})


def loss_curve(log_history: Sequence[Mapping], keys: Sequence[str] = ("loss",), title: str = "training loss",
               path: str | Path | None = None) -> Figure:
    """Training curves vs optimiser step from a HF Trainer `state.log_history` (one line per key)."""
    if isinstance(keys, str):
        keys = (keys,)
    fig, ax = figure((5.5, 3.5))
    for key in keys:
        steps, values = _series(log_history, key)
        if not steps:
            raise ValueError(f"log_history has no {key!r} entries; keys logged: {_logged_keys(log_history)}")
        ax.plot(steps, values, marker="o", ms=3, label=key)
    ax.set_xlabel("optimiser step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (mean cross-entropy, nats/token)" if list(keys) == ["loss"] else "value")
    ax.set_title(title)
    ax.legend()
    return finish(fig, path)


def preference_curves(log_history: Sequence[Mapping], title: str = "preference optimisation",
                      path: str | Path | None = None) -> Figure:
    """Implicit reward margin and preference accuracy vs step, train and eval_ series as logged by TRL."""
    fig, axes = figure((9, 3.5), ncols=2)
    for ax, key in zip(axes, DPO_KEYS):
        drawn = 0
        for name in (key, f"eval_{key}"):
            steps, values = _series(log_history, name)
            if steps:
                ax.plot(steps, values, marker="o", ms=3, label="eval" if name.startswith("eval_") else "train")
                drawn += 1
        if not drawn:
            raise ValueError(
                f"log_history has neither {key!r} nor 'eval_{key}'; keys logged: {_logged_keys(log_history)}"
            )
        ax.set_xlabel("optimiser step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    axes[0].set_ylabel("β · log-ratio margin (nats)")
    axes[0].set_title("reward margin (chosen − rejected)")
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[1].set_ylabel("share of pairs")
    axes[1].set_title("chosen rewarded above rejected")
    axes[1].set_ylim(0, 1.02)
    fig.suptitle(title)
    return finish(fig, path)
