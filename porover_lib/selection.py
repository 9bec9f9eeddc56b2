"""Stage 02, rejection sampling: keep the best acceptable teacher completion per prompt.

Acceptable means judged safe, and for benign prompts (general, seemingly-toxic) also not a refusal:
a refusal of a benign prompt is exactly the over-refusal POROver sets out to remove, so it must not
become SFT data. Among acceptable completions, `best_of_n` keeps the highest reward (the paper's
rejection sampling), `random` a seeded random one (the paper's baseline), `first` the lowest sample index,
`longest` the longest text. Harmful prompts may pick differently (`harmful_strategy`): an offline reward
that favours likely text keeps "I can't help with that.", and a small student trained on such stock
refusals says them to plain requests too; the longest safe answer names the harm and offers an alternative.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict

STRATEGIES = ("best_of_n", "random", "first", "longest")


def acceptable(row: dict) -> bool:
    if row.get("error") or row["safety_label"] != "safe":  # an API error row is no answer at all
        return False
    return row["role"] == "harmful" or row["refusal_label"] == "compliance"


def pick_one(candidates: list[dict], strategy: str, rng: random.Random) -> dict:
    if strategy == "best_of_n":
        # ties broken by sample index, so the choice never depends on file order; unscored rows count 0
        return max(candidates, key=lambda r: (r.get("reward") or 0.0, -r["sample_index"]))
    if strategy == "random":
        return rng.choice(sorted(candidates, key=lambda r: r["sample_index"]))
    if strategy == "longest":
        return max(candidates, key=lambda r: (len(r["completion"]), -r["sample_index"]))
    return min(candidates, key=lambda r: r["sample_index"])


def group_by_prompt(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["prompt_id"]].append(row)
    return dict(groups)


def sft_example(chosen: dict, strategy: str, candidates: list[dict]) -> dict:
    """One SFT row in chat-messages format, with provenance; harmful rows carry an unsafe completion
    of the same prompt, if the teacher wrote one, for DeRTa's harmful-prefix objective."""
    unsafe = [r for r in candidates if r["role"] == "harmful" and r["safety_label"] == "unsafe"]
    return {
        "id": f"sft-{chosen['prompt_id']}",
        "messages": [{"role": "user", "content": chosen["prompt"]},
                     {"role": "assistant", "content": chosen["completion"]}],
        "role": chosen["role"],
        "prompt_id": chosen["prompt_id"],
        "category": chosen["category"],
        "source": chosen.get("source"),
        "sample_index": chosen["sample_index"],
        "backend": chosen["backend"],
        "model": chosen["model"],
        "reward": chosen["reward"],
        "safety_label": chosen["safety_label"],
        "safety_judge": chosen.get("safety_judge"),
        "refusal_label": chosen["refusal_label"],
        "strategy": strategy,
        "candidates": len(candidates),
        "harmful_response": max(unsafe, key=lambda r: len(r["completion"]))["completion"] if unsafe else None,
    }


def split_general(groups: dict[str, list[dict]], k: int) -> dict[str, list[dict]]:
    """Each general prompt's samples in `k` groups by sample index (0, 1 | 2, 3 for N = 4, k = 2), so rejection
    sampling keeps up to k different answers, each the best of N/k; group j > 0 is keyed `<prompt_id>#j`."""
    if k == 1:
        return groups
    out = {}
    for prompt_id, candidates in groups.items():
        if candidates[0]["role"] != "general":
            out[prompt_id] = candidates
            continue
        n = 1 + max(r["sample_index"] for r in candidates)
        for j in range(k):
            part = [r for r in candidates if r["sample_index"] * k // n == j]
            if part:
                out[prompt_id if j == 0 else f"{prompt_id}#{j}"] = part
    return out


def select(rows: list[dict], strategy: str = "best_of_n", seed: int = 0, min_reward: float | None = None,
           harmful_strategy: str | None = None, teachers: dict[str, list[str]] | None = None,
           general_answers: int = 1) -> tuple[list[dict], list[dict], dict]:
    """Rejection sampling over judged rows: (SFT rows, dropped prompts, report). `teachers` limits, per
    set, whose completions may become SFT answers (the others still give DeRTa its harmful responses);
    `general_answers` answers per general prompt (split_general)."""
    teachers = teachers or {}
    for key, value in (("strategy", strategy), ("harmful_strategy", harmful_strategy or strategy)):
        if value not in STRATEGIES:
            raise ValueError(f"select.{key} {value!r} is not one of {STRATEGIES}")
    rng = random.Random(seed)
    kept, dropped = [], []
    for prompt_id, candidates in sorted(split_general(group_by_prompt(rows), general_answers).items()):
        ok = [r for r in candidates if acceptable(r) and (min_reward is None or r["reward"] >= min_reward)
              and r.get("teacher") in teachers.get(r.get("set"), [r.get("teacher")])]
        if ok:
            how = harmful_strategy or strategy if candidates[0]["role"] == "harmful" else strategy
            kept.append({**sft_example(pick_one(ok, how, rng), how, candidates), "id": f"sft-{prompt_id}"})
        else:
            first = candidates[0]
            dropped.append({"prompt_id": prompt_id, "role": first["role"], "prompt": first["prompt"],
                            "candidates": len(candidates),
                            "why": Counter("api error" if r.get("error") else
                                           "unsafe" if r["safety_label"] != "safe" else
                                           "refusal" if r["refusal_label"] != "compliance" else
                                           "low reward" for r in candidates).most_common(1)[0][0],
                            "example": first["completion"]})
    return kept, dropped, yield_report(rows, kept, dropped)


def cap_share(kept: list[dict], role: str, share: float | None, seed: int = 0) -> list[dict]:
    """At most `share` of the SFT rows from `role` (a seeded random subset, order kept).

    POROver's SFT data is dominated by general completions; with a third of its rows refusals, a
    small student learns to refuse plain requests too. None keeps every row.
    """
    if share is None:
        return kept
    ours = [i for i, row in enumerate(kept) if row["role"] == role]
    others = len(kept) - len(ours)
    room = int(share * others / (1 - share))
    chosen = set(random.Random(seed).sample(ours, room)) if room < len(ours) else set(ours)
    return [row for i, row in enumerate(kept) if row["role"] != role or i in chosen]


def reward_roles(params) -> tuple[str, ...]:
    """The roles whose rewards a later pick reads (SelectParams `params`): general prompts' and harmful prompts'
    SFT answers where their strategy is best_of_n (or a min_reward floor applies), and seemingly-toxic prompts' always,
    since stage 04 picks each over-refusal pair's chosen answer by reward (preference.build_pairs). Stage 02 scores
    only these: the 8B reward model reads no answer whose score nothing uses."""
    rewarded = {"seemingly_toxic"}
    if params.strategy == "best_of_n" or params.min_reward is not None:
        rewarded.add("general")
    if (params.harmful_strategy or params.strategy) == "best_of_n":
        rewarded.add("harmful")
    return tuple(sorted(rewarded))


def sft_rows(judged: list[dict], params, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """Stage 02's SFT data from judged completions of the `select.sets` (SelectParams `params`):
    rejection sampling, then the cap on refusals; (SFT rows, dropped prompts, report)."""
    rows = [r for r in judged if r["set"] in params.sets]
    kept, dropped, report = select(rows, params.strategy, seed, params.min_reward, params.harmful_strategy,
                                   params.teachers, params.general_answers)
    return cap_share(kept, "harmful", params.harmful_share, seed), dropped, report


def yield_report(rows: list[dict], kept: list[dict], dropped: list[dict]) -> dict:
    """Prompts in, prompts kept (with at least one answer), answers kept, and why the rest were dropped
    (per answer slot: a prompt with `general_answers` > 1 may keep one answer and drop another), per role."""
    prompts = Counter(r["role"] for r in group_by_prompt(rows).values() for r in r[:1])
    kept_prompts = Counter(role for role, _ in {(r["role"], r["prompt_id"]) for r in kept})
    answers = Counter(r["role"] for r in kept)
    report = {}
    for role, n in sorted(prompts.items()):
        drops = Counter(d["why"] for d in dropped if d["role"] == role)
        report[role] = {"prompts": n, "kept": kept_prompts[role], "yield": kept_prompts[role] / n,
                        "answers": answers[role],
                        "dropped": dict(drops),
                        "completions": sum(1 for r in rows if r["role"] == role),
                        "api_errors": sum(1 for r in rows if r["role"] == role and r.get("error")),
                        "acceptable_completions": sum(1 for r in rows if r["role"] == role and acceptable(r))}
    return report
