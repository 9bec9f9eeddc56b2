"""Cheaper scoring of completions in TRL's trainers (stages 03 and 05): the same losses, less work.

TRL 1.16 scores completions through a fused LM head written for GPUs (`trl.trainer.utils.add_fused_lm_head`).
On a CPU that head costs more than the 135M model under it; three changes, each tested to keep the
log-probabilities and gradients (`benchmarks/train_throughput.py` measures them):

* `score_labelled_positions_only`: off-GPU TRL scores every position and masks prompt and padding afterwards.
* `plain_head_on_cpu`: TRL's CPU fallback folds each 32k-vocabulary tile in a dozen fp32 passes and
  accumulates the gradient with an fp32 matmul. With a frozen head (LoRA), one bf16 matmul, one softmax kept
  for the backward and one bf16 matmul back give the same numbers 2.7x faster, holding tokens x vocab fp32
  probabilities until the backward (400 MB for SFT's 8 x 256 tokens on the embedded model).
* `forward_halves_unpadded`: a DPO batch stacks the chosen rows over the rejected ones, all padded to the longest
  of both; a long compliance pads every short refusal beside it. Each half runs trimmed to its own longest row.
"""
from __future__ import annotations

import torch

_HEAD_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def score_labelled_positions_only(enabled: bool = True) -> None:
    """Make TRL's fused LM head score only labelled positions on every device, as it does on CUDA.

    Off-GPU, TRL 1.16 scores every position (fixed tile shapes for compiled backends such as Neuron)
    and masks the prompt and padding afterwards: on CPU that is a third of an SFT step spent on
    log-probabilities, entropies and top-1 flags nobody reads. The losses are identical either way
    (tests/test_training.py checks it); `enabled=False` restores TRL's choice (the benchmark's baseline).
    """
    from trl.trainer import utils

    if not hasattr(utils, "_use_triton"):
        return  # a TRL without the switch: its own choice stands
    if not hasattr(utils, "_trl_use_triton"):
        utils._trl_use_triton = utils._use_triton
    utils._use_triton = (lambda device: device.type in ("cpu", "cuda", "xpu")) if enabled else utils._trl_use_triton


class PlainLogProbs(torch.autograd.Function):
    """TRL's `ChunkedLogProbFunction` (same arguments and outputs) for a frozen head on a CPU, untiled."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
                outputs=("log_probs",)):
        ctx.set_materialize_grads(False)
        scale = logit_scale / temperature
        logits = hidden @ weight.to(hidden.dtype).t()  # bf16, as TRL's tiles are
        z = logits.to(torch.float32, copy=True).mul_(scale)
        log_z = z.logsumexp(-1)
        target = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        p = z.sub_(log_z.unsqueeze(-1)).exp_()  # in place: z becomes log p, then p
        entropy = mean_logits = is_top1 = None
        if "entropy" in outputs:
            entropy = log_z - (p * logits.float()).sum(-1) * scale
        if "mean_logits" in outputs:
            mean_logits = logits.float().mean(-1) * scale
        if "is_top1" in outputs:  # argmax takes the first maximum: a tie with an earlier token is no top-1, as in TRL
            is_top1 = logits.argmax(-1) == targets
        ctx.save_for_backward(hidden, weight, targets, p)
        ctx.scale = scale
        ctx.mark_non_differentiable(*(x for x in (mean_logits, is_top1) if x is not None))
        return target - log_z, entropy, None, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        if grad_entropy is not None:
            raise NotImplementedError("PlainLogProbs has no entropy gradient: call "
                                      "porover_lib.cpu_scoring.plain_head_on_cpu(False) for a loss on the entropy")
        hidden, weight, targets, p = ctx.saved_tensors
        if grad_log_probs is None:
            return (None,) * 9
        g = grad_log_probs.float().unsqueeze(-1)
        grad = p.mul_(-g).scatter_add_(-1, targets.unsqueeze(-1), g)  # d log p_target / dz = 1[target] - p
        grad_hidden = grad.mul_(ctx.scale).to(hidden.dtype) @ weight.to(hidden.dtype)
        return (grad_hidden,) + (None,) * 8


class _HeadDispatch:
    """Stands in for TRL's kernel class: `PlainLogProbs` where it applies, TRL's kernel everywhere else."""

    def __init__(self, trl_kernel):
        self.trl_kernel = trl_kernel

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("log_probs",)):
        plain = (hidden.device.type == "cpu" and bias is None and softcap is None and not weight.requires_grad
                 and set(outputs) <= {"log_probs", "entropy", "mean_logits", "is_top1"})
        kernel = PlainLogProbs if plain else self.trl_kernel
        return kernel.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs)


def plain_head_on_cpu(enabled: bool = True) -> None:
    """Route TRL's fused-head scoring of CPU tensors through `PlainLogProbs`; `enabled=False` restores TRL's."""
    from trl.trainer import utils

    current = getattr(utils, "_ChunkedLogProbFunction", None)
    if current is None:
        return  # a TRL without the fused head: nothing to replace
    trl_kernel = current.trl_kernel if isinstance(current, _HeadDispatch) else current
    utils._ChunkedLogProbFunction = _HeadDispatch(trl_kernel) if enabled else trl_kernel


def use_cpu_scoring(enabled: bool = True) -> None:
    """Both global switches of this module for TRL's trainers; `enabled=False` restores TRL's scoring."""
    score_labelled_positions_only(enabled)
    plain_head_on_cpu(enabled)


def forward_halves_unpadded(model) -> None:
    """Patch a model's fused forward so the chosen and rejected halves of a DPO batch run apart, each trimmed.

    Right padding only (TRL's DPO collator): trailing columns that are padding in every row of a half are
    dropped, which changes no score under a causal mask. Outputs are padded back to the batch's width.
    """
    if getattr(model.config.get_text_config(), "output_router_logits", False):
        return  # a mixture of experts adds a router loss over the whole batch: left as TRL runs it
    fused = model.forward

    def forward(*args, fused_lm_head=False, **kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if (not fused_lm_head or args or ids is None or mask is None or ids.shape[0] % 2
                or kwargs.get("shift_labels") is not None):
            return fused(*args, fused_lm_head=fused_lm_head, **kwargs)
        half, width = ids.shape[0] // 2, ids.shape[1]
        parts = []
        for rows in (slice(0, half), slice(half, None)):
            keep = int(mask[rows].sum(1).max())
            if bool(mask[rows, keep:].any()):  # padded on the left: keep every column
                keep = width
            trimmed = {k: v[rows, :keep] if torch.is_tensor(v) and v.shape == ids.shape else v
                       for k, v in kwargs.items()}
            parts.append(fused(fused_lm_head=True, **trimmed))

        def joined(name):
            values = [getattr(part, name) for part in parts]
            if values[0] is None:
                return None
            return torch.cat([torch.nn.functional.pad(v, (0, width - 1 - v.shape[1])) for v in values])

        out = {name: joined(name) for name in _HEAD_FIELDS}
        out["loss"] = -out["log_probs"].sum() / out["label_mask"].sum().clamp(min=1)
        return type(parts[0])(**out, aux_loss=None)

    forward.whole_batch = fused  # the forward it wraps, for comparisons
    model.forward = forward
