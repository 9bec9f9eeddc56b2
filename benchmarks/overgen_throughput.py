"""Overgeneration throughput: the batched `hf` backend against a one-prompt, one-sample loop.

Both paths run the real embedded SmolLM2-135M-Instruct (bf16 by default) on the same embedded
general prompts with the same sampling settings; tokens/s counts generated tokens (up to and
including the end-of-turn token). The batched path puts all N samples of several prompts in one
forward batch (--batch-size sequences), as `overgenerate` does.

    .venv/bin/python benchmarks/overgen_throughput.py --prompts 8 --n 8 --max-new-tokens 64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from porover_lib.config import ModelParams, SamplingParams
from porover_lib.generation import HFBackend
from porover_lib.models import load_model, load_tokenizer
from porover_lib.prompts import load_embedded


def timed(label: str, fn) -> tuple[float, int]:
    started = time.perf_counter()
    outputs = fn()
    seconds = time.perf_counter() - started
    tokens = sum(c.completion_tokens for per_prompt in outputs for c in per_prompt)
    print(f"{label:>10}: {tokens:5d} tokens in {seconds:7.1f} s = {tokens / seconds:7.1f} tok/s", flush=True)
    return tokens / seconds, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per batch in the batched path")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = ModelParams(name="embedded:smollm2-135m-instruct", dtype=args.dtype, device="cpu")
    backend = HFBackend(load_model(spec), load_tokenizer(spec), spec.name)
    records = load_embedded("general")[:args.prompts]
    sampling = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    single = sampling.model_copy(update={"n": 1, "batch_size": 1})
    print(f"{len(records)} prompts x N={args.n} x {args.max_new_tokens} new tokens, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    backend.generate(records[:1], single.model_copy(update={"max_new_tokens": 4}), seed=0)  # warm-up

    batched_rate, batched_tokens = timed("batched", lambda: backend.generate(records, sampling, args.seed))

    def loop():
        return [[backend.generate([r], single, seed=args.seed * 1000 + k * args.n + s)[0][0] for s in range(args.n)]
                for k, r in enumerate(records)]

    loop_rate, loop_tokens = timed("per-prompt", loop)
    ratio = batched_rate / loop_rate
    print(f"speed-up: {ratio:.2f}x (goal >= 20x)")
    if args.json:
        result = dict(vars(args), batched_tok_s=batched_rate, loop_tok_s=loop_rate, ratio=ratio,
                      batched_tokens=batched_tokens, loop_tokens=loop_tokens, torch=torch.__version__,
                      threads=torch.get_num_threads(), load_average=os.getloadavg()[0],
                      cpu=platform.processor() or platform.machine())
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
