import pandas as pd
import pytest
from matplotlib.figure import Figure

from porover_lib import plots
from porover_lib.metrics import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert path.exists(), path
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def _summary_stats(safety, usefulness, f1, hw=0.05):
    return {
        "safety": safety, "safety_low": safety - hw, "safety_high": safety + hw,
        "usefulness": usefulness, "usefulness_low": usefulness - hw, "usefulness_high": usefulness + hw,
        "f1": f1, "f1_low": f1 - hw, "f1_high": f1 + hw,
    }


@pytest.fixture
def metrics_dict():
    return {"checkpoints": {}, "summary": {
        "base": _summary_stats(0.6, 0.9, 0.72),
        "sft": _summary_stats(0.95, 0.4, 0.56),
        "po": _summary_stats(0.93, 0.8, 0.86),
    }}


def _bar_heights(ax):
    return [[round(p.get_height(), 6) for p in c.patches] for c in ax.containers if hasattr(c, "patches")]


def test_rates_with_ci(metrics_dict, tmp_path):
    out = tmp_path / "nested" / "dir" / "rates.png"
    fig = plots.rates_with_ci(metrics_dict, path=out)
    assert isinstance(fig, Figure)
    _assert_png(out)
    (ax,) = fig.axes
    assert _bar_heights(ax) == [[0.6, 0.95, 0.93], [0.9, 0.4, 0.8], [0.72, 0.56, 0.86]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "sft", "po"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["safety", "usefulness", "F1"]
    assert ax.get_xlabel() == "checkpoint" and "CI" in ax.get_ylabel()
    # one error-bar segment per bar, spanning [low, high]
    segments = [seg for coll in ax.collections for seg in coll.get_segments()]
    assert len(segments) == 9
    assert sorted(round(s[1][1] - s[0][1], 6) for s in segments) == [0.1] * 9


def test_rates_with_ci_skips_absent_metrics(metrics_dict):
    metrics_dict["summary"]["extra"] = {"usefulness": 0.5, "usefulness_low": 0.4, "usefulness_high": 0.6}
    ax = plots.rates_with_ci(metrics_dict).axes[0]
    assert sum(len(h) for h in _bar_heights(ax)) == 10


def test_rates_with_ci_missing_keys(metrics_dict):
    with pytest.raises(ValueError, match="no 'summary'"):
        plots.rates_with_ci({"checkpoints": {}})
    del metrics_dict["summary"]["sft"]["safety_low"]
    with pytest.raises(ValueError, match=r"\['sft'\] has no 'safety_low'"):
        plots.rates_with_ci(metrics_dict)


def test_tradeoff_plane(metrics_dict, tmp_path):
    out = tmp_path / "plane.png"
    paper = [{"label": "paper PO", "safety": 0.97, "usefulness": 0.85}]
    fig = plots.tradeoff_plane(metrics_dict, paper_points=paper, path=out)
    _assert_png(out)
    (ax,) = fig.axes
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    labels = [t.get_text() for t in ax.texts
              if getattr(t, "arrow_patch", None) is None and not t.get_text().startswith("F1=")]
    assert len(arrows) == 2  # base -> sft -> po
    assert labels == ["base", "sft", "po", "paper PO"]
    assert ax.get_xlabel().startswith("usefulness") and ax.get_ylabel().startswith("safety")
    assert ax.get_xlim() == (0, 1.02) and ax.get_ylim() == (0, 1.02)
    assert len(ax.containers) == 3  # one errorbar per checkpoint


def test_tradeoff_plane_arrows_only_between_existing_names(metrics_dict):
    del metrics_dict["summary"]["sft"]
    metrics_dict["summary"]["other"] = _summary_stats(0.5, 0.5, 0.5)
    ax = plots.tradeoff_plane(metrics_dict).axes[0]
    arrows = [t for t in ax.texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 1  # base -> po
    assert arrows[0].xy == (0.8, 0.93)


def test_labels_of_checkpoints_that_land_together_do_not_overlap():
    """Three checkpoints on one spot (a benchmark that cannot tell them apart) get three readable labels."""
    point = {"safety": 0.23, "safety_low": 0.17, "safety_high": 0.3,
             "usefulness": 0.88, "usefulness_low": 0.83, "usefulness_high": 0.93}
    summary = {name: point for name in ("base", "derta", "po_derta")}
    summary["sft"] = {**point, "safety": 0.6, "safety_low": 0.5, "safety_high": 0.7}
    fig = plots.tradeoff_plane({"summary": summary})
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_text() in summary]
    assert len(boxes) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert [t.xyann for t in ax.texts if t.get_text() == "sft"] == [(5, 5)]  # a label alone stays where it was


def test_tradeoff_plane_errors(metrics_dict):
    with pytest.raises(ValueError, match="percents"):
        plots.tradeoff_plane(metrics_dict, paper_points=[{"label": "v1", "safety": 97.0, "usefulness": 85.0}])
    with pytest.raises(ValueError, match=r"paper_points\[0\] has no 'usefulness'"):
        plots.tradeoff_plane(metrics_dict, paper_points=[{"label": "v1", "safety": 0.9}])
    with pytest.raises(ValueError, match="both 'safety' and 'usefulness'"):
        plots.tradeoff_plane({"summary": {"base": {"usefulness": 0.3}}})


def test_tradeoff_plane_from_summarize_output(tmp_path):
    df = pd.DataFrame({
        "checkpoint": ["base"] * 4,
        "set": ["h", "h", "x", "x"],
        "role": ["harmful", "harmful", "seemingly_toxic", "seemingly_toxic"],
        "category": ["a"] * 4,
        "safety_label": ["safe", "unsafe", None, None],
        "refusal_label": ["refusal", "compliance", "refusal", "compliance"],
        "reward": [float("nan")] * 4,
    })
    m = summarize(df, n_boot=50)
    plots.rates_with_ci(m, path=tmp_path / "a.png")
    plots.tradeoff_plane(m, path=tmp_path / "b.png")
    _assert_png(tmp_path / "a.png")
    _assert_png(tmp_path / "b.png")


def test_refusal_heatmap(tmp_path):
    df = pd.DataFrame({
        "checkpoint": ["base"] * 4 + ["po"] * 4 + ["po"],
        "category": ["violence", "violence", "privacy", "privacy"] * 2 + ["privacy"],
        "refusal_label": ["refusal", "partial_refusal", "refusal", "compliance",
                          "compliance", "refusal", "compliance", "compliance", None],
    })
    out = tmp_path / "heat.png"
    fig = plots.refusal_heatmap(df, path=out)
    _assert_png(out)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap + colorbar
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.50", "0.50", "0.00"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["violence", "privacy"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "po"]
    with pytest.raises(ValueError, match="missing column 'category'"):
        plots.refusal_heatmap(df.drop(columns="category"))
    with pytest.raises(ValueError, match="missing column 'role'"):
        plots.refusal_heatmap(df, roles=["seemingly_toxic"])


def test_refusal_heatmap_filters_roles():
    df = pd.DataFrame({
        "checkpoint": ["base"] * 4,
        "category": ["violence"] * 4,
        "role": ["harmful", "harmful", "seemingly_toxic", "seemingly_toxic"],
        "refusal_label": ["refusal", "refusal", "compliance", "partial_refusal"],
    })
    # the same category name under two roles stays two rows, never one average (0.75)
    ax = plots.refusal_heatmap(df).axes[0]
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.50"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["harmful · violence", "seemingly_toxic · violence"]
    ax = plots.refusal_heatmap(df, roles=["seemingly_toxic"]).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.50"]
    with pytest.raises(ValueError, match="no rows"):
        plots.refusal_heatmap(df, roles=["general"])


def test_score_distributions(tmp_path):
    df = pd.DataFrame({
        "score": [0.1, 0.2, 0.25, 0.3, 0.8, 0.85, 0.9, 0.95, None],
        "set": ["toxic"] * 4 + ["general"] * 4 + ["general"],
    })
    out = tmp_path / "scores.png"
    fig = plots.score_distributions(df, "score", "set", path=out)
    _assert_png(out)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["toxic", "general"]
    assert len(ax.get_lines()) == 2  # one KDE per set
    assert ax.get_xlabel() == "score"
    with pytest.raises(ValueError, match="missing column 'judge'"):
        plots.score_distributions(df, "score", "judge")


def test_refusal_rate_histogram(tmp_path):
    rates = {"seemingly_toxic": [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]}
    out = tmp_path / "hist.png"
    fig = plots.refusal_rate_histogram(rates, tau=0.5, path=out)
    _assert_png(out)
    ax = fig.axes[0]
    assert len(ax.patches) == 20
    assert sum(p.get_height() for p in ax.patches) == 8
    (tau_line,) = ax.get_lines()
    assert list(tau_line.get_xdata()) == [0.5, 0.5]
    assert any("5/8" in t.get_text() for t in ax.get_legend().get_texts())
    assert not plots.refusal_rate_histogram(rates).axes[0].get_lines()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.refusal_rate_histogram({"general": [0.2, 1.5]})
    with pytest.raises(ValueError, match="empty"):
        plots.refusal_rate_histogram({})


def test_refusal_rate_histogram_stacks_roles():
    fig = plots.refusal_rate_histogram({"seemingly_toxic": [0.0, 1.0, 1.0], "general": [0.75]}, tau=0.75)
    ax = fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == 4
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "seemingly-toxic" in texts and "general" in texts and any("3/4" in t for t in texts)
    with pytest.raises(ValueError, match="empty"):
        plots.refusal_rate_histogram({"general": []})


def test_score_distributions_survive_a_constant_group(tmp_path):
    from porover_lib.plots import score_distributions

    df = pd.DataFrame({"score": [24, 24, 24, 10, 15, 30], "set": ["a"] * 3 + ["b"] * 3})
    fig = score_distributions(df, "score", "set", path=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and fig.axes
