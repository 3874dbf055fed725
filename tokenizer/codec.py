"""Mask-token text codec: SAMTok codes <-> ``<|mt_start|><|mt_AAAA|><|mt_BBBB|><|mt_end|>``.

Pure Python on purpose: rewards, data preparation and log viewers parse mask text without torch.

Level k (0-based), code c is the token ``<|mt_{k*256 + c:04d}|>``. A decoded pair uses ``-1`` for a
skipped level (the decoder then uses level 1 only), as the official tokenizer does.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

CODEBOOK_SIZE = 256
CODEBOOK_DEPTH = 2

MT_START = "<|mt_start|>"
MT_END = "<|mt_end|>"
CODE_TOKENS = [f"<|mt_{i:04d}|>" for i in range(CODEBOOK_SIZE * CODEBOOK_DEPTH)]
MASK_TOKENS = [MT_START, *CODE_TOKENS, MT_END]

# One pattern for every token the parser cares about; anything else between them is ignored.
# Codes are exactly four digits, as the official vocabulary writes them: <|mt_12345|> is not a code.
_TOKEN_RE = re.compile(r"<\|mt_(start|end|\d{4})\|>")


def code_token(level: int, code: int) -> str:
    """The token text for ``code`` at ``level`` (both 0-based)."""
    if not 0 <= level < CODEBOOK_DEPTH:
        raise ValueError(f"level must be in [0, {CODEBOOK_DEPTH}), got {level}")
    if not 0 <= code < CODEBOOK_SIZE:
        raise ValueError(f"code must be in [0, {CODEBOOK_SIZE}), got {code}")
    return CODE_TOKENS[level * CODEBOOK_SIZE + code]


def format_mask(codes: Sequence[int]) -> str:
    """Text for one mask from its level codes, e.g. ``(17, 45)`` -> ``<|mt_start|><|mt_0017|><|mt_0301|><|mt_end|>``.

    A trailing ``-1`` (level skipped) is written as a one-code group, which ``parse_masks`` reads back
    as ``(c1, -1)``. Codes come from our own tokenizer, so a bad value is a programming error and raises.
    """
    codes = [int(c) for c in codes]
    if not 1 <= len(codes) <= CODEBOOK_DEPTH:
        raise ValueError(f"expected 1..{CODEBOOK_DEPTH} codes, got {len(codes)}")
    if codes[0] == -1:
        raise ValueError("the level-1 code cannot be -1")
    while codes and codes[-1] == -1:
        codes.pop()
    if -1 in codes:
        raise ValueError(f"-1 may only skip trailing levels, got {codes}")
    return MT_START + "".join(code_token(k, c) for k, c in enumerate(codes)) + MT_END


def format_masks(all_codes: Iterable[Sequence[int]]) -> list[str]:
    return [format_mask(c) for c in all_codes]


def parse_masks(text: str) -> list[tuple[int, int]]:
    """Every mask group in untrusted model output, repaired by the official rules.

    * A group is ``<|mt_start|>`` ... ``<|mt_end|>``; text between its tokens is ignored.
    * A new ``<|mt_start|>`` before the ``<|mt_end|>`` abandons the unfinished group (nested starts),
      and a group that never ends (truncated output) is dropped.
    * More than two codes: the first two are kept. One code: the second becomes -1.
    * A first code outside level 1's range (0..255) drops the group; a second code outside level 2's
      range (256..511) becomes -1. A group with no code is dropped.

    Never raises: any input (including non-strings) gives a list, possibly empty.
    """
    if not isinstance(text, str):
        return []
    out: list[tuple[int, int]] = []
    group: list[int] | None = None
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(1)
        if tok == "start":
            group = []
        elif tok == "end":
            if group:
                pair = _repair(group)
                if pair is not None:
                    out.append(pair)
            group = None
        elif group is not None and len(group) < CODEBOOK_DEPTH:
            group.append(int(tok))
    return out


def _repair(ids: list[int]) -> tuple[int, int] | None:
    first = ids[0]
    if not 0 <= first < CODEBOOK_SIZE:
        return None
    second = ids[1] - CODEBOOK_SIZE if len(ids) > 1 else -1
    if not 0 <= second < CODEBOOK_SIZE:
        second = -1
    return first, second


def add_mask_tokens(tokenizer, model=None, seed: int = 0) -> int:
    """Add the 514 mask tokens to ``tokenizer`` (and grow ``model``'s embeddings). Returns how many were new.

    The tokens are *non-special* added tokens, as in the official script, so that TRL's
    ``skip_special_tokens=True`` decoding keeps them. New embedding rows are initialised as
    ``mean(old) + 0.02 * N(0, 1) * max(std(old), 1e-3)`` per dimension, statistics taken over the rows of
    the tokens that existed before (not over padding rows that some checkpoints carry past the vocabulary).
    Tied input/output embeddings are initialised once; untied output rows get their own statistics.
    Calling it again is a no-op.
    """
    from tokenizers import AddedToken  # local: keep this module importable without HF libraries

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
    """The input embedding matrix, plus the output one when it is not tied to it (rl.trainer saves trained
    mask-token rows in this order)."""
    weights = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not weights[0]:
        weights.append(out.weight)
    return weights


def _grow_embeddings(model, vocab_size: int, n_before: int, new_ids: list[int], seed: int) -> None:
    import torch

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
