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
    assert report["general"] == {"prompts": 2, "kept": 1, "yield": 0.5, "answers": 1, "dropped": {"refusal": 1},
                                 "completions": 5, "api_errors": 0, "acceptable_completions": 2}


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


def test_cap_share_keeps_general_rows_and_a_seeded_share_of_refusals():
    from porover_lib.selection import cap_share

    kept = [{"role": "general", "i": i} for i in range(80)] + [{"role": "harmful", "i": i} for i in range(40)]
    capped = cap_share(kept, "harmful", 0.2, seed=1)
    harmful = [r for r in capped if r["role"] == "harmful"]
    assert len(capped) - len(harmful) == 80 and len(harmful) == 20  # 20 / 100 rows
    assert capped == cap_share(kept, "harmful", 0.2, seed=1) != cap_share(kept, "harmful", 0.2, seed=2)
    assert cap_share(kept, "harmful", None) == kept and cap_share(kept, "harmful", 0.5) == kept


def test_harmful_prompts_may_pick_the_longest_safe_answer():
    rows = ROWS + [row("h1", 3, "harmful", refusal="refusal", reward=-1.0,
                       text="I won't help with that: it could hurt someone. Here is what I can do instead.")]
    kept, _, _ = select(rows, "best_of_n", harmful_strategy="longest")
    by_id = {k["prompt_id"]: k for k in kept}
    assert by_id["h1"]["messages"][1]["content"].startswith("I won't help") and by_id["h1"]["strategy"] == "longest"
    assert by_id["g1"]["messages"][1]["content"] == "g1-1"  # general prompts keep best_of_n
    with pytest.raises(ValueError, match="harmful_strategy 'tallest'"):
        select(rows, harmful_strategy="tallest")


def test_teachers_limit_whose_answers_become_sft_data_but_not_derta_prefixes():
    rows = [{**r, "set": "h", "teacher": "reference" if r["sample_index"] == 0 else "student"}
            for r in ROWS if r["prompt_id"] == "h1"]
    kept, _, _ = select(rows, "best_of_n", teachers={"h": ["reference"]})
    assert kept[0]["messages"][1]["content"] == "h1-0"  # the reference, though a student refusal scores higher
    assert kept[0]["harmful_response"] == "step 1: ..."  # the student's unsafe answer still feeds DeRTa
    assert select(rows, "best_of_n")[0][0]["messages"][1]["content"] == "h1-2"


def test_general_answers_keep_the_best_of_each_group_of_samples():
    """general_answers=2 splits a general prompt's samples 0,1 | 2,3 and keeps the best acceptable one of each;
    harmful prompts keep one answer; 1 is plain best-of-n."""
    rows = [row("g1", i, "general", reward=r) for i, r in enumerate([0.1, 0.7, 0.9, 0.3])]
    rows += [row("g2", 0, "general", reward=0.5), row("g2", 1, "general", refusal="refusal"),
             row("g2", 2, "general", refusal="refusal"), row("g2", 3, "general", refusal="refusal")]
    rows += [row("h1", i, "harmful", refusal="refusal", reward=r) for i, r in enumerate([0.2, 0.8, 0.4, 0.6])]
    kept, dropped, report = select(rows, "best_of_n", general_answers=2)
    answers = [(k["id"], k["prompt_id"], k["messages"][1]["content"]) for k in kept]
    assert answers == [("sft-g1", "g1", "g1-1"), ("sft-g1#1", "g1", "g1-2"), ("sft-g2", "g2", "g2-0"),
                       ("sft-h1", "h1", "h1-1")]
    assert [d["prompt_id"] for d in dropped] == ["g2#1"]  # both of its samples refused
    assert {k: report["general"][k] for k in ("prompts", "kept", "answers", "dropped")} == \
        {"prompts": 2, "kept": 2, "answers": 3, "dropped": {"refusal": 1}}
    assert [k["messages"][1]["content"] for k in select(rows, "best_of_n")[0]] == ["g1-2", "g2-0", "h1-1"]
