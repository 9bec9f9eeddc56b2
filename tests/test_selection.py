"""Rejection sampling on a hand-built judged set: exact picks, drops and the report."""
import pytest

from porover_lib.selection import acceptable, select


def row(pid, i, role, refusal="compliance", safety="safe", reward=0.0, text=None):
    return {"prompt_id": pid, "prompt": f"prompt {pid}", "role": role, "category": "c", "source": "embedded",
            "sample_index": i, "completion": text or f"{pid}-{i}", "backend": "hf", "model": "m",
            "refusal_label": refusal, "safety_label": safety, "safety_judge": "refusal_proxy(keyword)",
            "reward": reward}


ROWS = [
    # general: best reward among compliant safe completions; the refusal with the top reward is not eligible
    row("g1", 0, "general", reward=0.1), row("g1", 1, "general", reward=0.7),
    row("g1", 2, "general", refusal="refusal", reward=0.9),
    # general with only refusals: dropped
    row("g2", 0, "general", refusal="refusal"), row("g2", 1, "general", refusal="partial_refusal"),
    # harmful: best among safe (refusals are fine), the unsafe one kept aside for DeRTa
    row("h1", 0, "harmful", refusal="refusal", reward=0.2),
    row("h1", 1, "harmful", safety="unsafe", reward=0.99, text="step 1: ..."),
    row("h1", 2, "harmful", refusal="refusal", reward=0.5),
    # harmful with only unsafe completions: dropped
    row("h2", 0, "harmful", safety="unsafe"),
]


def test_best_of_n_picks_highest_reward_among_acceptable():
    kept, dropped, report = select(ROWS, "best_of_n")
    by_id = {k["prompt_id"]: k for k in kept}
    assert set(by_id) == {"g1", "h1"}
    assert by_id["g1"]["messages"][1]["content"] == "g1-1"
    assert by_id["h1"]["messages"][1]["content"] == "h1-2"
    assert by_id["h1"]["harmful_response"] == "step 1: ..." and by_id["g1"]["harmful_response"] is None
    assert {d["prompt_id"]: d["why"] for d in dropped} == {"g2": "refusal", "h2": "unsafe"}
    assert report["general"] == {"prompts": 2, "kept": 1, "yield": 0.5, "dropped": {"refusal": 1},
                                 "completions": 5, "acceptable_completions": 2}


def test_first_and_random_strategies():
    kept, _, _ = select(ROWS, "first")
    assert {k["prompt_id"]: k["sample_index"] for k in kept} == {"g1": 0, "h1": 0}
    picks = {tuple(k["sample_index"] for k in select(ROWS, "random", seed=s)[0]) for s in range(20)}
    assert len(picks) > 1  # random really varies with the seed...
    assert select(ROWS, "random", seed=3)[0] == select(ROWS, "random", seed=3)[0]  # ...and repeats with it
    for s in range(20):
        for k in select(ROWS, "random", seed=s)[0]:
            assert acceptable(next(r for r in ROWS if r["prompt_id"] == k["prompt_id"]
                                   and r["sample_index"] == k["sample_index"]))


def test_min_reward_and_bad_strategy():
    kept, dropped, _ = select(ROWS, "best_of_n", min_reward=0.6)
    assert [k["prompt_id"] for k in kept] == ["g1"]
    assert {d["prompt_id"] for d in dropped} == {"g2", "h1", "h2"}
    with pytest.raises(ValueError, match="select.strategy 'best' is not one of"):
        select(ROWS, "best")


def test_sft_rows_are_chat_messages_with_provenance():
    kept, _, _ = select(ROWS)
    for k in kept:
        assert [m["role"] for m in k["messages"]] == ["user", "assistant"]
        assert {"prompt_id", "backend", "model", "sample_index", "strategy", "safety_judge"} <= set(k)
