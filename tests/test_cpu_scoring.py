"""The CPU scoring speed-ups give TRL's numbers: log-probabilities, logged statistics and gradients."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from trl.trainer import utils as trl_utils

from porover_lib.config import ModelParams, POParams, POVariantParams
from porover_lib.cpu_scoring import PlainLogProbs, forward_halves_unpadded, plain_head_on_cpu
from porover_lib.training import build_po_trainer
from test_training import FP32_CPU, PAIRS, QUIET, sft_dir, tiny_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def trl_kernel():
    plain_head_on_cpu(False)
    return trl_utils._ChunkedLogProbFunction


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_plain_head_matches_trls_tiled_kernel(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(37, 24, dtype=dtype, requires_grad=True)
    weight = torch.randn(1000, 24, dtype=dtype)
    targets = torch.randint(0, 1000, (37,))
    targets[0] = int((hidden[0].detach() @ weight.t()).float().argmax())  # one certain top-1
    try:
        tiled = trl_kernel().apply(hidden, weight, None, targets, 0.7, 256, None, 1.0, OUTPUTS)
    finally:
        plain_head_on_cpu(True)
    plain = PlainLogProbs.apply(hidden, weight, None, targets, 0.7, 256, None, 1.0, OUTPUTS)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in ((tiled[0], plain[0]), (tiled[1], plain[1]), (tiled[3], plain[3])):
        torch.testing.assert_close(b, a, **tol)
    assert torch.equal(tiled[4], plain[4]) and bool(plain[4][0])
    weights = torch.randn(37)
    grads = [torch.autograd.grad((out[0] * weights).sum(), hidden)[0].float() for out in (tiled, plain)]
    assert (grads[1] - grads[0]).norm() / grads[0].norm() < (1e-4 if dtype == torch.float32 else 2e-2)


def test_plain_head_leaves_a_trained_head_and_entropy_losses_to_trl():
    plain_head_on_cpu(True)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)  # full fine-tuning: the head needs its gradient
    out = trl_utils._ChunkedLogProbFunction.apply(hidden, weight, None, torch.zeros(5, dtype=torch.long), 1.0, 16,
                                                  None, 1.0, ("log_probs",))
    out[0].sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    frozen = PlainLogProbs.apply(hidden, weight.detach(), None, torch.zeros(5, dtype=torch.long), 1.0, 16, None,
                                 1.0, OUTPUTS)
    with pytest.raises(NotImplementedError, match="plain_head_on_cpu"):
        frozen[1].sum().backward()


def test_halves_run_apart_with_the_same_scores_and_gradients(tiny_dir, sft_dir, tmp_path):
    student = ModelParams(name=str(tiny_dir), **FP32_CPU)
    pairs = [dict(p, chosen=[{"role": "assistant", "content": p["chosen"][0]["content"] * (4 if i % 2 else 1)}])
             for i, p in enumerate(PAIRS)]  # chosen answers of different lengths: each half pads differently
    trainer, _ = build_po_trainer(pairs, student, sft_dir, "po", POVariantParams(), POParams(batch_size=4),
                                  tmp_path, seed=0, log=QUIET)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    lengths = batch["attention_mask"].sum(1)
    assert lengths[:4].max() != lengths[4:].max()  # one half is trimmed
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    base, model = trainer.model.get_base_model(), trainer.model

    def score():
        model.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out, [p.grad.clone() for p in model.parameters() if p.requires_grad]

    halves, halves_grads = score()
    assert batch["input_ids"].shape[0] == 8 and halves.log_probs.shape == labels[:, 1:].shape
    base.forward = base.forward.whole_batch  # TRL's forward on the whole padded batch
    whole, whole_grads = score()
    torch.testing.assert_close(halves.log_probs, whole.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(halves.entropy, whole.entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(halves.label_mask, whole.label_mask) and torch.equal(halves.is_top1, whole.is_top1)
    assert halves.loss.item() == pytest.approx(whole.loss.item(), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(halves_grads, whole_grads))
