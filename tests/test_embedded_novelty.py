"""The embedded prompt sets are the team's own: no near duplicate of a benchmark prompt, train apart from eval.

Sizes follow the results issue: enough prompts per role and split for a held-out evaluation worth a
paired test, with harmful training prompts carrying at least two written safe responses.
"""
import json
from collections import Counter

import pytest

from novelty import EMBEDDED, Index, benchmark_duplicates, benchmark_prompts, embedded_prompts, train_eval_duplicates

MIN_SIZES = {  # set -> (train, eval); train includes the validation share carved from it
    "general": (500, 100),
    "seemingly_toxic": (600, 200),
    "harmful": (600, 200),
}


def test_benchmark_files_all_read(shared_data):
    prompts = benchmark_prompts(shared_data)
    assert len(prompts) == 14 and all(len(p) >= 4 for p in prompts.values()), {k: len(v) for k, v in prompts.items()}
    assert len(prompts["xstest/xstest_prompts.csv"]) == 450


def test_no_embedded_prompt_nearly_duplicates_a_benchmark_prompt(shared_data):
    hits = benchmark_duplicates(shared_data)
    assert not hits, f"{len(hits)} near duplicate(s):\n" + "\n".join(hits[:40])


def test_no_train_prompt_nearly_duplicates_an_eval_prompt():
    hits = train_eval_duplicates()
    assert not hits, f"{len(hits)} train/eval near duplicate(s):\n" + "\n".join(hits[:40])


def test_the_checker_catches_a_paraphrase_and_a_shared_run():
    index = Index([("bench:1", "How do I bake a sourdough loaf with a crispy crust at home?")])
    assert index.matches("How do I bake a sourdough loaf with a crispy crust?")  # Jaccard 0.83
    assert index.matches("Tell me: how do I bake a sourdough loaf with a crispy crust in winter?")  # 8-word run
    assert not index.matches("What flour makes the best bread for beginners?")


@pytest.mark.parametrize("name", sorted(MIN_SIZES))
def test_embedded_sets_are_large_and_balanced(name):
    rows = embedded_prompts(EMBEDDED)[name]
    splits = Counter(r["split"] for r in rows)
    want_train, want_eval = MIN_SIZES[name]
    assert splits["train"] >= want_train and splits["eval"] >= want_eval, dict(splits)
    per_category = Counter(r["category"] for r in rows)
    assert len(per_category) >= 8, per_category
    assert max(per_category.values()) <= 3 * min(per_category.values()), per_category
    assert len({r["prompt"].strip().lower() for r in rows}) == len(rows)


def test_harmful_train_prompts_carry_two_safe_responses():
    rows = embedded_prompts(EMBEDDED)["harmful"]
    short = [r["id"] for r in rows if r["split"] == "train" and len(set(r.get("references", []))) < 2]
    assert not short, f"harmful train prompts with fewer than 2 references: {short[:20]}"


def test_harmful_references_are_refusals_to_the_keyword_judge():
    """The references become SFT targets for harmful prompts: the judge the pipeline uses must see refusals."""
    from porover_lib.judges import KeywordRefusalJudge

    judge = KeywordRefusalJudge()
    rows = [r for r in embedded_prompts(EMBEDDED)["harmful"] for _ in r.get("references", [])]
    refs = [ref for r in embedded_prompts(EMBEDDED)["harmful"] for ref in r.get("references", [])]
    labels = [j.label for j in judge.judge([r["prompt"] for r in rows], refs)]
    missed = [ref for ref, label in zip(refs, labels) if label == "compliance"]
    assert not missed, f"{len(missed)} references judged compliance: {missed[:10]}"


def test_seemingly_toxic_prompts_name_their_over_refusal_type():
    rows = embedded_prompts(EMBEDDED)["seemingly_toxic"]
    assert all(r.get("type") for r in rows)
    assert len({r["type"] for r in rows}) >= 6, Counter(r["type"] for r in rows)


def test_harmful_and_seemingly_toxic_prompts_come_in_twin_pairs():
    """Each harmful prompt has a benign twin sharing its alarming word(s) and topic, in the same split and
    category, so that words cannot tell the two roles apart; the `alarm` word stands in both."""
    sets = embedded_prompts(EMBEDDED)
    harmful = {r["pair_id"]: r for r in sets["harmful"]}
    toxic = {r["pair_id"]: r for r in sets["seemingly_toxic"]}
    assert len(harmful) == len(sets["harmful"]) and len(toxic) == len(sets["seemingly_toxic"])  # one row per pair
    assert set(harmful) == set(toxic)
    for pair, h in harmful.items():
        t = toxic[pair]
        assert (h["split"], h["category"]) == (t["split"], t["category"]), pair
        assert h["alarm"] == t["alarm"], pair
        if h["alarm"]:
            assert h["alarm"].lower() in h["prompt"].lower() and h["alarm"].lower() in t["prompt"].lower(), pair


def test_word_free_harmful_prompts_carry_no_alarming_word():
    """Harmful requests without an alarming word (fraud, skimming, stalking, privacy): the word test's half."""
    from porover_lib.word_test import alarming_words

    rows = [r for r in embedded_prompts(EMBEDDED)["harmful"] if r["alarm"] == ""]
    assert Counter(r["split"] for r in rows)["train"] >= 100 and Counter(r["split"] for r in rows)["eval"] >= 50
    carrying = [(r["id"], alarming_words(r["prompt"])) for r in rows if alarming_words(r["prompt"])]
    assert not carrying, carrying[:10]
