"""bf16 against float32 on this CPU: which dtype a CPU run should use, measured in one run.

The default profile pins bf16, ~1.8x faster than float32 on CPUs with bf16 instructions (AVX512-BF16, AMX).
Without them (AVX2 only: most AMD Zen 2/3 and pre-2020 Intel machines) torch emulates bf16: on a 2-core AVX2
EPYC a LoRA SFT step took 192 s in bf16 against 6.6 s in float32; `dtype: auto` picks float32 there, and
`porover check` says so.
Three measures, each bf16 then float32 on the real SmolLM2-135M-Instruct: a 1024² matmul, stage 06's greedy
batched generation (HFBackend) and a LoRA SFT step at the default profile's shapes (train_throughput.run);
plus how many greedy answers the two dtypes share word for word (the rounding that keeps a float32 run from
repeating a bf16 run's answers).

    .venv/bin/python benchmarks/cpu_dtype.py --prompts 8 --max-new-tokens 32 --steps 2
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from porover_lib.config import SamplingParams
from porover_lib.generation import HFBackend
from porover_lib.models import load_model, load_tokenizer
from porover_lib.prompts import load_embedded
from train_throughput import AFTER, OUT, WORK, build_data, matmul_flops, run

DTYPES = ("bfloat16", "float32")


def greedy(dtype: str, prompts: int, max_new_tokens: int) -> tuple[float, list[str]]:
    """Tokens/s of greedy batched answers to embedded general eval prompts, and the answers."""
    spec = AFTER[0].model_copy(update={"dtype": dtype})
    backend = HFBackend(load_model(spec), load_tokenizer(spec), spec.name)
    records = [r for r in load_embedded("general") if r.split == "eval"][:prompts]
    sampling = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=prompts)
    backend.generate(records[:1], sampling.model_copy(update={"max_new_tokens": 4}), seed=0)  # warm-up
    started = time.perf_counter()
    out = backend.generate(records, sampling, seed=0)
    seconds = time.perf_counter() - started
    return sum(c[0].completion_tokens for c in out) / seconds, [c[0].text for c in out]


def sft_step(dtype: str, rows: list[dict], steps: int) -> float:
    """Seconds per LoRA SFT step (batch 8, max_length 256), the first step left out as warm-up."""
    student, sft_over, po_over, scoring = AFTER
    setting = (student.model_copy(update={"dtype": dtype}), sft_over, po_over, scoring)
    times = run("sft", setting, rows, [], steps, WORK / f"sft-{dtype}")["times"]
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="greedy answers per dtype (one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="SFT steps per dtype (the first is warm-up)")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {capability}", flush=True)
    result = {"capability": capability, "threads": torch.get_num_threads(), "torch": torch.__version__}
    for dtype in DTYPES:
        result[dtype] = {"matmul_gflops": matmul_flops(1024, 3, getattr(torch, dtype)) / 1e9}
        print(f"{dtype:>9} matmul 1024²: {result[dtype]['matmul_gflops']:6.1f} GFLOP/s", flush=True)
    answers = {}
    for dtype in DTYPES:
        result[dtype]["greedy_tok_s"], answers[dtype] = greedy(dtype, args.prompts, args.max_new_tokens)
        print(f"{dtype:>9} greedy generation, {args.prompts} prompts x {args.max_new_tokens} tokens: "
              f"{result[dtype]['greedy_tok_s']:6.1f} tok/s", flush=True)
    result["same_answers"] = sum(a == b for a, b in zip(*answers.values()))
    rows, _ = build_data(16, 8, 0)
    for dtype in DTYPES:
        result[dtype]["sft_s_per_step"] = sft_step(dtype, rows, args.steps)
        print(f"{dtype:>9} LoRA SFT step, batch 8: {result[dtype]['sft_s_per_step']:6.2f} s/step", flush=True)
    bf16, fp32 = result["bfloat16"], result["float32"]
    print(f"float32 / bf16 speed on this CPU: matmul {fp32['matmul_gflops'] / bf16['matmul_gflops']:.2f}x, "
          f"generation {fp32['greedy_tok_s'] / bf16['greedy_tok_s']:.2f}x, "
          f"SFT step {bf16['sft_s_per_step'] / fp32['sft_s_per_step']:.2f}x (> 1: float32 is faster); "
          f"{result['same_answers']} of {args.prompts} greedy answers identical")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cpu_dtype.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
