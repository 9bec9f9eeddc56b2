"""Near-duplicate checks for the embedded prompt sets: they must not copy benchmark prompts.

The benchmark files in `../shared/data` are evaluation data. A team-written prompt counts as a near
duplicate of another prompt when their word sets overlap with Jaccard >= 0.7, or when they share a run
of 8 consecutive words (porover_lib/overlap.py, the rule `porover check` applies between a profile's
training and evaluation sets). Run as a script to list every hit:

    python tests/novelty.py [../shared/data]
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from porover_lib.overlap import JACCARD, RUN, Index, words  # noqa: F401  (the rule, re-exported for the tests)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EMBEDDED = Path(__file__).resolve().parents[1] / "porover_lib" / "data" / "embedded"


def _csv(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f) if row.get(column)]


def _jsonl(path: Path, field: str) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            value = json.loads(line).get(field)
            if isinstance(value, str):
                out.append(value)
    return out


def _hh_first_turn(path: Path) -> list[str]:
    out = []
    for text in _jsonl(path, "chosen"):
        turn = text.split("\n\nHuman:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()
        if turn:
            out.append(turn)
    return out


def benchmark_prompts(root: Path = SHARED_DATA) -> dict[str, list[str]]:
    """Every prompt of every benchmark file in `root`, by file (relative path)."""
    root = Path(root)
    found: dict[str, list[str]] = {}

    def add(rel: str, prompts: list[str]) -> None:
        found[rel] = prompts

    add("xstest/xstest_prompts.csv", _csv(root / "xstest/xstest_prompts.csv", "prompt"))
    add("advbench/harmful_behaviors.csv", _csv(root / "advbench/harmful_behaviors.csv", "goal"))
    add("harmbench/harmbench_behaviors_text_all.csv",
        _csv(root / "harmbench/harmbench_behaviors_text_all.csv", "Behavior"))
    add("strongreject/strongreject_dataset.csv", _csv(root / "strongreject/strongreject_dataset.csv", "forbidden_prompt"))
    alpaca = json.loads((root / "alpaca_eval/alpaca_eval_805_example_outputs.json").read_text(encoding="utf-8"))
    add("alpaca_eval/alpaca_eval_805_example_outputs.json", [r["instruction"] for r in alpaca])
    for path in sorted((root / "derta/test").glob("*.json")):
        add(f"derta/test/{path.name}", _jsonl(path, "question"))
    add("hh_rlhf_harmless_base/harmless_base_test.jsonl", _hh_first_turn(root / "hh_rlhf_harmless_base/harmless_base_test.jsonl"))
    return found


def embedded_prompts(folder: Path = EMBEDDED) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
            for p in sorted(Path(folder).glob("*.jsonl"))}


def benchmark_duplicates(root: Path = SHARED_DATA, folder: Path = EMBEDDED) -> list[str]:
    index = Index([(f"{rel}:{i + 1}", p) for rel, prompts in benchmark_prompts(root).items()
                   for i, p in enumerate(prompts)])
    return [f"{name}.jsonl {row['id']} {row['prompt']!r} ~ {label} {text[:100]!r} ({why})"
            for name, rows in embedded_prompts(folder).items() for row in rows
            for label, text, why in index.matches(row["prompt"])]


def train_eval_duplicates(folder: Path = EMBEDDED) -> list[str]:
    """Train prompts that nearly duplicate an eval prompt of any embedded set (or two prompts sharing an id)."""
    sets = embedded_prompts(folder)
    rows = [(name, r) for name, rs in sets.items() for r in rs]
    evals = Index([(f"{name}.jsonl {r['id']}", r["prompt"]) for name, r in rows if r.get("split") == "eval"])
    out = [f"{name}.jsonl {r['id']} {r['prompt']!r} ~ {label} {text!r} ({why})"
           for name, r in rows if r.get("split") != "eval" for label, text, why in evals.matches(r["prompt"])]
    ids = [r["id"] for _, r in rows]
    out += [f"duplicate id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_DATA
    problems = benchmark_duplicates(root) + train_eval_duplicates()
    print("\n".join(problems) or "no near duplicates")
    print(f"{len(problems)} near duplicate(s)")
    sys.exit(1 if problems else 0)
