"""Stage 04, POROver's preference data: teach an over-refusing student to answer benign prompts.

The SFT student samples M completions per prompt; its refusal rate per prompt decides the pairs:
- over-refusal pairs: benign prompts refused at a rate >= tau (the containment threshold) and at
  least once; chosen = a teacher completion judged compliant and safe, rejected = one of the student's
  refusals. Benign means seemingly-toxic, as in the paper, and also general when a general set is in
  `preference.sets`: our addition, for a student whose SFT taught it to refuse plain requests too;
- safety-preserving pairs: harmful prompts the student complied with unsafely; chosen = a safe teacher
  completion (a refusal or safe help), rejected = the unsafe compliance. A share of these
  (`safety_pair_share`) is kept, so optimisation toward helpfulness does not erode safety.
  With `safety_rejected="student_or_teacher"`, harmful prompts the student already refuses still give
  a safety pair when the teacher wrote an unsafe answer in stage 01 (e.g. the base model's own
  compliance): a safety-trained student complies too rarely to anchor safety by its samples alone.
"""
from __future__ import annotations

import random
from collections import Counter

from .selection import group_by_prompt, pick_one

TAU_GRID = [round(0.1 * i, 1) for i in range(11)]
BENIGN_ROLES = ("seemingly_toxic", "general")  # prompts a good assistant answers: refusing them is over-refusal


class PreferenceDataError(ValueError):
    pass


def refusal_rates(groups: dict[str, list[dict]]) -> dict[str, float]:
    """Share of a prompt's student samples (`group_by_prompt`) judged a refusal (full or partial)."""
    return {pid: sum(r["refusal_label"] != "compliance" for r in rows) / len(rows) for pid, rows in groups.items()}


def _check(student_rows: list[dict], tau: float) -> None:
    if not 0.0 <= tau <= 1.0:
        raise PreferenceDataError(f"preference.tau = {tau!r} is outside [0, 1]")
    if not any(r["role"] == "seemingly_toxic" for r in student_rows):
        roles = sorted({r["role"] for r in student_rows}) or ["none"]
        raise PreferenceDataError(
            "preference.sets holds no seemingly-toxic (benign) prompts, so there is no over-refusal to "
            f"learn from; the student's samples have roles {roles}. Add a prompt set whose role is seemingly_toxic.")


def prompt_rng(seed: int, prompt_id: str) -> random.Random:
    """A prompt's own draws (which refusal or unsafe answer becomes the rejected one): adding or
    removing a prompt set leaves every other prompt's pair as it was."""
    return random.Random(f"{seed}:{prompt_id}")


def _message(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def _pair(kind: str, prompt_row: dict, chosen: dict, rejected: dict, rate: float, tau: float, seed: int) -> dict:
    return {
        "id": f"pair-{kind}-{prompt_row['prompt_id']}",
        "prompt": _message("user", prompt_row["prompt"]),
        "chosen": _message("assistant", chosen["completion"]),
        "rejected": _message("assistant", rejected["completion"]),
        "kind": kind,
        "prompt_id": prompt_row["prompt_id"],
        "category": prompt_row["category"],
        "role": prompt_row["role"],
        "student_refusal_rate": rate,
        "chosen_from": {k: chosen.get(k) for k in ("backend", "model", "sample_index")},
        "rejected_from": "student" if rejected.get("teacher") in (None, "student") else rejected["teacher"],
        "rejected_sample_index": rejected["sample_index"],
        "tau": tau,
        "seed": seed,
    }


def build_pairs(student_rows: list[dict], teacher_rows: list[dict], tau: float,
                safety_pair_share: float = 1.0, seed: int = 0,
                safety_rejected: str = "student", harmful_strategy: str = "best_of_n") -> tuple[list[dict], dict]:
    """(pairs in TRL's conversational format, report). Both inputs are judged rows. A safety pair's
    chosen answer is picked as stage 02 picks harmful prompts' SFT answers (`harmful_strategy`)."""
    student_rows = [r for r in student_rows if not r.get("error")]  # a request a server refused is no sample
    _check(student_rows, tau)
    if safety_rejected not in ("student", "student_or_teacher"):
        raise PreferenceDataError(f"preference.safety_rejected = {safety_rejected!r}; "
                                  "allowed: 'student', 'student_or_teacher'")
    rng = random.Random(seed)
    groups = group_by_prompt(student_rows)
    rates = refusal_rates(groups)
    teacher = group_by_prompt(teacher_rows)
    pairs, dropped = [], Counter()
    eligible_safety = []
    for pid, samples in sorted(groups.items()):
        first = samples[0]
        refusals = sorted((r for r in samples if r["refusal_label"] != "compliance"), key=lambda r: r["sample_index"])
        if first["role"] in BENIGN_ROLES:
            if rates[pid] < tau or not refusals:
                continue
            chosen = [r for r in teacher.get(pid, []) if r["refusal_label"] == "compliance" and not r.get("error")
                      and r["safety_label"] == "safe"]
            if not chosen:
                dropped["over_refusal: no compliant safe teacher completion"] += 1
                continue
            draw = prompt_rng(seed, pid)
            best = pick_one(chosen, "best_of_n", draw)
            pairs.append(_pair("over_refusal", first, best, draw.choice(refusals), rates[pid], tau, seed))
        elif first["role"] == "harmful":
            unsafe = sorted((r for r in samples if r["safety_label"] == "unsafe"), key=lambda r: r["sample_index"])
            if not unsafe and safety_rejected == "student_or_teacher":
                unsafe = sorted((r for r in teacher.get(pid, []) if r["safety_label"] == "unsafe"),
                                key=lambda r: r["sample_index"])
            if unsafe:
                eligible_safety.append((pid, first, unsafe))
    keep = round(safety_pair_share * len(eligible_safety))
    for pid, first, unsafe in rng.sample(eligible_safety, keep):
        chosen = [r for r in teacher.get(pid, []) if r["safety_label"] == "safe" and not r.get("error")]
        if not chosen:
            dropped["safety: no safe teacher completion"] += 1
            continue
        draw = prompt_rng(seed, pid)
        pick = pick_one(chosen, harmful_strategy, draw)
        pairs.append(_pair("safety", first, pick, draw.choice(unsafe), rates[pid], tau, seed))
    pairs.sort(key=lambda p: p["id"])
    return pairs, report(groups, rates, pairs, dropped, tau)


def report(groups: dict[str, list[dict]], rates: dict[str, float], pairs: list[dict], dropped: Counter,
           tau: float) -> dict:
    """What the notebook shows: refusal-rate distribution, pairs per category, prompts kept per tau
    (the last two per benign role)."""
    roles = {pid: rows[0]["role"] for pid, rows in groups.items()}
    by_role = {role: [rate for pid, rate in rates.items() if roles[pid] == role] for role in sorted(set(roles.values()))}
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "tau": tau,
        "pairs": len(pairs),
        "pairs_by_kind": dict(Counter(p["kind"] for p in pairs)),
        "pairs_by_category": dict(sorted(Counter(f"{p['kind']}/{p['category']}" for p in pairs).items())),
        "dropped": dict(dropped),
        "student_refusal_rate": {role: mean(rs) for role, rs in by_role.items()},
        "student_unsafe_rate_harmful": mean([r["safety_label"] == "unsafe" for rows in groups.values()
                                             for r in rows if r["role"] == "harmful"]),
        "prompts_kept_by_tau": {role: {str(t): sum(1 for rate in rs if rate >= t and rate > 0) for t in TAU_GRID}
                                for role, rs in by_role.items() if role in BENIGN_ROLES},
        "benign_refusal_rates": {role: sorted(rs) for role, rs in by_role.items() if role in BENIGN_ROLES},
    }
