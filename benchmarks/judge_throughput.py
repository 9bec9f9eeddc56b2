"""Heuristic reward throughput: its log-likelihood pass one row at a time against length-sorted batches.

The default profile's reward judge scores every completion of stages 02 and 06 under the embedded
SmolLM2-135M-Instruct (bf16). Both sides score the same completions, so the script also prints the largest
difference between their scores. Completions: stage 01's answers to general prompts when `data/overgen`
exists (after `make reproduce`), else the model's own greedy answers to embedded general prompts.

    .venv/bin/python benchmarks/judge_throughput.py --rows 96 --batch-size 16
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from porover_lib.config import ModelParams, SamplingParams
from porover_lib.generation import HFBackend
from porover_lib.judges.reward import HeuristicRewardJudge
from porover_lib.models import load_model, load_tokenizer
from porover_lib.prompts import load_embedded

OVERGEN = Path("data/overgen/general_train__smol.jsonl")


def completions(model, tokenizer, rows: int) -> tuple[list[str], list[str], str]:
    """(prompts, responses, where they came from)."""
    if OVERGEN.is_file():
        lines = [json.loads(line) for line in OVERGEN.read_text().splitlines()[:rows]]
        return [r["prompt"] for r in lines], [r["completion"] for r in lines], str(OVERGEN)
    records = load_embedded("general")[:rows]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=96, batch_size=32)
    answers = HFBackend(model, tokenizer).generate(records, sampling, seed=0)
    return [r.prompt for r in records], [a[0].text for a in answers], "greedy answers to embedded general prompts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    spec = ModelParams(name="embedded:smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    model, tokenizer = load_model(spec).eval(), load_tokenizer(spec)  # one tokenizer: both pad by hand
    prompts, responses, source = completions(model, tokenizer, args.rows)
    print(f"{len(prompts)} completions ({source}), torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    scores, seconds = {}, {}
    for size in (1, args.batch_size):
        judge = HeuristicRewardJudge(model, tokenizer, batch_size=size)
        started = time.perf_counter()
        scores[size] = [j.score for j in judge.judge(prompts, responses)]
        seconds[size] = time.perf_counter() - started
        print(f"batch {size:>3}: {seconds[size]:6.1f} s, {len(prompts) / seconds[size]:5.1f} rows/s", flush=True)
    gap = max(abs(a - b) for a, b in zip(scores[1], scores[args.batch_size]))
    print(f"speed-up: {seconds[1] / seconds[args.batch_size]:.2f}x; largest score difference {gap:.2g}")


if __name__ == "__main__":
    main()
