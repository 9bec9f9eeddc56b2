"""Train throughput: SFT and DPO-family steps on the embedded model, before against after, in one run.

Both settings train the real SmolLM2-135M-Instruct (bf16, LoRA) at the default profile's shapes
(SFT batch 8, DPO batch 4, max_length 256) on the same data: the base model's own greedy answers to
embedded general prompts, and the team's written refusals for harmful ones (SFT), paired against each
other for seemingly-toxic prompts (DPO). "before" is the training code as it was (sdpa attention,
LoRA dropout 0.05, TRL's fused head scoring every position off-GPU, length-mixed batches, a reference
forward in every DPO step, chosen and rejected padded together); "after" is what the default profile runs
now (eager attention, no LoRA dropout, `porover_lib.cpu_scoring`: labelled positions only through an untiled
head, DPO halves trimmed apart; length-grouped SFT batches, reference log-probabilities computed once
before training, its time reported as setup). Train tokens/s counts the non-padding tokens of the batches the
timed steps consumed (the first step is left out as warm-up); the FLOP share is 4 x (matmul
parameters) x tokens (LoRA's forward and input-gradient backward; + 2 x for a DPO reference forward)
against a bf16 matmul measured on this CPU. Quality: each run's loss on all its training examples after
the timed steps (the settings see batches in different orders, so step-by-step losses differ), and
the loss curves side by side (outputs/bench/train_loss.png).

    .venv/bin/python benchmarks/train_throughput.py --steps 12
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from porover_lib.config import LoraParams, ModelParams, POParams, POVariantParams, SamplingParams, SFTParams
from porover_lib.backends import record_messages
from porover_lib.cpu_scoring import use_cpu_scoring
from porover_lib.generation import HFBackend
from porover_lib.models import load_model, load_tokenizer
from porover_lib.prompts import load_embedded
from porover_lib.training import build_po_trainer, build_sft_trainer

STUDENT = ModelParams(name="embedded:smollm2-135m-instruct", dtype="bfloat16", device="cpu")
OUT = Path("outputs/bench")
WORK = Path(tempfile.mkdtemp(prefix="train_throughput-"))  # adapters and trainer checkpoints

# The two settings compared: (student, SFT params overrides, PO params overrides, porover_lib.cpu_scoring on)
BEFORE = (STUDENT, {"lora": LoraParams(r=16, alpha=32, dropout=0.05)}, {"precompute_ref_log_probs": False}, False)
AFTER = (STUDENT.model_copy(update={"attn_implementation": "eager"}),
         {"lora": LoraParams(r=16, alpha=32, dropout=0.0), "trl": {"train_sampling_strategy": "group_by_length"}},
         {"precompute_ref_log_probs": True}, True)


def matmul_flops(size: int = 2048, repeats: int = 10, dtype: torch.dtype = torch.bfloat16) -> float:
    """FLOP/s of a large matmul on this CPU (bf16: the practical limit a training step is held against)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def build_data(n_general: int, n_harmful: int, n_toxic: int) -> tuple[list[dict], list[dict]]:
    """SFT rows and DPO pairs from embedded prompts: greedy base answers, written refusals."""
    model, tokenizer = load_model(STUDENT), load_tokenizer(STUDENT)
    backend = HFBackend(model, tokenizer)
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=96, batch_size=32)
    general = [r for r in load_embedded("general") if r.split == "train"][:n_general]
    harmful = [r for r in load_embedded("harmful") if r.split == "train"][:n_harmful]
    toxic = [r for r in load_embedded("seemingly_toxic") if r.split == "train"][:n_toxic]
    answers = backend.generate(general + toxic, greedy, seed=0)
    sft = [{"messages": record_messages(r) + [{"role": "assistant", "content": a[0].text}]}
           for r, a in zip(general, answers)]
    sft += [{"messages": record_messages(r) + [{"role": "assistant", "content": r.references[0]}]} for r in harmful]
    refusals = [ref for r in harmful for ref in r.references]
    pairs = [{"prompt": record_messages(r), "chosen": [{"role": "assistant", "content": a[0].text}],
              "rejected": [{"role": "assistant", "content": refusals[i % len(refusals)]}]}
             for i, (r, a) in enumerate(zip(toxic, answers[len(general):]))]
    return sft, pairs


class StepClock:
    """Wall time of each optimiser step (a TrainerCallback)."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter() - clock.started)

        self.times: list[float] = []
        self.callback = _Clock()


def run(kind: str, setting: tuple, sft_rows: list[dict], pairs: list[dict], steps: int, sft_dir: Path) -> dict:
    """Train `steps` steps of one kind under one setting: step times, tokens per batch, losses, setup time."""
    student, sft_over, po_over, cpu_scoring = setting
    clock, out = StepClock(), WORK / f"{kind}-{'after' if cpu_scoring else 'before'}"
    started = time.perf_counter()
    if kind == "sft":
        params = SFTParams(epochs=3, learning_rate=3e-4, batch_size=8, max_length=256, max_steps=steps,
                           save_steps=10_000, **sft_over)
        trainer, _ = build_sft_trainer(sft_rows, student, params, out, seed=0, log=lambda m: None)
    else:
        params = POParams(epochs=2, learning_rate=5e-5, batch_size=4, max_length=256, max_steps=steps,
                          save_steps=10_000, **po_over)
        trainer, _ = build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(loss_type=["nca_pair"]),
                                      params, out, seed=0, log=lambda m: None)
    setup = time.perf_counter() - started  # includes the reference pass when it is precomputed
    use_cpu_scoring(cpu_scoring)  # building the trainer set the library's choice
    base = trainer.model.get_base_model()
    if not cpu_scoring and hasattr(base.forward, "whole_batch"):
        base.forward = base.forward.whole_batch  # chosen and rejected in one padded forward again
    collate, tokens = trainer.data_collator, []

    def counting(features):
        batch = collate(features)
        tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel())
        return batch

    trainer.data_collator = counting
    trainer.add_callback(clock.callback)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trainer.data_collator = collate
    # the order of batches differs between the settings, so quality is compared on all examples after training
    examples = trainer.train_dataset  # TRL adds reference columns to an eval set itself, and refuses a second set
    examples = examples.remove_columns([c for c in ("ref_chosen_logps", "ref_rejected_logps") if c in examples.column_names])
    final = trainer.evaluate(examples)["eval_loss"]
    return {"times": clock.times, "tokens": tokens[:len(clock.times)], "losses": losses, "setup_s": setup,
            "final_loss_all_examples": final}


def report(kind: str, before: dict, after: dict, peak: float, matmul_params: float) -> float:
    """Print s/step, train tokens/s and the FLOP share of each setting; return the tokens/s ratio."""
    rates = []
    for label, r in (("before", before), ("after", after)):
        seconds, tokens = sum(r["times"][1:]), sum(r["tokens"][1:])
        flops = (6 if kind == "dpo" and label == "before" else 4) * matmul_params * tokens
        rates.append(tokens / seconds)
        print(f"{kind:>4} {label:>6}: {seconds / len(r['times'][1:]):6.2f} s/step  {tokens / seconds:7.1f} train tok/s  "
              f"{100 * flops / seconds / peak:5.1f}% of bf16 matmul peak  (setup {r['setup_s']:5.1f} s)", flush=True)
    print(f"{kind:>4}  ratio: {rates[1] / rates[0]:.2f}x train tokens/s", flush=True)
    return rates[1] / rates[0]


def plot(curves: dict) -> Path:
    from porover_lib.figures import figure, finish

    fig, axes = figure((10, 3.5), ncols=2)
    for ax, kind in zip(axes, ("sft", "dpo")):
        for label in ("before", "after"):
            losses = curves[kind][label]
            ax.plot(range(1, len(losses) + 1), losses, label=label, marker=".")
        ax.set(title=f"{kind.upper()} loss, same data and seed", xlabel="optimiser step", ylabel="training loss (nats)")
        ax.legend()
    path = OUT / "train_loss.png"
    finish(fig, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per setting and kind (the first is warm-up)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    peak = matmul_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 matmul {peak / 1e9:.0f} GFLOP/s")
    sft_rows, pairs = build_data(48, 72, 48)
    model = load_model(STUDENT)
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n)
    matmul_params += model.get_output_embeddings().weight.numel()  # the tied head is a matmul per token
    del model

    # an SFT adapter for DPO to continue from, as stage 05 does
    sft_dir = WORK / "sft-adapter"
    adapter = build_sft_trainer(sft_rows, STUDENT, SFTParams(max_steps=1, batch_size=8, max_length=256),
                                sft_dir, seed=0, log=lambda m: None)[0]
    adapter.train()
    adapter.model.save_pretrained(sft_dir)
    adapter.processing_class.save_pretrained(sft_dir)

    results = {}
    for kind in ("sft", "dpo"):
        before = run(kind, BEFORE, sft_rows, pairs, args.steps, sft_dir)
        after = run(kind, AFTER, sft_rows, pairs, args.steps, sft_dir)
        results[kind] = {"ratio": report(kind, before, after, peak, matmul_params), "before": before, "after": after}
        print(f"{kind:>4}   loss on all training examples after {args.steps} steps: before "
              f"{before['final_loss_all_examples']:.4f}, after {after['final_loss_all_examples']:.4f}", flush=True)
    print(f"loss curves: {plot({k: {s: results[k][s]['losses'] for s in ('before', 'after')} for k in ('sft', 'dpo')})}")
    (OUT / "train_throughput.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
