import csv
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from porover_lib.metrics import (
    looping_flags,
    Rate,
    PAIRED_COLUMNS,
    bootstrap_ci,
    comparison_pairs,
    f1,
    f1_with_ci,
    format_p,
    mcnemar_exact,
    paired_tests,
    safety_rate,
    summarize,
    paper_results,
    usefulness_rate,
    xstest_breakdown,
    xstest_rates,
)

# <repo root>/../shared/data unless POROVER_SHARED_DATA points elsewhere
SHARED_DATA = Path(os.environ.get("POROVER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
XSTEST_DIR = SHARED_DATA / "xstest" / "model_completions"


# --------------------------------------------------------------------------- f1 / bootstrap


@pytest.mark.parametrize(
    "s, u, expected", [(0, 0, 0.0), (1, 1, 1.0), (0.5, 1, 2 / 3), (1, 0, 0.0), (0.8, 0.6, 0.96 / 1.4)]
)
def test_f1_hand_computed(s, u, expected):
    assert f1(s, u) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("s, u", [(1.5, 0.5), (-0.1, 0.5), (0.5, float("nan")), (70.8, 88.3)])
def test_f1_rejects_non_fractions(s, u):
    with pytest.raises(ValueError, match="fraction"):
        f1(s, u)


def _flags(rate: float, n: int) -> list[bool]:
    k = round(rate * n)
    return [True] * k + [False] * (n - k)


def test_ci_contains_point_and_is_inside_unit_interval():
    r = bootstrap_ci(_flags(0.3, 20))
    assert r.value == pytest.approx(0.3)
    assert 0 <= r.low < r.value < r.high <= 1
    assert r.n == 20


def test_ci_narrows_with_n_and_matches_normal_approximation():
    small, large = bootstrap_ci(_flags(0.3, 20)), bootstrap_ci(_flags(0.3, 2000))
    assert small.value == large.value == pytest.approx(0.3)
    assert (large.high - large.low) < (small.high - small.low) / 5
    # Wald width 2 * 1.96 * sqrt(p(1-p)/n) ~= 0.0402; the bootstrap should agree within ~15%.
    wald = 2 * 1.96 * math.sqrt(0.3 * 0.7 / 2000)
    assert (large.high - large.low) == pytest.approx(wald, rel=0.15)


def test_same_seed_same_ci_and_other_seed_differs():
    values = np.random.default_rng(7).normal(size=50)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)


def test_large_sample_is_blocked_but_deterministic():
    values = _flags(0.4, 20000)  # 1000 x 20000 indices would not fit in one block
    a, b = bootstrap_ci(values, seed=1), bootstrap_ci(values, seed=1)
    assert a == b
    assert a.low < 0.4 < a.high


@pytest.mark.parametrize("value", [0.0, 1.0, 0.1, 3.7])
def test_constant_gives_degenerate_interval(value):
    assert bootstrap_ci([value] * 30) == Rate(value, value, value, 30)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([0, 1], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci([0, 1], alpha=1.0)


def test_rate_to_dict():
    assert Rate(0.5, 0.25, 0.75, 4).to_dict() == {"value": 0.5, "low": 0.25, "high": 0.75, "n": 4}


def test_safety_and_usefulness_rates():
    assert safety_rate([True, True, False, True]).value == 0.75
    # usefulness is the NOT-refused share
    assert usefulness_rate([True, False, False, False]).value == 0.75
    with pytest.raises(ValueError, match="0/1"):
        safety_rate([0.2, 0.9])
    with pytest.raises(ValueError, match="safe_flags"):
        safety_rate(["safe", "unsafe"])


def test_f1_with_ci():
    safe = _flags(0.8, 50)
    refused = _flags(0.4, 40)  # usefulness 0.6
    r = f1_with_ci(safe, refused, seed=5)
    assert r.value == pytest.approx(f1(0.8, 0.6))
    assert r.low < r.value < r.high
    assert r.n == 90
    assert r == f1_with_ci(safe, refused, seed=5)
    # F1 never exceeds max(safety, usefulness), so neither can its replicates' quantiles
    assert 0 <= r.low and r.high <= 1
    # both sets constant -> every replicate identical
    assert f1_with_ci([1] * 10, [0] * 10) == Rate(1.0, 1.0, 1.0, 20)
    assert f1_with_ci([0] * 10, [1] * 10) == Rate(0.0, 0.0, 0.0, 20)


# --------------------------------------------------------------------------- summarize


def _table() -> pd.DataFrame:
    nan = float("nan")
    rows = [
        # base: two harmful sets (4 + 2 rows), one seemingly-toxic set, one general set
        *[("base", "hb", "harmful", "c1", lab, "refusal" if lab == "safe" else "compliance", nan)
          for lab in ("safe", "safe", "unsafe", "safe")],
        ("base", "adv", "harmful", "c2", "safe", "refusal", nan),
        ("base", "adv", "harmful", "c2", "unsafe", "compliance", nan),
        *[("base", "xs", "seemingly_toxic", "c1", nan, lab, nan)
          for lab in ("refusal", "compliance", "partial_refusal", "compliance")],
        *[("base", "alp", "general", "g", nan, nan, r) for r in (1.0, 2.0, 3.0)],
        # po: only general and seemingly-toxic rows -> no safety, no f1 in its summary
        *[("po", "xs", "seemingly_toxic", "c1", nan, lab, nan) for lab in ("compliance",) * 3 + ("refusal",)],
        *[("po", "alp", "general", "g", nan, "compliance", r) for r in (2.0, 2.0)],
    ]
    return pd.DataFrame(rows, columns=["checkpoint", "set", "role", "category", "safety_label", "refusal_label", "reward"])


def test_summarize_exact_values():
    out = summarize(_table(), n_boot=200)
    assert list(out["checkpoints"]) == ["base", "po"]
    base = out["checkpoints"]["base"]
    assert list(base) == ["hb", "adv", "xs", "alp"]
    assert base["hb"]["role"] == "harmful"
    assert base["hb"]["safety"]["value"] == 0.75 and base["hb"]["safety"]["n"] == 4
    assert base["hb"]["refusal_rate"]["value"] == 0.75
    assert base["adv"]["safety"]["value"] == 0.5
    assert base["xs"]["usefulness"]["value"] == 0.5  # refusal + partial refusal both count as refused
    assert base["xs"]["refusal_rate"]["value"] == 0.5
    assert base["alp"] == {"role": "general", "reward": base["alp"]["reward"]}  # no refusal labels -> no refusal_rate
    assert base["alp"]["reward"]["value"] == 2.0 and base["alp"]["reward"]["n"] == 3
    for stats in base.values():
        for key in ("safety", "usefulness", "refusal_rate"):
            if key in stats:
                r = stats[key]
                assert 0 <= r["low"] <= r["value"] <= r["high"] <= 1

    s = out["summary"]["base"]
    assert s["safety"] == pytest.approx(4 / 6)  # pooled over both harmful sets
    assert s["usefulness"] == 0.5
    assert s["f1"] == pytest.approx(4 / 7)  # 2 * (2/3) * (1/2) / (2/3 + 1/2)
    assert s["n_harmful"] == 6 and s["n_seemingly_toxic"] == 4
    assert s["f1_low"] <= s["f1"] <= s["f1_high"]
    assert s["safety_low"] <= s["safety"] <= s["safety_high"]

    po = out["summary"]["po"]
    assert po["usefulness"] == 0.75
    assert "safety" not in po and "f1" not in po
    assert out["checkpoints"]["po"]["alp"]["reward"] == {"value": 2.0, "low": 2.0, "high": 2.0, "n": 2}
    assert out["checkpoints"]["po"]["alp"]["refusal_rate"]["value"] == 0.0


def test_summarize_missing_column_names_it():
    with pytest.raises(ValueError, match=r"missing column 'reward'.*present: \['checkpoint'"):
        summarize(_table().drop(columns="reward"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.assign(role=d["role"].replace("general", "helpful")), "unknown role"),
        (lambda d: d.assign(safety_label=d["safety_label"].where(d.index != 0)), "safety_label"),
        (lambda d: d.assign(refusal_label=d["refusal_label"].where(d.index != 7)), "lack refusal_label"),
        (lambda d: d.assign(refusal_label=d["refusal_label"].replace("refusal", "REFUSED")), "unknown refusal label"),
        (lambda d: d.assign(checkpoint=d["checkpoint"].where(d.index != 3)), "missing values"),
        (lambda d: d.iloc[:0], "empty"),
    ],
)
def test_summarize_rejects_bad_tables(mutate, message):
    with pytest.raises(ValueError, match=message):
        summarize(mutate(_table()), n_boot=10)


# --------------------------------------------------------------------------- XSTest


def test_breakdown_accepts_both_label_styles():
    ours = ["compliance", "refusal", "refusal", "partial_refusal"]
    human = ["1_full_compliance", "2_full_refusal", "2_full_refusal", "3_partial_refusal"]
    expected = {"compliance": 0.25, "refusal": 0.5, "partial_refusal": 0.25}
    assert xstest_breakdown(ours) == xstest_breakdown(human) == expected
    with pytest.raises(ValueError, match="unknown refusal label"):
        xstest_breakdown(["full_compliance"])
    with pytest.raises(ValueError, match="empty"):
        xstest_breakdown([])


def test_xstest_rates_small_table():
    df = pd.DataFrame({
        "type": ["homonyms", "homonyms", "privacy_public", "contrast_homonyms", "contrast_privacy"],
        "judge": ["compliance", "partial_refusal", "compliance", "refusal", "compliance"],
    })
    out = xstest_rates(df, "judge", n_boot=100)
    assert out["over_refusal"].value == pytest.approx(1 / 3) and out["over_refusal"].n == 3
    assert out["safety"].value == 0.5 and out["safety"].n == 2
    assert out["breakdown"]["unsafe"] == {"compliance": 0.5, "refusal": 0.5, "partial_refusal": 0.0}
    with pytest.raises(ValueError, match="missing column 'final_label'"):
        xstest_rates(df)
    with pytest.raises(ValueError, match="no unsafe prompts"):
        xstest_rates(df[~df["type"].str.startswith("contrast_")], "judge")


README_COUNTS = {  # final_label counts stated in shared/data/README.md: compliance / refusal / partial
    "gpt4": (230, 211, 9),
    "llama2new": (176, 230, 44),
    "mistralguard": (210, 199, 41),
}


@pytest.mark.parametrize("model", list(README_COUNTS))
def test_xstest_human_labels(model):
    path = XSTEST_DIR / f"xstest_v2_completions_{model}.csv"
    if not path.exists():
        pytest.skip(f"XSTest completions not found at {path} (set POROVER_SHARED_DATA to the shared/data folder)")

    # independent count with the csv module
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    totals = Counter(r["final_label"] for r in rows)
    assert (totals["1_full_compliance"], totals["2_full_refusal"], totals["3_partial_refusal"]) == README_COUNTS[model]
    refusing = {"2_full_refusal", "3_partial_refusal"}
    safe = [r["final_label"] for r in rows if not r["type"].startswith("contrast_")]
    unsafe = [r["final_label"] for r in rows if r["type"].startswith("contrast_")]
    assert (len(safe), len(unsafe)) == (250, 200)
    safe_refused = sum(label in refusing for label in safe)
    unsafe_refused = sum(label in refusing for label in unsafe)

    out = xstest_rates(pd.read_csv(path), "final_label")
    assert out["over_refusal"].value == safe_refused / len(safe)
    assert out["over_refusal"].n == len(safe)
    assert out["safety"].value == unsafe_refused / len(unsafe)
    assert out["safety"].n == len(unsafe)
    for kind, labels in (("safe", safe), ("unsafe", unsafe)):
        c = Counter(labels)
        assert out["breakdown"][kind] == {
            "compliance": c["1_full_compliance"] / len(labels),
            "refusal": c["2_full_refusal"] / len(labels),
            "partial_refusal": c["3_partial_refusal"] / len(labels),
        }
    o, s = out["over_refusal"], out["safety"]
    print(
        f"\nXSTest {model}: over-refusal on safe = {safe_refused}/{len(safe)} = {o.value:.3f} "
        f"[{o.low:.3f}, {o.high:.3f}]; safety on unsafe = {unsafe_refused}/{len(unsafe)} = {s.value:.3f} "
        f"[{s.low:.3f}, {s.high:.3f}]"
    )


# --------------------------------------------------------------------------- paper table


def test_paper_results_hold_only_the_stated_numbers():
    stated = {
        ("POROver v1", "F1(safety, usefulness)"): [70.8, 88.3],
        ("POROver v1", "over-refusal"): [94.4, 45.2, 15.0],
        ("POROver v2", "F1(safety, usefulness)"): [74.4, 91.8],
        ("POROver v2", "usefulness"): [11.1, 57.6, 82.1],
        ("DeRTa", "attack success rate"): [],
        ("Safe-NCA", "global safety score"): [57.6, 99.9],
    }
    assert {(r["paper"], r["metric"]): r["values"] for r in paper_results()} == stated
    for r in paper_results():
        assert r["source"] and r["note"] and r["citation"] and "not comparable" in r["note"]
        if r["values"]:
            assert len(r["stages"]) == len(r["values"])


# --------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize(
    "b01, b10, expected",
    [
        (0, 10, 2 * 0.5**10),
        (10, 0, 2 * 0.5**10),
        (3, 3, 1.0),  # symmetric: the two-sided tail exceeds 1 and is capped
        (0, 0, 1.0),  # no discordant pairs: no evidence either way
        (1, 5, 2 * (1 + 6) / 2**6),  # P[X <= 1], X ~ Binom(6, 1/2) = 7/64
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
    ],
)
def test_mcnemar_exact_hand_computed(b01, b10, expected):
    # 4 concordant pairs around the discordant ones change nothing but n
    a = [False] * b01 + [True] * b10 + [True, True, False, False]
    b = [True] * b01 + [False] * b10 + [True, True, False, False]
    out = mcnemar_exact(a, b)
    assert out == {"n": b01 + b10 + 4, "b01": b01, "b10": b10, "p": pytest.approx(expected, rel=1e-12)}


def test_mcnemar_exact_tiny_p_stays_positive():
    out = mcnemar_exact([False] * 1000, [True] * 1000)
    assert out["p"] == pytest.approx(2 * 0.5**1000, rel=1e-12) and out["p"] > 0  # ~1.9e-301


@pytest.mark.parametrize(
    "a, b, message",
    [
        ([True, False], [True], "same length"),
        ([], [], "empty"),
        ([True, "refusal"], [True, False], "numbers or booleans"),
        ([1, 2], [0, 1], "booleans or 0/1"),
    ],
)
def test_mcnemar_exact_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        mcnemar_exact(a, b)


STARTS = {"base": None, "sft": "base", "derta": "sft", "po": "sft", "dpo": "sft", "ipo": "sft", "po_derta": "derta"}


@pytest.mark.parametrize(
    "checkpoints, expected",
    [
        (["base", "sft", "po"], [("base", "sft"), ("sft", "po")]),
        (["sft", "dpo", "ipo", "po"], [("sft", "dpo"), ("sft", "ipo"), ("sft", "po")]),
        (["base", "sft", "derta", "po", "po_derta"],
         [("base", "sft"), ("sft", "derta"), ("sft", "po"), ("derta", "po_derta")]),
        (["base", "sft", "po_derta"], [("base", "sft")]),  # its DeRTa start not evaluated: no pair
        (["base", "po"], []),
    ],
)
def test_comparison_pairs(checkpoints, expected):
    assert comparison_pairs(checkpoints, STARTS) == expected


def _paired_table():
    """base and sft on the same prompts, except h3 and t4 that only base answered."""
    rows = []
    harmful = {"h1": ("unsafe", "safe"), "h2": ("unsafe", "safe"), "h3": ("safe", None), "h4": ("safe", "safe")}
    for pid, labels in harmful.items():
        for ckpt, lab in zip(("base", "sft"), labels):
            if lab is not None:
                rows.append((ckpt, "harm", "harmful", pid, lab, "refusal" if lab == "safe" else "compliance"))
    toxic = {"t1": ("compliance", "refusal"), "t2": ("compliance", "partial_refusal"),
             "t3": ("refusal", "compliance"), "t4": ("compliance", None), "t5": ("compliance", "compliance")}
    for pid, labels in toxic.items():
        for ckpt, lab in zip(("base", "sft"), labels):
            if lab is not None:
                rows.append((ckpt, "tox", "seemingly_toxic", pid, None, lab))
    for pid, labels in {"g1": ("compliance", "refusal"), "g2": ("compliance", "compliance")}.items():
        for ckpt, lab in zip(("base", "sft"), labels):
            rows.append((ckpt, "gen", "general", pid, None, lab))
    return pd.DataFrame(rows, columns=["checkpoint", "set", "role", "prompt_id", "safety_label", "refusal_label"])


def test_paired_tests_on_shared_prompts_only():
    out = paired_tests(_paired_table(), [("base", "sft")])
    assert tuple(out.columns) == PAIRED_COLUMNS
    got = {(r.set, r.metric): r for r in out.itertuples()}
    assert list(got) == [("harm", "safety"), ("harm", "refusal_rate"), ("tox", "usefulness"), ("gen", "refusal_rate")]

    safety = got["harm", "safety"]  # h3 dropped: sft never answered it
    assert (safety.n, safety.b01, safety.b10) == (3, 2, 0)
    assert safety.rate_a == pytest.approx(1 / 3) and safety.rate_b == 1.0
    assert safety.p == pytest.approx(0.5)  # 2 * 0.5**2

    useful = got["tox", "usefulness"]  # t4 dropped; a partial refusal is not useful
    assert (useful.n, useful.b01, useful.b10) == (4, 1, 2)
    assert useful.rate_a == 0.75 and useful.rate_b == 0.5
    assert useful.p == 1.0

    general = got["gen", "refusal_rate"]
    assert (general.n, general.b01, general.b10, general.rate_a, general.rate_b) == (2, 1, 0, 0.0, 0.5)
    assert (out["checkpoint_a"] == "base").all() and (out["checkpoint_b"] == "sft").all()


def test_paired_tests_reject_bad_tables():
    table = _paired_table()
    with pytest.raises(ValueError, match="one response per prompt"):
        paired_tests(pd.concat([table, table.iloc[:1]]), [("base", "sft")])
    with pytest.raises(ValueError, match="'po' has no rows"):
        paired_tests(table, [("sft", "po")])
    with pytest.raises(ValueError, match="missing column 'prompt_id'"):
        paired_tests(table.drop(columns="prompt_id"), [("base", "sft")])
    with pytest.raises(ValueError, match="safety_label"):
        paired_tests(table.assign(safety_label=table["safety_label"].replace("unsafe", None)), [("base", "sft")])


def test_paired_tests_no_pairs_gives_empty_table():
    out = paired_tests(_paired_table(), [])
    assert out.empty and tuple(out.columns) == PAIRED_COLUMNS


@pytest.mark.parametrize("p, text", [(1.0, "1.0000"), (0.01234, "0.0123"), (1e-4, "0.0001"), (9e-5, "<1e-4")])
def test_format_p(p, text):
    assert format_p(p) == text


def test_a_set_with_both_roles_is_split_by_role():
    """XSTest carries safe and unsafe prompts in one file: its metrics come per role, named set/role."""
    table = _table()
    mixed = table.assign(set=table["set"].replace("adv", "xs"))
    roles = set(mixed.loc[mixed["set"] == "xs", "role"])
    assert len(roles) > 1
    sets = summarize(mixed, n_boot=10)["checkpoints"]
    assert {f"xs/{r}" for r in roles} <= set(next(iter(sets.values())))



def test_looping_flags_catch_short_units_repeated_six_times_and_nothing_else():
    looped = ["SorrySorrySorrySorrySorrySorrySorry", "To make a I I I I I I I I I I", "I can't IJC I'm IJC I'm IJC I'm "
              "IJC I'm IJC I'm IJC I'm IJC", "Chat: ****\n" * 7]
    fine = ["I can't help with that. If you're worried, I can suggest other options.", "Step 1. Step 2. Step 3.",
            "Count: 1 1 1 1 1 1 1 1", "well, well, well, well, well", "=" * 40]
    assert looping_flags(looped).tolist() == [1.0] * 4
    assert looping_flags(fine).tolist() == [0.0] * 5


def test_summarize_reports_looping_when_the_responses_are_there():
    table = _table()
    assert "looping" not in summarize(table, n_boot=10)["summary"]["base"]
    texts = ["ok"] * len(table)
    texts[0] = "no " * 10
    out = summarize(table.assign(completion=texts), n_boot=10)
    assert out["summary"]["base"]["looping"] == pytest.approx(1 / 13)
    assert out["checkpoints"]["base"]["hb"]["looping"]["value"] == 0.25 and out["summary"]["po"]["looping"] == 0.0
