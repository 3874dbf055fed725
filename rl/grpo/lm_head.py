"""A dense stand-in for TRL's fused LM head on the CPU: the same per-token outputs, about 1.5x faster SFT steps
for the tiny policy.

TRL 1.16 scores every loss through ``add_fused_lm_head``: a chunked, online-logsumexp projection built for
150k-token vocabularies on GPUs (``trl/kernels/chunked_logprob.py``). On a device without Triton two of its
choices only cost: it scores every position, prompt and image tokens included (the compact path is kept for
Triton devices because variable tile shapes recompile on XLA/Neuron), and its torch fallback recomputes each
tile in a hand-written backward. For the tiny policy (1,019-token vocabulary) that was half of an SFT step.

``rl.grpo.seam.install_dense_lm_head()`` swaps two names inside ``trl.trainer.utils`` (the fused forward's only two
hooks), for CPU tensors with a vocabulary of at most ``MAX_DENSE_VOCAB`` only:
- the projection becomes ``log_softmax(hidden @ W.T)`` with autograd's backward (one ``[tokens, vocab]``
  matrix; below TRL's own 32k vocabulary chunk TRL builds a tile of that width anyway);
- only positions with a label are scored (the compact path), as TRL does on GPUs.
Everything else, GPUs and large vocabularies included, still runs TRL's kernel. The outputs match TRL's kernel
to float rounding (``tests/test_rl_lm_head.py`` holds them, and their gradients, against each other).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_DENSE_VOCAB = 32768


def dense_logprobs(hidden, weight, bias, targets, temperature, chunk_size=None, final_logit_softcapping=None,
                   logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
    """``ChunkedLogProbFunction.apply``'s contract, computed densely: per-token ``(log_probs, entropy,
    log_sum_sq_probs, mean_logits, is_top1)``, each ``None`` unless asked for in ``outputs`` (log_probs always)."""
    dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else hidden.dtype
    with torch.autocast(hidden.device.type, enabled=False):
        z = F.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)).float()
        z = z * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z / temperature
        log_p = z.log_softmax(-1)
        log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
        with torch.no_grad():  # TRL marks these three non-differentiable
            log_sum_sq = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.mean(-1) if "mean_logits" in outputs else None
            is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None  # argmax: first maximum, like TRL
    return log_probs, entropy, log_sum_sq, mean_logits, is_top1


class DenseOnCpu:
    """Stands in for ``ChunkedLogProbFunction`` (only ``apply`` is used): dense on small-vocabulary CPU tensors."""

    chunked = None  # TRL's class, set by rl.grpo.seam.install_dense_lm_head

    @classmethod
    def apply(cls, hidden, weight, *args):
        if hidden.device.type == "cpu" and weight.shape[0] <= MAX_DENSE_VOCAB:
            return dense_logprobs(hidden, weight, *args)
        return cls.chunked.apply(hidden, weight, *args)
