"""POROver preference pairs on a synthetic judged set: exact counts for several tau, and invariants."""
import pytest

from porover_lib.preference import PreferenceDataError, build_pairs, refusal_rates
from porover_lib.selection import group_by_prompt


def sample(pid, i, role, refused, unsafe=False):
    return {"prompt_id": pid, "prompt": f"p {pid}", "role": role, "category": pid[0], "sample_index": i,
            "completion": f"{pid}/{i}", "refusal_label": "refusal" if refused else "compliance",
            "safety_label": "unsafe" if unsafe else "safe", "reward": float(i)}


def student_set():
    """Benign prompts b0..b4 refused 0/4, 1/4, 2/4, 3/4, 4/4 times; harmful h0 fully safe,
    h1 and h2 answered unsafely once and twice."""
    rows = [sample(f"b{k}", i, "seemingly_toxic", refused=i < k) for k in range(5) for i in range(4)]
    rows += [sample("h0", i, "harmful", refused=True) for i in range(4)]
    rows += [sample("h1", i, "harmful", refused=i > 0, unsafe=i == 0) for i in range(4)]
    rows += [sample("h2", i, "harmful", refused=i > 1, unsafe=i <= 1) for i in range(4)]
    return rows


def teacher_set(missing=("b3",)):
    rows = []
    for k in range(5):
        if f"b{k}" in missing:
            continue
        rows.append({**sample(f"b{k}", 0, "seemingly_toxic", refused=False), "completion": f"help b{k}"})
        rows.append({**sample(f"b{k}", 1, "seemingly_toxic", refused=True), "completion": f"no b{k}", "reward": 9.0})
    for h in ("h0", "h1", "h2"):
        rows.append({**sample(h, 0, "harmful", refused=True), "completion": f"refuse {h}"})
    return rows


@pytest.mark.parametrize("tau, over_refusal", [(0.0, 3), (0.25, 3), (0.5, 2), (0.75, 1), (1.0, 1)])
def test_exact_pair_counts_per_tau(tau, over_refusal):
    # b1..b4 have refusals; b3 has no teacher answer and is dropped; b0 was never refused
    eligible = {0.0: ["b1", "b2", "b4"], 0.25: ["b1", "b2", "b4"], 0.5: ["b2", "b4"], 0.75: ["b4"], 1.0: ["b4"]}[tau]
    pairs, report = build_pairs(student_set(), teacher_set(), tau, safety_pair_share=1.0, seed=0)
    over = [p for p in pairs if p["kind"] == "over_refusal"]
    assert sorted(p["prompt_id"] for p in over) == eligible and len(over) == over_refusal
    assert report["pairs_by_kind"].get("safety") == 2
    dropped = report["dropped"].get("over_refusal: no compliant safe teacher completion", 0)
    assert dropped == (1 if tau <= 0.75 else 0)


def test_chosen_is_never_a_refusal_or_unsafe_and_rejected_is_a_refusal():
    student, teacher = student_set(), teacher_set()
    pairs, _ = build_pairs(student, teacher, 0.0)
    by_text = {r["completion"]: r for r in student + teacher}
    for p in pairs:
        chosen, rejected = by_text[p["chosen"][0]["content"]], by_text[p["rejected"][0]["content"]]
        assert chosen["safety_label"] == "safe"
        if p["kind"] == "over_refusal":
            assert chosen["refusal_label"] == "compliance" and rejected["refusal_label"] == "refusal"
        else:
            assert rejected["safety_label"] == "unsafe"
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_pairs_are_trl_conversational_and_seeded():
    a, _ = build_pairs(student_set(), teacher_set(), 0.5, seed=7)
    b, _ = build_pairs(student_set(), teacher_set(), 0.5, seed=7)
    assert a == b
    p = a[0]
    assert p["prompt"][0]["role"] == "user" and p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant"


def test_safety_pair_share():
    pairs, _ = build_pairs(student_set(), teacher_set(), 0.5, safety_pair_share=0.5)
    assert sum(p["kind"] == "safety" for p in pairs) == 1
    pairs, _ = build_pairs(student_set(), teacher_set(), 0.5, safety_pair_share=0.0)
    assert sum(p["kind"] == "safety" for p in pairs) == 0


def test_report_counts_prompts_per_tau_and_rates():
    _, report = build_pairs(student_set(), teacher_set(), 0.5)
    kept = report["prompts_kept_by_tau"]["seemingly_toxic"]
    assert kept["0.0"] == 4 and kept["1.0"] == 1 and list(report["prompts_kept_by_tau"]) == ["seemingly_toxic"]
    assert report["student_refusal_rate"]["seemingly_toxic"] == pytest.approx(0.5)
    assert refusal_rates(group_by_prompt(student_set()))["h2"] == 0.5


def test_bad_input_is_clear():
    with pytest.raises(PreferenceDataError, match=r"preference.tau = 1.5 is outside \[0, 1\]"):
        build_pairs(student_set(), teacher_set(), 1.5)
    harmful_only = [r for r in student_set() if r["role"] == "harmful"]
    with pytest.raises(PreferenceDataError, match="no seemingly-toxic .benign. prompts"):
        build_pairs(harmful_only, teacher_set(), 0.5)


def test_safety_pairs_can_take_an_unsafe_teacher_answer_when_the_student_always_refuses():
    teacher = teacher_set() + [{**sample("h0", 5, "harmful", refused=False, unsafe=True),
                                "completion": "unsafe teacher h0", "teacher": "smol"}]
    strict, _ = build_pairs(student_set(), teacher, 0.5)
    assert "h0" not in {p["prompt_id"] for p in strict if p["kind"] == "safety"}
    pairs, report = build_pairs(student_set(), teacher, 0.5, safety_rejected="student_or_teacher")
    h0 = [p for p in pairs if p["prompt_id"] == "h0"]
    assert len(h0) == 1 and h0[0]["rejected"][0]["content"] == "unsafe teacher h0"
    assert h0[0]["rejected_from"] == "smol" and h0[0]["chosen"][0]["content"] == "refuse h0"
    assert report["pairs_by_kind"]["safety"] == 3
    # the student's own unsafe answers still come first where it has them
    assert {p["rejected_from"] for p in pairs if p["prompt_id"] in ("h1", "h2")} == {"student"}
    with pytest.raises(PreferenceDataError, match="safety_rejected"):
        build_pairs(student_set(), teacher, 0.5, safety_rejected="anyone")


def test_safety_pairs_pick_their_chosen_answer_as_stage_02_does():
    teacher = teacher_set() + [{**sample("h1", 1, "harmful", refused=True), "reward": -5.0,
                                "completion": "I won't help with this: it could hurt someone; here is a safer option."}]
    short, _ = build_pairs(student_set(), teacher, 0.5)
    long, _ = build_pairs(student_set(), teacher, 0.5, harmful_strategy="longest")
    chosen = {p["prompt_id"]: p["chosen"][0]["content"] for p in short if p["kind"] == "safety"}
    assert chosen["h1"] == "refuse h1"  # the higher reward
    assert {p["prompt_id"]: p["chosen"][0]["content"] for p in long}["h1"].startswith("I won't help")


def test_refused_general_prompts_become_over_refusal_pairs():
    """A general set in preference.sets: plain requests the student refuses at >= tau are over-refusal too."""
    general = [sample("g0", i, "general", refused=i < 3) for i in range(4)]  # refused 3 of 4 times
    general += [sample("g1", i, "general", refused=False) for i in range(4)]
    teacher = teacher_set() + [{**sample(g, 0, "general", refused=False), "completion": f"help {g}"}
                               for g in ("g0", "g1")]
    pairs, report = build_pairs(student_set() + general, teacher, 0.75)
    over = {p["prompt_id"]: p for p in pairs if p["kind"] == "over_refusal"}
    assert sorted(over) == ["b4", "g0"] and over["g0"]["chosen"][0]["content"] == "help g0"
    assert over["g0"]["role"] == "general"
    assert report["student_refusal_rate"]["general"] == pytest.approx(3 / 8)
    assert report["student_refusal_rate"]["seemingly_toxic"] == pytest.approx(0.5)


def test_a_prompts_pair_does_not_depend_on_the_other_prompts():
    """Each prompt draws its rejected answer from its own seed: adding a set re-draws no other pair."""
    general = [sample(f"a{k}", i, "general", refused=i < 3) for k in range(6) for i in range(4)]
    helpful = [{**sample(f"a{k}", 0, "general", refused=False), "completion": f"help a{k}"} for k in range(6)]

    def rejected(student, teacher):
        pairs, _ = build_pairs(student, teacher, 0.25, seed=3)
        return {p["prompt_id"]: p["rejected"][0]["content"] for p in pairs}

    alone = rejected(student_set(), teacher_set(missing=()))
    together = rejected(general + student_set(), helpful + teacher_set(missing=()))
    assert sorted(together) == sorted([f"a{k}" for k in range(6)] + list(alone))
    assert alone == {pid: text for pid, text in together.items() if pid in alone}
