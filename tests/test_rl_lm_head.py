"""rl.grpo.lm_head: the dense CPU stand-in for TRL's fused LM head gives TRL's outputs and gradients, and training
through it gives TRL's losses."""

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from rl.grpo import lm_head
from rl.grpo import seam as trl_seam

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("temperature,softcap,scale,bias", [(1.0, None, 1.0, False), (0.7, 30.0, 0.5, True)])
def test_dense_matches_trl_kernel_outputs_and_gradients(temperature, softcap, scale, bias):
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 1019
    hidden = torch.randn(n, h, generator=g, dtype=torch.float32) * 3
    weight = torch.randn(v, h, generator=g, dtype=torch.float32)
    b = torch.randn(v, generator=g, dtype=torch.float32) if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:5] = (hidden[:5] @ weight.T).argmax(-1)  # some targets are the argmax: is_top1 must see them
    grads, outs = [], []
    for fn in (lambda *a: ChunkedLogProbFunction.apply(*a), lm_head.dense_logprobs):
        hid, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        out = fn(hid, w, b, targets, temperature, 256, softcap, scale, OUTPUTS)
        (out[0].sum() + 0.3 * out[1].sum()).backward()
        outs.append(out)
        grads.append((hid.grad, w.grad))
    for name, ours, theirs in zip(("log_probs",) + OUTPUTS, outs[1], outs[0]):
        assert ours.shape == theirs.shape, name
        if name == "is_top1":
            assert torch.equal(ours, theirs) and ours[:5].all()
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4, msg=name)
    for ours, theirs in zip(grads[1], grads[0]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_outputs_not_asked_for_are_none():
    out = lm_head.dense_logprobs(torch.randn(3, 4), torch.randn(9, 4), None, torch.tensor([0, 1, 2]), 1.0)
    assert all(x is not None for x in out)
    out = lm_head.dense_logprobs(torch.randn(3, 4), torch.randn(9, 4), None, torch.tensor([0, 1, 2]), 1.0,
                                 outputs=())
    assert out[0].shape == (3,) and out[1:] == (None, None, None, None)


def test_sft_loss_through_the_fused_forward_is_trls(monkeypatch):
    """The patched fused forward (compact, dense) gives TRL's own loss and gradients on the tiny policy."""
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from rl.policy.model import build_tiny_policy

    torch.manual_seed(0)
    model, processor = build_tiny_policy()
    add_fused_lm_head(model, outputs=("entropy", "is_top1"))
    ids = torch.randint(0, 900, (2, 24))
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt
    results = []
    from trl.kernels import chunked_logprob

    for patched in (False, True):
        with monkeypatch.context() as m:
            # TRL's own hooks first (another test may have installed ours in this process), then ours on top
            m.setattr(trl_utils, "_ChunkedLogProbFunction", ChunkedLogProbFunction)
            m.setattr(trl_utils, "_use_triton", chunked_logprob._use_triton)
            m.setattr(trl_seam, "_dense_lm_head", False)
            if patched:
                assert trl_seam.install_dense_lm_head()
                assert trl_utils._ChunkedLogProbFunction is lm_head.DenseOnCpu
            model.zero_grad()
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
            out.loss.backward()
            results.append((out.loss.detach(), out.entropy.detach(), out.is_top1,
                            [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l0, e0, t0, g0), (l1, e1, t1, g1) = results
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(e1, e0)
    assert torch.equal(t1, t0) and not t1[:, :9].any()  # the unscored prompt positions stay zero
    assert len(g1) == len(g0) > 0
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
