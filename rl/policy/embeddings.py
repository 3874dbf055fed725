"""The policy's side of the mask tokens: adding the 514 tokens of ``tokenizer.codec`` to a text tokenizer and growing
the model's embeddings for them (the codec itself stays pure Python, for rewards and log viewers)."""

from __future__ import annotations

import torch
from tokenizers import AddedToken

from tokenizer.codec import MASK_TOKENS


def add_mask_tokens(tokenizer, model=None, seed: int = 0) -> int:
    """Add the 514 mask tokens to ``tokenizer`` (and grow ``model``'s embeddings). Returns how many were new.

    The tokens are *non-special* added tokens, as in the official script, so that TRL's
    ``skip_special_tokens=True`` decoding keeps them. New embedding rows are initialised as
    ``mean(old) + 0.02 * N(0, 1) * max(std(old), 1e-3)`` per dimension, statistics taken over the rows of
    the tokens that existed before (not over padding rows that some checkpoints carry past the vocabulary).
    Tied input/output embeddings are initialised once; untied output rows get their own statistics.
    Calling it again is a no-op.
    """
    n_before = len(tokenizer)
    vocab = tokenizer.get_vocab()
    missing = [t for t in MASK_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    new_ids = [tokenizer.convert_tokens_to_ids(t) for t in missing]
    if model is not None:
        _grow_embeddings(model, len(tokenizer), n_before, new_ids, seed)
    return len(missing)


def embedding_weights(model) -> list:
    """The input embedding matrix, plus the output one when it is not tied to it (``rl.policy.trainable`` saves trained
    mask-token rows in this order)."""
    weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    return weights


def _grow_embeddings(model, vocab_size: int, n_before: int, new_ids: list[int], seed: int) -> None:
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] < vocab_size:
        # Our own initialisation follows; mean_resizing would only cost time.
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if not new_ids:
        return
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor(new_ids)
    with torch.no_grad():
        for w in embedding_weights(model):
            old = w[: min(n_before, w.shape[0])].float()
            mean, std = old.mean(0), old.std(0).clamp_min(1e-3)
            noise = torch.randn(len(new_ids), w.shape[1], generator=gen)
            w[ids] = (mean + 0.02 * noise * std).to(w.dtype)
