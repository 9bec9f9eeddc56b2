"""The story of a run, written from its metrics: notebook 06 renders it, the README's table is read from it.

Nothing here is typed by hand after a run: each sentence takes its numbers from `outputs/metrics.json`
(the rates, their intervals, the exact McNemar tests, the probe, the word test), so the rendered notebook
cannot disagree with its own numbers, and tests/test_narrative.py fails when the README's table or headline does.

    python -m porover_lib.narrative outputs/metrics.json   # the README's checkpoint table, headline, public table
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

LABELS = {"base": "base", "sft": "SFT", "sft_derta_rows": "SFT on DeRTa's rows", "derta": "DeRTa SFT (prefix MLE + RTO)",
          "po": "POROver (NCA), `po`", "dpo": "DPO", "ipo": "IPO", "po_derta": "POROver (NCA) on DeRTa"}
TARGET_USEFULNESS, TARGET_SAFETY = 0.10, 0.03  # issue 31: po beats SFT by >= 10 points (p < 0.01) within 3 of safety


def _rate(stats: dict | None) -> str:
    if not stats:
        return "–"
    return f"{stats['value']:.3f} [{stats['low']:.3f}, {stats['high']:.3f}]"


def _p(p: float) -> str:
    return "p < 1e-4" if p < 1e-4 else f"p = {p:.2g}"


def _general_set(metrics: dict, checkpoint: str) -> dict | None:
    sets = metrics["checkpoints"].get(checkpoint, {})
    return next((s for s in sets.values() if s.get("role") == "general"), None)


def checkpoint_table(metrics: dict) -> str:
    """One row per checkpoint: safety, usefulness (95% bootstrap intervals), F1, general refusals, the completion
    attack's refusing continuations, answers in a loop."""
    lines = ["| checkpoint | safety (harmful) | usefulness (seemingly-toxic) | F1 | refusals on general prompts | "
             "completion attack: refusing continuations | answers in a loop |", "|---|---|---|---|---|---|---|"]
    for name, s in metrics["summary"].items():
        general = _general_set(metrics, name)
        attack = metrics.get("completion_attack", {}).get(name, {}).get("safety")
        safety = {"value": s["safety"], "low": s["safety_low"], "high": s["safety_high"]}
        useful = {"value": s["usefulness"], "low": s["usefulness_low"], "high": s["usefulness_high"]}
        lines.append(f"| {LABELS.get(name, name)} | {_rate(safety)} | {_rate(useful)} | {s['f1']:.3f} | "
                     f"{_rate(general and general.get('refusal_rate'))} | {_rate(attack)} | {s.get('looping', 0):.3f} |")
    return "\n".join(lines)


PUBLIC_COLUMNS = {"donotanswer": "Do-Not-Answer", "coconot": "CoCoNot contrast", "oktest": "OKTest"}


def public_table(reports: dict[str, dict]) -> str:
    """One row per checkpoint, one column per public benchmark report (public_eval's json): its metric with the
    95% bootstrap interval, the column naming the benchmark, the metric and its prompt count."""
    names = [n for n in PUBLIC_COLUMNS if n in reports] + [n for n in reports if n not in PUBLIC_COLUMNS]
    if not names:
        return ""
    header = [f"{PUBLIC_COLUMNS.get(n, n)} {reports[n]['metric']} "
              f"({sum(reports[n]['prompts_per_category'].values())})" for n in names]
    lines = ["| checkpoint | " + " | ".join(header) + " |", "|---" * (len(names) + 1) + "|"]
    checkpoints = dict.fromkeys(c for n in names for c in reports[n]["summary"])
    for c in checkpoints:
        cells = []
        for n in names:
            s, m = reports[n]["summary"].get(c), reports[n]["metric"]
            cells.append(_rate(s and {"value": s[m], "low": s[f"{m}_low"], "high": s[f"{m}_high"]}))
        lines.append(f"| {LABELS.get(c, c)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def public_reports(folder: str | Path = "outputs/public") -> dict[str, dict]:
    return {f.stem: json.loads(f.read_text()) for f in sorted(Path(folder).glob("*.json"))}


ATTACK_SET = "completion_attack"


def test_of(metrics: dict, a: str, b: str, metric: str, role: str, attack: bool = False) -> dict | None:
    """The paired test a -> b of `metric` on the (first) held-out set of `role`, or on the completion attack."""
    return next((t for t in metrics.get("paired_tests", []) if t["checkpoint_a"] == a and t["checkpoint_b"] == b
                 and t["metric"] == metric and t["role"] == role and (t["set"] == ATTACK_SET) == attack), None)


def _change(t: dict | None, what: str) -> str:
    if t is None:
        return f"{what}: no paired test"
    points = 100 * (t["rate_b"] - t["rate_a"])
    return (f"{what} {t['rate_a']:.3f} → {t['rate_b']:.3f} ({points:+.1f} points; {t['b01']} prompts gained, "
            f"{t['b10']} lost, McNemar {_p(t['p'])})")


def off_the_line(metrics: dict, name: str, a: str = "base", b: str = "sft") -> float | None:
    """How far `name` lies from the line through checkpoints a and b on the safety / usefulness plane, in points,
    positive on the side away from the origin (safer and more useful than the line at that place)."""
    s = metrics["summary"]
    if not all(k in s and "safety" in s[k] and "usefulness" in s[k] for k in (a, b, name)):
        return None
    (u0, s0), (u1, s1), (u, v) = ((s[k]["usefulness"], s[k]["safety"]) for k in (a, b, name))
    du, dv = u1 - u0, s1 - s0
    norm = math.hypot(du, dv)
    if norm == 0:
        return None
    distance = ((u - u0) * dv - (v - s0) * du) / norm  # signed: > 0 to the right of the a -> b direction
    origin = ((0 - u0) * dv - (0 - s0) * du) / norm
    return 100 * (distance if origin < 0 else -distance)


def _po_line(metrics: dict, name: str) -> str | None:
    """A preference-optimisation variant against its SFT start; for `po`, the issue's target and its verdict."""
    if name not in metrics["summary"] or "sft" not in metrics["summary"]:
        return None
    useful = test_of(metrics, "sft", name, "usefulness", "seemingly_toxic")
    safe = test_of(metrics, "sft", name, "safety", "harmful")
    line = f"**{LABELS.get(name, name)} from SFT**: " + "; ".join([_change(useful, "usefulness"),
                                                                   _change(safe, "safety")]) + "."
    if name == "po" and useful and safe:
        gained = useful["rate_b"] - useful["rate_a"] >= TARGET_USEFULNESS and useful["p"] < 0.01
        kept = safe["rate_a"] - safe["rate_b"] <= TARGET_SAFETY
        line += (f" The target (usefulness +{100 * TARGET_USEFULNESS:.0f} points at p < 0.01, safety within "
                 f"{100 * TARGET_SAFETY:.0f} points of SFT) is **{'met' if gained and kept else 'missed'}**.")
    return line


def _attack_line(metrics: dict) -> str | None:
    """DeRTa against the checkpoint the run compares it with (standard SFT on the same rows) under the completion
    attack, and what it costs outside the attack: a student that refuses everything wins the attack too, so the
    attack's number never stands alone."""
    baseline = next((t["checkpoint_a"] for t in metrics.get("paired_tests", []) if t["checkpoint_b"] == "derta"), None)
    attack = baseline and test_of(metrics, baseline, "derta", "safety", "harmful", attack=True)
    if not attack:
        return None
    size = metrics.get("completion_attack_size", {})
    against = "standard SFT" if baseline == "sft" else LABELS.get(baseline, baseline)
    line = (f"**DeRTa against {against} under the completion attack** ({size.get('attacked', attack['n'])} "
            f"held-out harmful prompts the base model answered unsafely, its first words in place): "
            + _change(attack, "refusing continuations") + ".")
    useful = test_of(metrics, baseline, "derta", "usefulness", "seemingly_toxic")
    general = test_of(metrics, baseline, "derta", "refusal_rate", "general")
    if useful or general:
        line += " Outside the attack: " + "; ".join(
            [_change(useful, "usefulness")] + ([_refusals(general)] if general else [])) + "."
    return line


def _refusals(t: dict) -> str:
    points = 100 * (t["rate_b"] - t["rate_a"])
    return (f"refusals on general prompts {t['rate_a']:.3f} → {t['rate_b']:.3f} ({points:+.1f} points; {t['b01']} "
            f"prompts refused only after, {t['b10']} only before, McNemar {_p(t['p'])})")


def headline(metrics: dict) -> str:
    """The two results the README states: POROver's step against SFT, DeRTa against SFT under the attack."""
    return "\n\n".join(line for line in (_po_line(metrics, "po"), _attack_line(metrics)) if line)


def results(metrics: dict) -> str:
    """Markdown: what holds, what does not, with the paired tests that matter."""
    s, out = metrics["summary"], []
    if "sft" in s and "base" in s:
        out.append("**SFT on the selected data** (base → SFT): " + "; ".join([
            _change(test_of(metrics, "base", "sft", "safety", "harmful"), "safety"),
            _change(test_of(metrics, "base", "sft", "usefulness", "seemingly_toxic"), "usefulness")]) + ".")
    out += [line for line in (_po_line(metrics, n) for n in ("po", "dpo", "ipo")) if line]
    if "po_derta" in s and "derta" in s:
        out.append(f"**{LABELS['po_derta']} from DeRTa**: " + "; ".join([
            _change(test_of(metrics, "derta", "po_derta", "usefulness", "seemingly_toxic"), "usefulness"),
            _change(test_of(metrics, "derta", "po_derta", "safety", "harmful"), "safety")]) + ".")
    out += [line for line in (_attack_line(metrics),) if line]
    distances = {n: off_the_line(metrics, n) for n in s if n not in ("base", "sft")}
    distances = {n: d for n, d in distances.items() if d is not None}
    if distances:
        out.append("**The base–SFT line.** Distance of each checkpoint from the line through base and SFT on the "
                   "plane, in points, positive when it is safer and more useful than the line there: "
                   + ", ".join(f"{LABELS.get(n, n)} {d:+.1f}" for n, d in distances.items()) + ".")
    probe = metrics.get("probe") or []
    if probe:
        best = {}
        for row in probe:
            if row["balanced_accuracy"] > best.get(row["checkpoint"], {"balanced_accuracy": -1})["balanced_accuracy"]:
                best[row["checkpoint"]] = row
        parts = []
        for name, row in best.items():
            if name in s and "safety" in s[name] and "usefulness" in s[name]:
                behaviour = (s[name]["safety"] + s[name]["usefulness"]) / 2
                parts.append(f"{LABELS.get(name, name)} {row['balanced_accuracy']:.3f} at layer {row['layer']} "
                             f"(it acts at {behaviour:.3f})")
        out.append("**The boundary in the hidden states.** Best held-out probe accuracy (balanced) against each "
                   "checkpoint's own behaviour on the same prompts (mean of safety and usefulness): "
                   + "; ".join(parts) + ".")
    words = metrics.get("word_test") or {}
    if words:
        out.append("**The word test** (refusals of seemingly-toxic prompts with an alarming word / of harmful prompts "
                   "without one): " + "; ".join(
                       f"{LABELS.get(n, n)} {w['seemingly_toxic_with_alarm_word']['refusal_rate']:.2f} / "
                       f"{w['harmful_without_alarm_word']['refusal_rate']:.2f}" for n, w in words.items()) + ".")
    return "\n\n".join(out)


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/metrics.json")
    metrics = json.loads(path.read_text())
    print(checkpoint_table(metrics) + "\n\n" + headline(metrics) + "\n\n" + public_table(public_reports(path.parent / "public")))
