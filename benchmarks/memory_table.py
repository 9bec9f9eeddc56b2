"""Print the estimated QLoRA GPU memory (GiB) for Llama-3.x students, SFT and DPO, against a 24 GiB card.

    python benchmarks/memory_table.py [--budget 24] [--rank 16]

Rows: the `paper` profile's settings (params/paper.yaml: batch, max_length, LoRA rank, gradient
checkpointing), then batch 2 x 2048 tokens as headroom. DPO batches count pairs (2x the sequences).
Paged 8-bit AdamW, LoRA on all linears. See porover_lib/memory.py for the formula.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from porover_lib.config import load_params  # noqa: E402
from porover_lib.memory import LLAMA_CONFIGS, estimate_qlora_memory  # noqa: E402

PAPER = load_params(Path(__file__).resolve().parents[1] / "params" / "paper.yaml")
HEADROOM = (2, 2048)


def settings(method: str) -> list[tuple[int, int, bool]]:
    stage = PAPER.sft if method == "sft" else PAPER.po
    return [(stage.batch_size, stage.max_length, stage.gradient_checkpointing), (*HEADROOM, True)]


def table(budget: float, rank: int) -> str:
    head = ("| model | method | batch | seq | weights | LoRA + optim | activations | LM head | total | "
            f"fits {budget:g} GiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, config in LLAMA_CONFIGS.items():
        for method in ("sft", "dpo"):
            for batch, seq, checkpointing in settings(method):
                e = estimate_qlora_memory(config, batch, seq, rank, method, gradient_checkpointing=checkpointing)
                lines.append(f"| {name} | {method.upper()} | {batch} | {seq} | {e['weights']:.2f} | "
                             f"{e['lora'] + e['optimizer']:.2f} | {e['activations']:.2f} | {e['lm_head']:.2f} | "
                             f"{e['total']:.2f} | {'yes' if e['total'] <= budget else 'NO'} |")
    big = LLAMA_CONFIGS["Llama-3.1-8B"]
    unfused = estimate_qlora_memory(big, 2, 2048, rank, "dpo", fused_lm_head=False)["total"]
    no_ckpt = estimate_qlora_memory(big, 2, 2048, rank, "sft", gradient_checkpointing=False)["total"]
    lines += ["", f"r={rank}; every total includes {estimate_qlora_memory(big, 1, 1, rank)['overhead']:.2f} GiB "
              "CUDA overhead. For Llama-3.1-8B at batch 2 x 2048: DPO with whole (unfused) logits "
              f"{unfused:.1f} GiB; SFT without gradient checkpointing {no_ckpt:.1f} GiB."]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=24.0, help="GPU memory in GiB")
    parser.add_argument("--rank", type=int, default=PAPER.sft.lora.r, help="LoRA rank")
    args = parser.parse_args()
    print(table(args.budget, args.rank))
