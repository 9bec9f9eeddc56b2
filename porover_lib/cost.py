"""What a profile will cost before it runs: prompts, samples and tokens per stage, the teacher's API bill, and
GPU hours on one card, from the profile and a few stated assumptions.

    python -m porover_lib.cost params/paper.yaml          # one 24 GB card, the student served by vLLM
    python -m porover_lib.cost params/paper_small.yaml --card h200 --student hf

Nothing here is measured: answer lengths and throughputs are assumptions (ASSUMED below, each with its
reason), so the table is an order of magnitude to plan with, not a promise; params/README.md prints it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .config import Params, load_params

# Rows of the hub datasets the paper profile reads (their cards), for sets whose `limit` does not cap them.
HUB_ROWS = {"alpaca": 52_002, "alpaca_eval": 805, "or-bench-80k": 80_359, "or-bench-hard-1k": 1_319,
            "or-bench-toxic": 655, "xstest": 450, "advbench": 520, "harmbench": 200}
# gpt-4o's list price, US$ per million tokens, as OpenAI published it for gpt-4o-2024-08-06 (August 2024);
# the Batch API halves it. Check today's price before a run.
PRICE = {"input": 2.50, "output": 10.00, "as_of": "2024-08 (gpt-4o-2024-08-06 list price)"}


@dataclass(frozen=True)
class Card:
    """Assumed throughputs of an 8B model on one card, tokens per second (none measured by this project)."""

    name: str
    train: float  # QLoRA SFT/DPO tokens per second, gradient checkpointing on (~40% of the card's bf16 FLOP/s at
    #               ~8 x 8e9 FLOP per trained token with recomputation)
    prefill: float  # bf16 judge forward passes (Llama Guard, the reward model): ~50% of bf16 FLOP/s at 16 GFLOP/token
    vllm: float  # batched decoding through vLLM, bf16 weights + LoRA, many sequences in flight (memory-bound)
    hf: float  # transformers `generate` on the 4-bit student in batches of 32 (bitsandbytes dequantises per step)


CARDS = {
    # RTX 4090: 165 TFLOP/s dense bf16, 1 TB/s; an 8B bf16 model leaves ~6 GB of KV cache at 24 GB
    "4090": Card("RTX 4090 (24 GB), estimated", train=1_000, prefill=5_000, vllm=1_500, hf=400),
    # H200: ~790 TFLOP/s bf16 as measured on the device this project was lent, 4.8 TB/s
    "h200": Card("H200 (141 GB), estimated", train=5_000, prefill=25_000, vllm=8_000, hf=1_000),
}
ASSUMED = {  # mean tokens, where the profile gives only a maximum
    "prompt": 60,  # a benchmark prompt with the chat template
    "teacher_answer": 350,  # gpt-4o on Alpaca / OR-Bench prompts, of max_new_tokens 1024
    "student_answer": 300,  # the 8B student, of max 512; refusals are short, answers run long
    "eval_answer": 250,  # greedy, of max 512
    "pair_share": 0.4,  # stage 04's prompts that become a pair (over-refusal at tau, or a safety pair)
}


def set_size(params: Params, name: str) -> int:
    spec = params.prompts[name]
    rows = HUB_ROWS.get(spec.name, 0) if spec.source == "hub" else None
    if rows is None:  # embedded or a file: count it
        from .prompts import load_prompt_set

        return len(load_prompt_set(spec))
    return min(rows, spec.limit) if spec.limit else rows


def estimate(params: Params, card: Card, student: str = "vllm") -> list[dict]:
    """One row per stage: what it reads and writes, in prompts, samples and tokens, its API cost and GPU hours."""
    a, speed = ASSUMED, card.vllm if student == "vllm" else card.hf
    sizes = {name: set_size(params, name) for name in params.prompts}
    teacher_prompts = sum(sizes[s] for s in params.overgenerate.sets)
    by_set = {s: params.overgenerate.sampling_for(s) for s in params.overgenerate.sets}
    completions = sum(sizes[s] * og.n for s, og in by_set.items())
    out_tokens = sum(sizes[s] * og.n * min(a["teacher_answer"], og.max_new_tokens) for s, og in by_set.items())
    judged_tokens = out_tokens + completions * a["prompt"]
    api = teacher_prompts * a["prompt"] * PRICE["input"] / 1e6 + out_tokens * PRICE["output"] / 1e6
    judges = 2 if params.judges.reward.name == "hf_reward_model" else 1

    sft_rows = sum(sizes[s] * (params.select.general_answers if params.prompts[s].name != "advbench" else 1)
                   for s in params.select.sets)
    sft_tokens = sft_rows * (a["prompt"] + a["teacher_answer"]) * params.sft.epochs

    ps = params.preference.sampling
    pref_prompts = sum(sizes[s] for s in params.preference.sets)
    samples = pref_prompts * ps.n
    sample_tokens = samples * min(a["student_answer"], ps.max_new_tokens)
    pairs = int(pref_prompts * a["pair_share"])
    po_tokens = pairs * 2 * (a["prompt"] + a["teacher_answer"]) * params.po.epochs * len(params.po.variants) * 4 / 3

    eval_prompts = sum(sizes[s] for s in params.evaluate.sets)
    answers = eval_prompts * len(params.evaluate.checkpoints)
    eval_tokens = answers * min(a["eval_answer"], params.evaluate.sampling.max_new_tokens)

    hours = lambda tokens, rate: tokens / rate / 3600  # noqa: E731
    return [
        {"stage": "01 overgenerate (API)", "prompts": teacher_prompts, "samples": completions,
         "tokens": out_tokens, "API US$": api, "GPU hours": 0.0},
        {"stage": f"02 judge ({judges} 8B judges)", "prompts": teacher_prompts, "samples": completions,
         "tokens": judged_tokens * judges, "API US$": 0.0, "GPU hours": hours(judged_tokens * judges, card.prefill)},
        {"stage": "03 SFT (QLoRA)", "prompts": sft_rows, "samples": sft_rows, "tokens": sft_tokens,
         "API US$": 0.0, "GPU hours": hours(sft_tokens, card.train)},
        {"stage": f"04 student samples ({student}) + Llama Guard", "prompts": pref_prompts, "samples": samples,
         "tokens": sample_tokens, "API US$": 0.0,
         "GPU hours": hours(sample_tokens, speed) + hours(samples * (a["prompt"] + a["student_answer"]), card.prefill)},
        {"stage": f"05 DPO family ({len(params.po.variants)} variants)", "prompts": pairs, "samples": pairs,
         "tokens": po_tokens, "API US$": 0.0, "GPU hours": hours(po_tokens, card.train)},
        {"stage": f"06 evaluate ({student}) + judges", "prompts": eval_prompts, "samples": answers,
         "tokens": eval_tokens, "API US$": 0.0,
         "GPU hours": hours(eval_tokens, speed) + hours(answers * (a["prompt"] + a["eval_answer"]), card.prefill)},
    ]


def table(rows: list[dict]) -> str:
    lines = ["| stage | prompts | samples | tokens (M) | API US$ | GPU hours |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['prompts']:,} | {r['samples']:,} | {r['tokens'] / 1e6:.1f} | "
                     f"{r['API US$']:,.0f} | {r['GPU hours']:.1f} |")
    lines.append(f"| **total** | | | | **{sum(r['API US$'] for r in rows):,.0f}** | "
                 f"**{sum(r['GPU hours'] for r in rows):.1f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="e.g. params/paper.yaml")
    parser.add_argument("--card", choices=sorted(CARDS), default="4090")
    parser.add_argument("--student", choices=("vllm", "hf"), default="vllm",
                        help="how stages 04 and 06 sample the student: served by vLLM, or transformers generate")
    args = parser.parse_args(argv)
    card = CARDS[args.card]
    print(f"{args.profile} on one {card.name}; student sampled with {args.student}; gpt-4o at {PRICE['as_of']}")
    print(table(estimate(load_params(args.profile), card, args.student)))


if __name__ == "__main__":
    main()
