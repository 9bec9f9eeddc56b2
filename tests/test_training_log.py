import pytest
from test_plots import _assert_png

from porover_lib import training_log


LOG_HISTORY = [
    {"loss": 2.0, "learning_rate": 1e-5, "step": 10, "rewards/margins": 0.1, "rewards/accuracies": 0.5},
    {"loss": 1.5, "learning_rate": 1e-5, "step": 20, "rewards/margins": 0.4, "rewards/accuracies": 0.7},
    {"eval_loss": 1.6, "step": 20, "eval_rewards/margins": 0.3, "eval_rewards/accuracies": 0.65},
    {"loss": 1.2, "learning_rate": 1e-5, "step": 30, "rewards/margins": 0.8, "rewards/accuracies": 0.9},
    {"train_runtime": 12.0, "step": 30},
]


def test_loss_curve(tmp_path):
    out = tmp_path / "loss.png"
    fig = training_log.loss_curve(LOG_HISTORY, path=out)
    _assert_png(out)
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [10, 20, 30] and list(line.get_ydata()) == [2.0, 1.5, 1.2]
    assert ax.get_xlabel() == "optimiser step" and ax.get_ylabel().startswith("loss") and ax.get_title()
    two = training_log.loss_curve(LOG_HISTORY, keys=("loss", "eval_loss")).axes[0]
    assert [ln.get_label() for ln in two.get_lines()] == ["loss", "eval_loss"]
    with pytest.raises(ValueError, match=r"no 'nll' entries; keys logged: \['eval_loss'"):
        training_log.loss_curve(LOG_HISTORY, keys=("nll",))


def test_preference_curves(tmp_path):
    out = tmp_path / "pref.png"
    fig = training_log.preference_curves(LOG_HISTORY, path=out)
    _assert_png(out)
    margins, accuracies = fig.axes
    assert "margin" in margins.get_title() and accuracies.get_ylabel() == "share of pairs"
    train, evaluation = [ln for ln in accuracies.get_lines()]
    assert list(train.get_ydata()) == [0.5, 0.7, 0.9] and list(evaluation.get_ydata()) == [0.65]
    assert [t.get_text() for t in margins.get_legend().get_texts()] == ["train", "eval"]
    # eval-only logs are accepted
    eval_only = [e for e in LOG_HISTORY if any(k.startswith("eval_") for k in e)]
    assert len(training_log.preference_curves(eval_only).axes[0].get_lines()) == 2  # eval line + zero line
    with pytest.raises(ValueError, match="neither 'rewards/margins'"):
        training_log.preference_curves([{"loss": 1.0, "step": 1}])


def test_log_table_first_middle_last_with_readable_learning_rate():
    history = [{"loss": 2.0 - i / 10, "learning_rate": 5e-5 * (1 - i / 10), "grad_norm": 0.5, "epoch": i / 10,
                "step": i + 1} for i in range(9)] + [{"train_runtime": 3.0, "step": 9}]
    table = training_log.log_table(history)
    assert list(table.index) == [1, 5, 9]
    assert list(table["learning rate"]) == ["5.0e-05", "3.0e-05", "1.0e-05"]
    assert list(table["training loss"]) == [2.0, 1.6, 1.2]
    assert "gradient norm" in table and "train_runtime" not in table
    with pytest.raises(ValueError, match="no training steps"):
        training_log.log_table([{"train_runtime": 3.0, "step": 9}])


def test_log_table_short_log_has_no_repeated_rows():
    table = training_log.log_table([{"loss": 1.0, "step": 1}, {"loss": 0.5, "step": 2}])
    assert list(table.index) == [1, 2]
