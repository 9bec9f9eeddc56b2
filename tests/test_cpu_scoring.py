"""The untiled CPU head gives TRL's numbers: log-probabilities, logged statistics and gradients.

The other two speed-ups need a trainer on a tiny model: their tests are in test_training.py."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from trl.trainer import utils as trl_utils

from porover_lib.cpu_scoring import PlainLogProbs, plain_head_on_cpu

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
