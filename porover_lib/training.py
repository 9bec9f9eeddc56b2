"""Stage 03 (SFT / DeRTa) and stage 05 (DPO-family) training: TRL trainers on a (Q)LoRA student.

* `train_sft` -- TRL `SFTTrainer` + PEFT LoRA. Standard rows become conversational prompt/completion
  pairs, so TRL's `completion_only_loss` puts the loss on the assistant turn only (SmolLM2's ChatML
  template has no `{% generation %}` markers, which `assistant_only_loss` needs). DeRTa rows enter as a
  pre-tokenised `input_ids`/`labels` dataset (see `derta.py`), padded by TRL's collator.
* `train_po` -- TRL `DPOTrainer` continuing the SFT adapter. Reference = the SFT policy, without a
  second model: given a `PeftModel` that already carries an adapter and no `ref_model`, TRL 1.16
  copies that adapter into a frozen adapter named "ref" on the same base and runs the reference forward
  through it (`DPOTrainer.__init__`, `use_adapter`). The extra memory is one LoRA adapter. TRL's other
  PEFT default -- adapters disabled -- would be the pre-SFT base, the wrong reference here.
  With `po.precompute_ref_log_probs` (default) that reference scores every pair once before training
  instead of once per step.
* QLoRA when `student.load_in_4bit`: nf4 + double quantisation + bf16 compute (`models.load_model`),
  `peft.prepare_model_for_kbit_training`, paged 8-bit AdamW on CUDA (plain AdamW on CPU, logged).

Runs checkpoint to `<output_dir>/checkpoints` every `save_steps` and resume from there when
re-run with the same settings; the folder is removed once the final adapter is saved.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import LoraParams, ModelParams, POParams, POVariantParams, SFTParams
from .cpu_scoring import forward_halves_unpadded, use_cpu_scoring
from .derta import build_derta_examples, labelled_tokens, mle_example, split_row
from .openings import cut_example, cut_pair
from .selection import cap_share
from .models import load_model, load_tokenizer, pick_device

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """What a training run left behind; `seconds_per_step` = train_runtime / global_step."""

    output_dir: Path
    log_history: list[dict]
    train_runtime: float
    steps: int
    seconds_per_step: float
    extra: dict = field(default_factory=dict)


SFTResult = TrainResult
POResult = TrainResult


def versions() -> dict[str, str]:
    """Installed versions of the training stack, recorded in params.json (their APIs move fast)."""
    out = {}
    for pkg in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def lora_config(lora: LoraParams):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def _is_4bit(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))


def under_fsdp() -> bool:
    """Whether this process is a rank of `accelerate launch` with an FSDP config (params/accelerate/fsdp.yaml)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _prepare_base(model, student: ModelParams, gradient_checkpointing: bool, log: Log):
    """QLoRA's preparation of a 4-bit base (fp32 norms, input grads, checkpointing); no-op otherwise.

    Under FSDP the base stays in one dtype (FSDP-QLoRA): PEFT's preparation would cast every non-4-bit weight
    to fp32 beside the bf16-stored 4-bit ones, and FSDP cannot shard such a mix; the base is frozen instead."""
    if not _is_4bit(model):
        return model
    if under_fsdp():
        log(f"QLoRA under FSDP: {student.name} in 4-bit nf4 stored as bf16, the rest kept in bf16")
        for param in model.parameters():
            param.requires_grad = False
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        return model
    from peft import prepare_model_for_kbit_training

    log(f"QLoRA: {student.name} in 4-bit nf4 (double quant, bf16 compute)")
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def _precision_and_optim(model, student: ModelParams, log: Log) -> dict:
    """Trainer precision and optimiser from the loaded model: bf16 autocast for bf16/4-bit models."""
    device = pick_device(student)
    quantised = _is_4bit(model)
    dtype = model.dtype
    kwargs = {"bf16": quantised or dtype == torch.bfloat16, "fp16": dtype == torch.float16 and not quantised,
              "use_cpu": device == "cpu", "optim": "adamw_torch"}
    if quantised:
        if device == "cuda":
            kwargs["optim"] = "paged_adamw_8bit"
        else:
            log("QLoRA on CPU: paged 8-bit AdamW needs CUDA, using adamw_torch instead")
    return kwargs


def _common_args(params: SFTParams | POParams, seed: int, ckpt_dir: Path) -> dict:
    return dict(**params.trl,
        output_dir=str(ckpt_dir), per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum, learning_rate=params.learning_rate,
        num_train_epochs=params.epochs, max_steps=params.max_steps, max_length=params.max_length,
        activation_checkpointing=params.gradient_checkpointing, logging_steps=1, save_strategy="steps",
        save_steps=params.save_steps, save_total_limit=1, report_to="none", seed=seed, data_seed=seed,
        disable_tqdm=True,
    )


def _log_callback(log: Log):
    """A TrainerCallback forwarding the trainer's log lines (loss, rewards) to `log`."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()}
                log(f"step {state.global_step}/{state.max_steps}: {shown}")

    return LogCallback()


def _data_hash(rows: list[dict]) -> str:
    """Fingerprint of the training data, so a checkpoint is only resumed on the same data."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume_point(ckpt_dir: Path, run_key: dict, log: Log) -> str | None:
    """The last checkpoint of an interrupted run with the same settings; stale checkpoints are removed."""
    from transformers.trainer_utils import get_last_checkpoint

    stamp = ckpt_dir / "run.json"
    key = json.dumps(run_key, sort_keys=True, default=str)
    if ckpt_dir.is_dir():
        last = get_last_checkpoint(str(ckpt_dir))
        if last and stamp.is_file() and stamp.read_text() == key:
            log(f"resuming from {last}")
            return last
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    stamp.write_text(key)
    return None


def _run(trainer, output_dir: Path, ckpt_dir: Path, run_key: dict, record: dict, tokenizer,
         log: Log, adapters: list[str] | None = None) -> TrainResult:
    """Train (resuming if possible), save adapter + tokenizer + params.json + log_history.json."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # `log` shows the progress instead
    resume = _resume_point(ckpt_dir, run_key, log)
    out = trainer.train(resume_from_checkpoint=resume)
    steps = trainer.state.global_step
    runtime = float(out.metrics.get("train_runtime", 0.0))  # this session only, when resumed
    timed_steps = steps - (int(Path(resume).name.rsplit("-", 1)[-1]) if resume else 0)
    trainer.model.save_pretrained(output_dir, selected_adapters=adapters)
    tokenizer.save_pretrained(output_dir)
    history = trainer.state.log_history
    seconds = runtime / timed_steps if timed_steps else float("nan")
    record = {**record, "steps": steps, "train_runtime": runtime, "seconds_per_step": seconds,
              "versions": versions()}
    (output_dir / "params.json").write_text(json.dumps(record, indent=2, default=str))
    (output_dir / "log_history.json").write_text(json.dumps(history, indent=2))
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    log(f"saved {output_dir}: {steps} steps in {runtime:.1f} s ({seconds:.2f} s/step)")
    return TrainResult(Path(output_dir), history, runtime, steps, seconds)


def _sft_dataset(rows: list[dict], tokenizer, params: SFTParams, seed: int,
                 stop_ids: set[int] = frozenset()) -> tuple[object, dict[str, int] | None]:
    """Prompt/completion rows (standard) or pre-tokenised input_ids/labels (DeRTa, or answers cut to their
    openings: `opening_tokens`, where RTO examples keep their labels), and for the latter the labelled tokens
    per kind of example: what shares the loss."""
    from datasets import Dataset

    if not rows:
        raise ValueError("train_sft: no training rows")
    if params.objective == "derta" or params.opening_tokens:
        examples = (build_derta_examples(rows, tokenizer, params, seed) if params.objective == "derta" else
                    [{**mle_example(tokenizer, *split_row(row)), "kind": "sft"} for row in rows])
        if params.opening_tokens:
            examples = [e if e["kind"] == "rto" else cut_example(e, params.opening_tokens, stop_ids) for e in examples]
        dataset = Dataset.from_list([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        return dataset, labelled_tokens(examples)
    pairs = []
    for row in rows:
        prompt, answer = split_row(row)
        pairs.append({"prompt": prompt, "completion": [{"role": "assistant", "content": answer}]})
    return Dataset.from_list(pairs), None


def build_sft_trainer(rows: list[dict], student: ModelParams, params: SFTParams, output_dir: str | Path,
                      seed: int, log: Log = print, model=None, tokenizer=None):
    """The configured SFTTrainer (LoRA/QLoRA, standard or DeRTa data) and the run record, untrained."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    use_cpu_scoring()
    tokenizer = tokenizer or load_tokenizer(student)
    model = model if model is not None else load_model(student)
    model = _prepare_base(model, student, params.gradient_checkpointing, log)
    from .generation import stop_token_ids

    dataset, labelled = _sft_dataset(rows, tokenizer, params, seed, set(stop_token_ids(model, tokenizer)))
    pretokenised = params.objective == "derta" or params.opening_tokens is not None
    args = SFTConfig(**_common_args(params, seed, Path(output_dir) / "checkpoints"),
                     **_precision_and_optim(model, student, log),
                     warmup_steps=params.warmup_ratio, completion_only_loss=not pretokenised)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora_config(params.lora), callbacks=[_log_callback(log)])
    log(f"SFT ({params.objective}): {len(dataset)} examples from {len(rows)} rows, "
        f"{trainer.get_num_trainable_parameters():,} trainable parameters")
    if labelled:
        log("labelled tokens: " + ", ".join(f"{kind} {n:,} ({n / sum(labelled.values()):.0%})"
                                              for kind, n in labelled.items()))
    record = {"stage": "sft", "seed": seed, "student": student.model_dump(), "sft": params.model_dump(),
              "n_rows": len(rows), "n_examples": len(dataset), "labelled_tokens": labelled, "data_hash": _data_hash(rows),
              "optim": args.optim, "bf16": args.bf16, "device": str(args.device)}
    return trainer, record


def train_sft(rows: list[dict], student: ModelParams, params: SFTParams, output_dir: str | Path, seed: int,
              log: Log = print, model=None, tokenizer=None) -> TrainResult:
    """(Q)LoRA SFT of the student with TRL's SFTTrainer; loss on the assistant's tokens only.

    `model`/`tokenizer` skip loading the student (tests pass a tiny model). Writes the adapter,
    tokenizer, params.json and log_history.json to `output_dir`.
    """
    output_dir = Path(output_dir)
    trainer, record = build_sft_trainer(cap_share(rows, "harmful", params.harmful_share, seed), student, params,
                                        output_dir, seed, log, model, tokenizer)
    run_key = {k: record[k] for k in ("seed", "student", "sft", "data_hash")}
    return _run(trainer, output_dir, output_dir / "checkpoints", run_key, record, trainer.processing_class, log)


def _load_with_adapter(student: ModelParams, adapter_dir: Path, trainable: bool, gradient_checkpointing: bool,
                       log: Log, model=None):
    """Base model (loaded, or the one given) with the adapter in `adapter_dir` as adapter "default"."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no LoRA adapter (adapter_config.json) -- run SFT first")
    base = model if model is not None else load_model(student)
    if trainable:
        base = _prepare_base(base, student, gradient_checkpointing, log)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def build_po_trainer(pairs: list[dict], student: ModelParams, sft_dir: str | Path, variant_name: str,
                     variant: POVariantParams, params: POParams, output_dir: str | Path, seed: int,
                     log: Log = print, model=None, tokenizer=None):
    """The configured DPOTrainer on base + SFT adapter (reference: its frozen "ref" copy), untrained."""
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    if variant.pair_roles is not None:
        pairs = [p for p in pairs if p["role"] in variant.pair_roles]
    if not pairs:
        roles = f" whose prompt role is one of pair_roles {variant.pair_roles}" if variant.pair_roles else ""
        raise ValueError(f"train_po[{variant_name}]: no preference pairs{roles}")
    if variant.learning_rate is not None:
        params = params.model_copy(update={"learning_rate": variant.learning_rate})
    set_seed(seed)
    use_cpu_scoring()
    sft_dir = Path(sft_dir)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(sft_dir)
    model = _load_with_adapter(student, sft_dir, True, params.gradient_checkpointing, log, model)
    dataset = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    args = DPOConfig(**_common_args(params, seed, Path(output_dir) / "checkpoints"),
                     **_precision_and_optim(model, student, log),
                     loss_type=list(variant.loss_type), loss_weights=variant.loss_weights, beta=variant.beta,
                     label_smoothing=variant.label_smoothing,
                     precompute_ref_log_probs=params.precompute_ref_log_probs)
    from .generation import stop_token_ids

    trainer_class = DPOTrainer if params.opening_tokens is None else _openings_dpo_trainer(
        params.opening_tokens, set(stop_token_ids(model, tokenizer)))
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            callbacks=[_log_callback(log)])
    forward_halves_unpadded(trainer.model.get_base_model())
    if "ref" not in trainer.model.peft_config:
        raise RuntimeError("DPOTrainer did not create the frozen 'ref' copy of the SFT adapter; the reference "
                           "would be the pre-SFT base model. Check the installed TRL/PEFT versions.")
    log(f"PO[{variant_name}] {variant.loss_type} beta={variant.beta}: {len(dataset)} pairs, reference = "
        f"frozen copy of the SFT adapter {sft_dir}")
    record = {"stage": "po", "variant": variant_name, "seed": seed, "student": student.model_dump(),
              "sft_dir": str(sft_dir), "po": params.model_dump(exclude={"variants"}),
              "variant_params": variant.model_dump(), "n_pairs": len(pairs), "data_hash": _data_hash(pairs),
              "optim": args.optim, "bf16": args.bf16, "device": str(args.device),
              "reference": "frozen copy of the SFT adapter"}
    return trainer, record


def _openings_dpo_trainer(k: int, stop_ids: set[int]):
    """TRL's DPOTrainer whose tokenised pairs are cut to their openings (openings.cut_pair) as soon as TRL has
    tokenised them, before the reference pass, so the reference scores the same cut completions."""
    from trl import DPOTrainer

    class OpeningsDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return dataset.map(cut_pair, fn_kwargs={"k": k, "stop_ids": stop_ids})

    return OpeningsDPOTrainer


def train_po(pairs: list[dict], student: ModelParams, sft_dir: str | Path, variant_name: str,
             variant: POVariantParams, params: POParams, output_dir: str | Path, seed: int,
             log: Log = print, model=None, tokenizer=None) -> TrainResult:
    """DPO-family preference optimisation with TRL's DPOTrainer, continuing the SFT adapter.

    The reference is the SFT policy itself: TRL copies the loaded SFT adapter into a frozen "ref"
    adapter on the same base (see the module docstring), so no second model is held. `loss_type`,
    `loss_weights`, `beta`, `label_smoothing` come from the variant. `model` is an optional
    already-loaded *base* model (without adapter); the tokenizer defaults to the one saved with SFT.
    Only the trained adapter ("default") is saved to `output_dir`.
    """
    output_dir = Path(output_dir)
    trainer, record = build_po_trainer(pairs, student, sft_dir, variant_name, variant, params, output_dir, seed,
                                       log, model, tokenizer)
    run_key = {k: record[k] for k in ("variant", "seed", "student", "sft_dir", "po", "variant_params", "data_hash")}
    result = _run(trainer, output_dir, output_dir / "checkpoints", run_key, record, trainer.processing_class, log,
                  adapters=["default"])
    result.extra["variant"] = variant_name
    return result


def load_trained(student: ModelParams, adapter_dir: str | Path, merge: bool = True):
    """(model, tokenizer) for generation: the student with the adapter in `adapter_dir`, in eval mode.

    Merged by default (plain matmuls, faster on CPU); a 4-bit base stays unmerged, since merging
    would re-quantise the LoRA update. The tokenizer is the one saved with the adapter (left padding).
    """
    from transformers import AutoTokenizer

    adapter_dir = Path(adapter_dir)
    model = _load_with_adapter(student, adapter_dir, trainable=False, gradient_checkpointing=False, log=print)
    if merge and not student.load_in_4bit:
        model = model.merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer
