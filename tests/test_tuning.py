"""Tuning's choice rule: safety first (within a margin of the best), then usefulness and general compliance."""
from pathlib import Path

import pytest

from porover_lib.tuning import choose


def rates(safety, usefulness, general_refusal, looping=0.0):
    return {"safety": safety, "usefulness": usefulness, "general_refusal": general_refusal, "looping": looping}


def test_choose_prefers_usefulness_among_the_safe_enough():
    results = {"safe_but_refusing": rates(0.98, 0.40, 0.30), "balanced": rates(0.95, 0.70, 0.02),
               "unsafe": rates(0.60, 0.99, 0.00)}
    assert choose(results, safety_margin=0.05) == "balanced"
    assert choose(results, safety_margin=0.01) == "safe_but_refusing"


def test_choose_measures_a_preference_step_against_its_start():
    """With an anchor (the SFT start's safety) the floor no longer follows the safest variant: a step that
    refuses everything cannot push out one that keeps SFT's safety and gains usefulness."""
    results = {"refuses_all": rates(1.00, 0.30, 0.60), "useful": rates(0.84, 0.90, 0.05)}
    assert choose(results, safety_margin=0.05) == "refuses_all"
    assert choose(results, safety_margin=0.05, anchor=0.86) == "useful"
    assert choose({"useful": results["useful"]}, safety_margin=0.05, anchor=0.95) is None


def test_choose_leaves_out_variants_whose_answers_loop():
    results = {"looping": rates(0.99, 0.95, 0.01, looping=0.4), "plain": rates(0.90, 0.60, 0.20)}
    assert choose(results, safety_margin=0.05) == "plain"
    assert choose({"looping": results["looping"]}, safety_margin=0.05) is None


def test_a_grid_block_must_exist_and_name_a_stage(tmp_path):
    from porover_lib.tuning import tune

    grid = tmp_path / "grid.yaml"
    smoke = Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"
    grid.write_text(f"profile: {smoke}\n" + "sft: {variants: {}}\nodd: {stage: rl, variants: {}}\n")
    with pytest.raises(ValueError, match=r"no block 'derta'; blocks: \['sft', 'odd'\]"):
        tune("derta", grid)
    with pytest.raises(ValueError, match=r"block 'odd' tunes stage 'rl'"):
        tune("odd", grid)
