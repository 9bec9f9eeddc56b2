"""QLoRA peak memory: Llama-3.1-8B's architecture with random weights, trained as the paper profile trains it.

Builds the model from its config (no download: random weights saved to a temporary folder), loads it
through `porover_lib.models.load_model` in 4-bit nf4 exactly as `params/paper.yaml` asks, runs a few
SFT steps and DPO steps with `porover_lib.training` at the paper profile's batch, length, LoRA and
checkpointing, and prints the measured peak GPU memory next to `porover_lib.memory`'s estimate;
`--headroom` adds batch 2 x 2048, `--stages` the stages that load a model without training it (student
sampling, each judge in bf16).
On a machine without CUDA it runs the same code on a small Llama shape (so the path is exercised)
and says that no GPU memory was measured.

    .venv/bin/python benchmarks/qlora_memory.py            # 8B on a GPU, small shape on a CPU
    .venv/bin/python benchmarks/qlora_memory.py --steps 3 --shape small
    python3 benchmarks/qlora_memory.py --headroom --stages   # what the README's measured table ran on an H200
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from porover_lib.config import load_params  # noqa: E402
from porover_lib.memory import LLAMA_CONFIGS, estimate_qlora_memory  # noqa: E402
from porover_lib.stages import free_memory  # noqa: E402
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
    if shape == "8b":  # materialise straight in bf16 (16 GB; on the GPU when there is one), not 32 GB of fp32
        model = model.to(torch.bfloat16).to_empty(device="cuda" if torch.cuda.is_available() else "cpu")
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    free_memory()
    return dims


def filler(length: int) -> str:
    """An answer of `length` words (at least `length` tokens): random weights care only about its length."""
    return " ".join(f"word{i % 50}" for i in range(length))


def rows_and_pairs(length: int, count: int) -> tuple[list[dict], list[dict]]:
    """SFT rows and DPO pairs whose answers fill about `length` tokens, so the step runs at full length."""
    answer = filler(length)
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                         {"role": "assistant", "content": answer}]} for i in range(count)]
    pairs = [{"prompt": [{"role": "user", "content": f"Question {i}?"}], "role": "seemingly_toxic",
              "chosen": [{"role": "assistant", "content": answer}],
              "rejected": [{"role": "assistant", "content": answer[::-1]}]} for i in range(count)]
    return rows, pairs


def peak(fn) -> tuple[float, float] | None:
    """Peak CUDA memory (GiB) of `fn()`: allocated by tensors, and reserved by PyTorch's caching allocator
    (what the card must hold, less the CUDA context); None without CUDA."""
    if not torch.cuda.is_available():
        fn()
        return None
    free_memory()  # the previous measurement's model must not count in this one
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / GIB, torch.cuda.max_memory_reserved() / GIB


def report(what: str, fn, estimate: float | None = None) -> list[str]:
    """Measure `fn` and print its row at once (an 8B run can be cut short); a failure is printed as the
    row's result, the other rows still run, and `[what]` comes back for the exit status."""
    failed = []
    try:
        measured = peak(fn)
        shown = f"{measured[0]:.2f} GiB | {measured[1]:.2f} GiB" if measured is not None else "not measured | -"
    except Exception as err:  # noqa: BLE001 - reported, and the run exits non-zero
        traceback.print_exc()
        failed, shown = [what], f"failed: {type(err).__name__}: {str(err)[:120]} | -"
    print(f"| {what} | {shown} | {f'{estimate:.2f} GiB' if estimate is not None else '-'} |", flush=True)
    return failed


def judge_params(paper, folder: str, device: str):
    """The paper profile with both judge models (Llama Guard 3 and the reward model, Llama-3.1-8B shapes) swapped
    for the random-weight model in `folder`."""
    judges = {kind: getattr(paper.judges, kind) for kind in ("safety", "reward")}
    judges = {kind: spec.model_copy(update={"model": spec.model.model_copy(update={"name": folder, "device": device})})
              for kind, spec in judges.items()}
    return paper.model_copy(update={"judges": paper.judges.model_copy(update=judges)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["8b", "small"], help="default: 8b with CUDA, small without")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--headroom", action="store_true", help="also SFT and DPO at batch 2 x 2048 tokens")
    parser.add_argument("--stages", action="store_true",
                        help="also the other GPU stages: student sampling (04) and each judge (02, 06)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = args.shape or ("8b" if cuda else "small")
    paper = load_params(ROOT / "params" / "paper.yaml")
    student = paper.student.model_copy(update={"device": device})
    sft = paper.sft.model_copy(update={"max_steps": args.steps, "save_steps": 10_000})
    po = paper.po.model_copy(update={"max_steps": args.steps, "save_steps": 10_000})
    variant_name, variant = next(iter(po.variants.items()))
    sampling = paper.preference.sampling
    if shape == "small":  # the paper's lengths on a small model would still take minutes per step on a CPU
        sft = sft.model_copy(update={"max_length": 256})
        po = po.model_copy(update={"max_length": 256})
        sampling = sampling.model_copy(update={"max_new_tokens": 32})
    quiet = lambda line: None  # noqa: E731
    gpu = f", {torch.cuda.get_device_name()}" if cuda else ""
    print(f"shape {shape}, 4-bit nf4 {student.load_in_4bit}, device {device}{gpu}, {args.steps} training steps each, "
          f"torch {torch.__version__}")
    print("| what | peak allocated | peak reserved | estimate |\n|---|---|---|---|", flush=True)

    def training(method: str, params, batch: int, length: int, folder: Path) -> list[str]:
        params = params.model_copy(update={"batch_size": batch, "max_length": length})
        rows, pairs = rows_and_pairs(length, 4 * batch)
        if method == "sft":
            run = lambda: train_sft(rows, student, params, folder / "sft", seed=0, log=quiet)  # noqa: E731
        else:
            run = lambda: train_po(pairs, student, folder / "sft", variant_name, variant, params,  # noqa: E731
                                   folder / "po", seed=0, log=quiet)
        estimate = estimate_qlora_memory(dims, batch, length, paper.sft.lora.r, method, params.gradient_checkpointing)
        return report(f"{method.upper()} ({'03' if method == 'sft' else '05'}), batch {batch} x {length} tokens",
                      run, estimate["total"])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dims = build(tmp / "model", shape)
        student = student.model_copy(update={"name": str(tmp / "model")})
        failed = training("sft", sft, sft.batch_size, sft.max_length, tmp)
        failed += training("dpo", po, po.batch_size, po.max_length, tmp)
        if args.stages:
            failed += stage_peaks(paper, student, tmp, sampling, device)
        if args.headroom:
            failed += training("sft", sft, 2, 2048, tmp / "headroom")
            failed += training("dpo", po, 2, 2048, tmp / "headroom")
    if failed:
        sys.exit(f"{len(failed)} measurement(s) failed: {', '.join(failed)}")
    if not cuda:
        print("No CUDA device: this run exercised the 4-bit QLoRA path on a small shape; peak GPU memory of the "
              "8B shape was NOT measured.")


def stage_peaks(paper, student, folder: Path, sampling, device: str) -> list[str]:
    """Peaks of the stages that load a model without training it: the 4-bit student with its SFT adapter
    sampling one batch at stage 04's settings (random weights never stop early: every row runs to
    max_new_tokens), and each bf16 judge on a batch of its own size with answers as long as stage 01's."""
    from porover_lib.models import load_tokenizer
    from porover_lib.stages import build_judge, checkpoint_backend

    def sample() -> None:
        backend = checkpoint_backend(student, folder / "sft", "sft")
        prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(max(1, sampling.batch_size // sampling.n))]
        backend.complete(prompts, sampling, seed=0)
        del backend
        free_memory()

    failed = report(f"student sampling (04), {sampling.batch_size} rows x {sampling.max_new_tokens} new tokens", sample)
    params = judge_params(paper, student.name, device)
    tokenizer, length = load_tokenizer(student), paper.overgenerate.sampling.max_new_tokens
    answer = tokenizer.decode(tokenizer(filler(length))["input_ids"][:length])
    for kind in ("safety", "reward"):
        def judge() -> None:
            model = build_judge(params, kind)
            size = getattr(model, "batch_size", 8)
            model.judge([f"Question {i}?" for i in range(size)], [answer] * size)
            del model
            free_memory()

        name = getattr(params.judges, kind).name
        failed += report(f"{kind} judge {name} in bf16 (02, 06), answers of {length} tokens", judge)
    return failed


if __name__ == "__main__":
    main()
