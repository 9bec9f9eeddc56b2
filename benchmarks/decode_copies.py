"""Greedy batched generation with and without the two copies `HFBackend` avoids, and whether the answers agree.

The baseline undoes both in one process on the real embedded SmolLM2-135M-Instruct (bf16): the prefill keeps its
last logits with an int `logits_to_keep` (a strided view, which matmul multiplies by lm_head's weight copied once per
row) and attention is transformers' eager one (`repeat_kv` copies the key/value cache once per query head). The
two paths alternate over `--rounds` so a slow moment of the machine falls on both.

    .venv/bin/python benchmarks/decode_copies.py --prompts 64 --max-new-tokens 64 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from porover_lib.config import ModelParams, SamplingParams
from porover_lib.generation import GROUPED_EAGER, HFBackend
from porover_lib.models import load_model, load_tokenizer
from porover_lib.prompts import load_embedded


def with_int_logits_to_keep(model):
    """The model's forward as it was called before: `logits_to_keep=1` instead of the last position's index."""
    forward = model.forward

    def baseline(*args, logits_to_keep=0, **kwargs):
        if torch.is_tensor(logits_to_keep) and logits_to_keep.numel() == 1:
            logits_to_keep = 1
        return forward(*args, logits_to_keep=logits_to_keep, **kwargs)

    return baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    spec = ModelParams(name="embedded:smollm2-135m-instruct", dtype="bfloat16", device="cpu",
                       attn_implementation="eager")
    backend = HFBackend(load_model(spec), load_tokenizer(spec), spec.name)
    assert backend.model.config._attn_implementation == GROUPED_EAGER
    model, avoided = backend.model, backend.model.forward
    records = load_embedded("seemingly_toxic")[:args.prompts]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"{len(records)} prompts x {args.max_new_tokens} new tokens, greedy, batches of {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    backend.generate(records[:2], sampling.model_copy(update={"max_new_tokens": 4}), seed=0)  # warm-up

    def run(path: str) -> tuple[float, list[str]]:
        model.config._attn_implementation, model.forward = ((GROUPED_EAGER, avoided) if path == "avoided"
                                                            else ("eager", with_int_logits_to_keep(model)))
        started = time.perf_counter()
        texts = [c[0].text for c in backend.generate(records, sampling, seed=0)]
        return time.perf_counter() - started, texts

    seconds, answers = {"baseline": [], "avoided": []}, {}
    for _ in range(args.rounds):
        for path in seconds:
            took, answers[path] = run(path)
            seconds[path].append(took)
            print(f"{path:>9}: {took:6.1f} s", flush=True)
    ratio = sum(seconds["baseline"]) / sum(seconds["avoided"])
    same = sum(a == b for a, b in zip(answers["baseline"], answers["avoided"]))
    print(f"speed-up: {ratio:.2f}x; answers identical: {same} of {len(records)}")


if __name__ == "__main__":
    main()
