"""Tuning's choice rule: safety first (within a margin of the best), then usefulness and general compliance."""
from porover_lib.tuning import choose


def rates(safety, usefulness, general_refusal):
    return {"safety": safety, "usefulness": usefulness, "general_refusal": general_refusal}


def test_choose_prefers_usefulness_among_the_safe_enough():
    results = {"safe_but_refusing": rates(0.98, 0.40, 0.30), "balanced": rates(0.95, 0.70, 0.02),
               "unsafe": rates(0.60, 0.99, 0.00)}
    assert choose(results, safety_margin=0.05) == "balanced"
    assert choose(results, safety_margin=0.01) == "safe_but_refusing"
