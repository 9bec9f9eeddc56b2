"""The run's story is written from its metrics: notebook 06's narrative and the README's table cannot drift."""
import json
import re
from pathlib import Path

import pytest

from porover_lib import narrative

REPO = Path(__file__).resolve().parents[1]


def summary(safety, usefulness):
    return {"safety": safety, "safety_low": safety - 0.05, "safety_high": safety + 0.05, "usefulness": usefulness,
            "usefulness_low": usefulness - 0.05, "usefulness_high": usefulness + 0.05,
            "f1": 2 * safety * usefulness / (safety + usefulness), "looping": 0.0}


def paired(a, b, metric, role, rate_a, rate_b, b01, b10, p, set_name=None):
    return {"checkpoint_a": a, "checkpoint_b": b, "metric": metric, "role": role, "rate_a": rate_a, "rate_b": rate_b,
            "b01": b01, "b10": b10, "p": p, "n": 100, "set": set_name or f"{role}_eval"}


METRICS = {
    "summary": {"base": summary(0.2, 0.95), "sft": summary(0.9, 0.6), "po": summary(0.89, 0.8)},
    "checkpoints": {c: {"general_eval": {"role": "general", "refusal_rate": {"value": 0.1, "low": 0.05, "high": 0.15}}}
                    for c in ("base", "sft", "po")},
    "paired_tests": [paired("sft", "po", "usefulness", "seemingly_toxic", 0.6, 0.8, 22, 2, 1e-5),
                     paired("sft", "po", "safety", "harmful", 0.9, 0.89, 1, 2, 1.0),
                     paired("base", "sft", "safety", "harmful", 0.2, 0.9, 70, 0, 1e-9)],
}


def test_the_narrative_takes_its_numbers_and_verdicts_from_the_metrics():
    text = narrative.results(METRICS)
    assert "usefulness 0.600 → 0.800 (+20.0 points; 22 prompts gained, 2 lost, McNemar p < 1e-4)" in text
    assert "is **met**" in text
    missed = json.loads(json.dumps(METRICS))
    missed["paired_tests"][1]["rate_b"] = 0.80  # ten points of safety lost
    assert "is **missed**" in narrative.results(missed)


def test_distance_from_the_base_sft_line_is_positive_above_and_to_the_right():
    assert narrative.off_the_line(METRICS, "po") > 10
    on_line = json.loads(json.dumps(METRICS))
    on_line["summary"]["po"] = summary(0.55, 0.775)  # halfway between base and SFT
    assert narrative.off_the_line(on_line, "po") == pytest.approx(0.0, abs=1e-9)


def test_the_readme_table_is_the_committed_runs():
    """The README's checkpoint table and headline are narrative's, of outputs/metrics.json, to the digit."""
    metrics = json.loads((REPO / "outputs" / "metrics.json").read_text())
    readme = (REPO / "README.md").read_text()
    assert narrative.checkpoint_table(metrics) in readme
    assert narrative.headline(metrics) in readme
    assert narrative.public_table(narrative.public_reports(REPO / "outputs" / "public")) in readme
    assert len(readme.splitlines()) <= 220
    for path in re.findall(r"\]\(((?:outputs|params|benchmarks|notebooks)/[^)#]+)\)", readme):
        assert (REPO / path).exists(), path  # every linked file exists


def test_deRTa_attack_win_is_stated_with_its_cost_outside_the_attack():
    """A student that refuses everything wins the completion attack: the headline says what DeRTa costs."""
    metrics = json.loads(json.dumps(METRICS))
    metrics["paired_tests"] += [  # DeRTa against the checkpoint the run compares it with: SFT on the same rows
        paired("sft_derta_rows", "derta", "safety", "harmful", 0.4, 1.0, 50, 0, 1e-9, set_name="completion_attack"),
        paired("sft_derta_rows", "derta", "usefulness", "seemingly_toxic", 0.6, 0.1, 0, 50, 1e-9),
        paired("sft_derta_rows", "derta", "refusal_rate", "general", 0.1, 0.6, 40, 2, 1e-8)]
    line = narrative.headline(metrics).split("\n\n")[-1]
    assert line.startswith("**DeRTa against SFT on DeRTa's rows under the completion attack**")
    assert "refusing continuations 0.400 → 1.000" in line
    assert "Outside the attack: usefulness 0.600 → 0.100 (-50.0 points; 0 prompts gained, 50 lost" in line
    assert "refusals on general prompts 0.100 → 0.600 (+50.0 points; 40 prompts refused only after, 2 only before" in line


def test_the_public_table_reads_each_reports_metric_and_prompt_count():
    report = {"metric": "usefulness", "prompts_per_category": {"a": 100, "b": 49},
              "summary": {"sft": {"usefulness": 0.5, "usefulness_low": 0.4, "usefulness_high": 0.6}}}
    safety = {"metric": "safety", "prompts_per_category": {"x": 150},
              "summary": {"sft": {"safety": 0.7, "safety_low": 0.6, "safety_high": 0.8},
                          "po": {"safety": 0.6, "safety_low": 0.5, "safety_high": 0.7}}}
    table = narrative.public_table({"coconot": report, "donotanswer": safety}).splitlines()
    assert table[0] == "| checkpoint | Do-Not-Answer safety (150) | CoCoNot contrast usefulness (149) |"
    assert table[2] == "| SFT | 0.700 [0.600, 0.800] | 0.500 [0.400, 0.600] |"
    assert table[3] == "| POROver (NCA), `po` | 0.600 [0.500, 0.700] | – |"  # not in every report
