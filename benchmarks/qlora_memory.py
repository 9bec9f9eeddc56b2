"""QLoRA peak memory: Llama-3.1-8B's architecture with random weights, trained as the paper profile trains it.

Builds the model from its config (no download: random weights saved to a temporary folder), loads it
through `porover_lib.models.load_model` in 4-bit nf4 exactly as `params/paper.yaml` asks, runs a few
SFT steps and DPO steps with `porover_lib.training` at the paper profile's batch, length, LoRA and
checkpointing, and prints the measured peak GPU memory next to `porover_lib.memory`'s estimate.
On a machine without CUDA it runs the same code on a small Llama shape (so the path is exercised)
and says that no GPU memory was measured.

    .venv/bin/python benchmarks/qlora_memory.py            # 8B on a GPU, small shape on a CPU
    .venv/bin/python benchmarks/qlora_memory.py --steps 3 --shape small
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from porover_lib.config import load_params  # noqa: E402
from porover_lib.memory import LLAMA_CONFIGS, estimate_qlora_memory  # noqa: E402
from porover_lib.training import train_po, train_sft  # noqa: E402

GIB = 1024**3
SMALL = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, tie_word_embeddings=False)  # vocab: the embedded tokenizer's


def build(folder: Path, shape: str) -> dict:
    """Random-weight Llama of the chosen shape with the embedded (chat-templated) tokenizer, saved to `folder`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import embedded_tokenizer

    tokenizer = embedded_tokenizer()
    dims = dict(LLAMA_CONFIGS["Llama-3.1-8B"]) if shape == "8b" else dict(SMALL, vocab_size=len(tokenizer))
    dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))
    config = LlamaConfig(**dims, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    with torch.device("meta" if shape == "8b" else "cpu"):
        model = LlamaForCausalLM(config)
    if shape == "8b":  # materialise in bf16 shard by shard instead of 32 GB of fp32 at once
        model = model.to_empty(device="cpu").to(torch.bfloat16)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return dims


def rows_and_pairs(length: int, count: int) -> tuple[list[dict], list[dict]]:
    """SFT rows and DPO pairs whose answers fill about `length` tokens, so the step runs at full length."""
    answer = " ".join(f"word{i % 50}" for i in range(length))
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                         {"role": "assistant", "content": answer}]} for i in range(count)]
    pairs = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
              "chosen": [{"role": "assistant", "content": answer}],
              "rejected": [{"role": "assistant", "content": answer[::-1]}]} for i in range(count)]
    return rows, pairs


def peak(fn) -> float | None:
    """Peak CUDA memory (GiB) of `fn()`, or None without CUDA."""
    if not torch.cuda.is_available():
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["8b", "small"], help="default: 8b with CUDA, small without")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    shape = args.shape or ("8b" if cuda else "small")
    paper = load_params(ROOT / "params" / "paper.yaml")
    student = paper.student.model_copy(update={"device": "cuda" if cuda else "cpu"})
    sft = paper.sft.model_copy(update={"max_steps": args.steps, "save_steps": 10_000})
    po = paper.po.model_copy(update={"max_steps": args.steps, "save_steps": 10_000})
    variant_name, variant = next(iter(po.variants.items()))
    if shape == "small":  # the paper's lengths on a small model would still take minutes per step on a CPU
        sft = sft.model_copy(update={"max_length": 256})
        po = po.model_copy(update={"max_length": 256})
    quiet = lambda line: None  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dims = build(tmp / "model", shape)
        student = student.model_copy(update={"name": str(tmp / "model")})
        rows, pairs = rows_and_pairs(sft.max_length, 4 * max(sft.batch_size, po.batch_size))
        sft_peak = peak(lambda: train_sft(rows, student, sft, tmp / "sft", seed=0, log=quiet))
        dpo_peak = peak(lambda: train_po(pairs, student, tmp / "sft", variant_name, variant, po, tmp / "po",
                                         seed=0, log=quiet))

    print(f"shape {shape}, 4-bit nf4 {student.load_in_4bit}, device {student.device}, {args.steps} steps each, "
          f"torch {torch.__version__}")
    for method, params, measured in (("sft", sft, sft_peak), ("dpo", po, dpo_peak)):
        estimate = estimate_qlora_memory(dims, params.batch_size, params.max_length, paper.sft.lora.r, method,
                                         params.gradient_checkpointing)
        shown = f"{measured:6.2f} GiB measured" if measured is not None else "no GPU: not measured"
        print(f"{method:>4}: batch {params.batch_size} x {params.max_length} tokens: {shown}; "
              f"estimate {estimate['total']:6.2f} GiB ({'8B' if shape == '8b' else 'small shape'})")
    if not cuda:
        print("No CUDA device: this run exercised the 4-bit QLoRA path on a small shape; peak GPU memory of the "
              "8B shape was NOT measured.")


if __name__ == "__main__":
    main()
