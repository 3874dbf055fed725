"""Mask-token text codec: SAMTok codes <-> ``<|mt_start|><|mt_AAAA|><|mt_BBBB|><|mt_end|>``.

Pure Python on purpose: rewards, data preparation and log viewers parse mask text without torch.

Level k (0-based), code c is the token ``<|mt_{k*256 + c:04d}|>``. A parsed pair uses ``-1`` for a missing
or unusable level-2 code, as the official code does; the released decoder then embeds that -1 as code 0
(``tokenizer.vq.ResidualQuantizer.embed_codes``), so ``(c1, -1)`` decodes exactly as ``(c1, 0)``.

Parsing model output follows the official SAMTok repair-and-extract path, as the released reward file
``text2mask.py`` defines it: ``fix_mt_format_comprehensive``, then ``extract_mt_token_ids_v2``, then the
code-range rules (SAMTok reference, section 3.2). Its quirks are kept on purpose, each named where it
happens (``mask_groups``). One known difference from the group's eval and demo scripts: they first take
every bare ``<|mt_dddd|>`` code of the output and chunk them in pairs, and only fall back to this path when
the count is odd, so on an even count they pair codes across broken groups (and accept text inside a
group) where this path drops them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

CODEBOOK_SIZE = 256
CODEBOOK_DEPTH = 2

MT_START = "<|mt_start|>"
MT_END = "<|mt_end|>"
CODE_TOKENS = [f"<|mt_{i:04d}|>" for i in range(CODEBOOK_SIZE * CODEBOOK_DEPTH)]
MASK_TOKENS = [MT_START, *CODE_TOKENS, MT_END]

# The answer formats around the masks (SAMTok reference, sections 3.3 and 3.4), written by envs, read by rewards.
NO_TARGET = "No target."  # the whole GRES answer when no object matches the expression
# GCG: a grounded phrase is ``<|object_ref_start|> phrase <|object_ref_end|>`` followed by its mask group.
OBJ_START, OBJ_END = "<|object_ref_start|>", "<|object_ref_end|>"

# The mask-group grammars as regex sources (compiled where used), each with its one purpose. The official repair
# grammar, which decoding uses, is ``_TOKEN_RE`` and ``mask_groups`` below.
# GROUP: a complete group exactly as written, two four-digit codes: the textual rewards' strict reading.
GROUP = r"<\|mt_start\|><\|mt_(\d{4})\|><\|mt_(\d{4})\|><\|mt_end\|>"
# VALID_GROUP: a GROUP whose codes are in their level's range (0000-0255, then 0256-0511): the format rewards.
_L1, _L2 = r"0(?:[01]\d\d|2[0-4]\d|25[0-5])", r"0(?:25[6-9]|2[6-9]\d|[34]\d\d|50\d|51[01])"
VALID_GROUP = rf"<\|mt_start\|><\|mt_{_L1}\|><\|mt_{_L2}\|><\|mt_end\|>"
# PHRASE: a GCG phrase, the text between an object-ref start and end that contains neither marker (captured), so
# that "<s>a <s>b<e>" yields "b"; the unrolled loop keeps the match linear-time.
PHRASE = (
    r"<\|object_ref_start\|>"
    r"([^<]*(?:<(?!\|object_ref_(?:start|end)\|>)[^<]*)*)"
    r"<\|object_ref_end\|>"
)

# Every token the official repair regexes look at. Quirk kept: they take a code of *any* number of digits
# (``<|mt_\d+|>``) when repairing, but only exactly four (``\d{4}``) when extracting, so a group with a
# 3- or 5-digit code still takes part in the repair (it is a group, it can be truncated) and is then
# dropped. ``\d`` is Python's: any Unicode decimal digit, as in the official regexes.
_TOKEN_RE = re.compile(r"<\|mt_(start|end|\d+)\|>")
_START, _END = "start", "end"
# Quirk kept: the one-code completion rule looks ahead for this *text* (``(?!<\|mt_)``), not for a token:
# any ``<|mt_`` right after the code (a new start, an end, another code, or junk such as ``<|mt_x``)
# leaves the group broken.
_MT_PREFIX = "<|mt_"


class MaskGroup(NamedTuple):
    """A mask group of model output, repaired: ``codes`` is ``(c1, c2)``; ``start:end`` is its span in the
    text (from its ``<|mt_start|>`` to the last token the repair kept or consumed)."""

    start: int
    end: int
    codes: tuple[int, int]


def code_token(level: int, code: int) -> str:
    """The token text for ``code`` at ``level`` (both 0-based)."""
    if not 0 <= level < CODEBOOK_DEPTH:
        raise ValueError(f"level must be in [0, {CODEBOOK_DEPTH}), got {level}")
    if not 0 <= code < CODEBOOK_SIZE:
        raise ValueError(f"code must be in [0, {CODEBOOK_SIZE}), got {code}")
    return CODE_TOKENS[level * CODEBOOK_SIZE + code]


def format_mask(codes: Sequence[int]) -> str:
    """Text for one mask from its level codes, e.g. ``(17, 45)`` -> ``<|mt_start|><|mt_0017|><|mt_0301|><|mt_end|>``.

    A trailing ``-1`` (no level-2 code) is written as a one-code group, which ``parse_masks`` reads back
    as ``(c1, -1)`` (decoded as ``(c1, 0)``, see above). Codes come from our own tokenizer, so a bad value is
    a programming error and raises.
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


def parse_masks(text: str, codebook_size: int = CODEBOOK_SIZE) -> list[tuple[int, int]]:
    """Every mask group in untrusted model output, repaired by the official rules: ``[(c1, c2), ...]``.

    See ``mask_groups`` for the rules (and ``codebook_size``). Never raises: any input (including non-strings)
    gives a list, possibly empty.
    """
    return [g.codes for g in mask_groups(text, codebook_size)]


def mask_groups(text: str, codebook_size: int = CODEBOOK_SIZE) -> list[MaskGroup]:
    """The mask groups of untrusted model output with their spans, repaired as the official code does.

    The official path rewrites the text with three regexes, then extracts exact groups; its outcome per
    ``<|mt_start|>`` (S) and the tokens directly after it (no character in between; C is a code of any
    number of digits, E is ``<|mt_end|>``):

    * ``S C C E``: the group, as written.
    * ``S C C C+ E``, more than two codes then an end: the first two codes are kept.
    * ``S C E``, one code then an end: a filler second code (``<|mt_9999|>``, hence -1) is added.
    * ``S C`` followed by anything but the text ``<|mt_`` (text, a space, ``<|object_ref_start|>``, the end
      of the output): completed the same way, to one code + filler (-1).
    * Anything else stays broken and is dropped: ``S C`` directly followed by another ``<|mt_...``
      (e.g. a new ``<|mt_start|>``), two or more codes not directly followed by an end, a start with no
      code directly after it, and any group with text (even a space) between its tokens.
    * The kept codes must have exactly four digits (``extract_mt_token_ids_v2``), else the group is dropped.
    * A first code outside level 1's range (0..255) drops the group; a second code outside level 2's
      range (256..511), the filler included, becomes -1.
    * ``codebook_size`` (default 256): the codes per level of the tokenizer that will decode the groups. A
      smaller codebook uses the first ``codebook_size`` tokens of each level and never produces the others;
      a code past it is read as the official path reads a code past 255: a first code drops the group (it
      names no mask), a second becomes -1 (decoded as code 0).

    Codes and ends outside any group are ignored. One pass over the mask tokens (linear in the text);
    never raises, never evaluates anything: any input (including non-strings) gives a list, possibly empty.
    """
    if not isinstance(text, str):
        return []
    toks = [(m.start(), m.end(), m.group(1)) for m in _TOKEN_RE.finditer(text)]
    out: list[MaskGroup] = []
    n, i = len(toks), 0
    while i < n:
        if toks[i][2] != _START:
            i += 1
            continue
        start = toks[i][0]
        # The codes that directly follow this start (each token beginning where the previous one ends).
        k = i + 1
        while k < n and toks[k][0] == toks[k - 1][1] and toks[k][2] not in (_START, _END):
            k += 1
        n_codes = k - i - 1
        closed = k < n and toks[k][0] == toks[k - 1][1] and toks[k][2] == _END
        if n_codes == 0:  # "S" then text, "S S", "S E": never repaired
            i += 1
            continue
        first = toks[i + 1][2]
        if closed:  # S C E (filler), S C C E (as is), S C C C+ E (first two kept)
            second = toks[i + 2][2] if n_codes >= 2 else None
            end, i = toks[k][1], k + 1
        elif n_codes == 1 and not text.startswith(_MT_PREFIX, toks[i + 1][1]):
            second = None  # S C then no "<|mt_": completed with the filler
            end, i = toks[i + 1][1], k
        else:  # S C <|mt_..., or S C C... without a directly following end: broken
            i = k
            continue
        codes = _codes(first, second, codebook_size)
        if codes is not None:
            out.append(MaskGroup(start, end, codes))
    return out


def _codes(first: str, second: str | None, codebook_size: int) -> tuple[int, int] | None:
    """``(c1, c2)`` from the digits of the kept codes (``None``: the filler), or ``None`` to drop the group."""
    # Only four-digit codes are extracted; checking the length first also keeps int() off huge digit runs.
    if len(first) != 4 or (second is not None and len(second) != 4):
        return None
    c1 = int(first)
    if not 0 <= c1 < min(codebook_size, CODEBOOK_SIZE):
        return None
    # Quirk kept: the filler is the code 9999, out of level 2's range like any other bad second code.
    c2 = -1 if second is None else int(second) - CODEBOOK_SIZE
    return c1, c2 if 0 <= c2 < min(codebook_size, CODEBOOK_SIZE) else -1
