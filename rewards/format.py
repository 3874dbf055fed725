"""Format rewards: is the completion written the way the task's answers are written?

All three read raw text (mask and object-ref tokens included, see ``rewards.runtime``) and never raise.
They score the text as written: no group is repaired first (``tokenizer.codec.parse_masks`` repairs for
decoding only), as the released format reward (``mask_token_format_reward``) runs its strict regex on the
raw response.
"""

from __future__ import annotations

import json
import re

from rewards.parsing import completion_text, phrases
from tokenizer.codec import NO_TARGET, VALID_GROUP

_MASK_TOKEN_RE = re.compile(r"<\|mt_(?:start|end|\d{4})\|>")
_VALID_GROUP_RE = re.compile(VALID_GROUP)  # both codes in their level's range
_OBJ_MARK_RE = re.compile(r"<\|object_ref_(?:start|end)\|>")
_FENCED_RE = re.compile(r"\A```json[ \t]*\n(.*)\n?```\Z", re.S)
# Inside the JSON a mask may be written bare (tokenize_gres.py) or quoted (the README): make both a string.
_MASK_VALUE_RE = re.compile(rf'"?({VALID_GROUP})"?')


def mask_tokens_ok(text: str) -> float:
    """Share of mask tokens that sit in well-formed, in-range groups; 1.0 when there is none."""
    total = len(_MASK_TOKEN_RE.findall(text))
    if total == 0:
        return 1.0
    return 4 * len(_VALID_GROUP_RE.findall(text)) / total


def gres_ok(text: str) -> bool:
    """``No target.``, or a fenced json list of ``{"mask_2d": <one group>, "label": <str>}`` objects."""
    text = text.strip()
    if text == NO_TARGET:
        return True
    m = _FENCED_RE.match(text)
    if m is None or mask_tokens_ok(text) < 1.0:
        return False
    body = _MASK_VALUE_RE.sub(lambda g: json.dumps(g.group(1)), m.group(1))
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(items, list)
        and len(items) > 0
        and all(
            isinstance(it, dict)
            and set(it) == {"mask_2d", "label"}
            and isinstance(it["mask_2d"], str)
            and _VALID_GROUP_RE.fullmatch(it["mask_2d"]) is not None
            and isinstance(it["label"], str)
            for it in items
        )
    )


def gcg_ok(text: str) -> bool:
    """At least one phrase; every phrase non-empty and followed by exactly one well-formed group; no other
    mask tokens and no unpaired object-ref markers."""
    pairs = phrases(text)
    if not pairs:
        return False
    for phrase, c1, c2 in pairs:
        if not phrase.strip() or not c1 or not (int(c1) < 256 and 256 <= int(c2) < 512):
            return False
    n = len(pairs)
    return len(_MASK_TOKEN_RE.findall(text)) == 4 * n and len(_OBJ_MARK_RE.findall(text)) == 2 * n


class FormatReward:
    """A format check as a reward (callable, picklable: the check is a module-level function)."""

    def __init__(self, name: str, check):
        self.__name__, self.check = name, check

    def __call__(self, prompts=None, completions=(), completion_ids=None, **columns):
        return [float(self.check(completion_text(c))) for c in completions]


def mask_format() -> FormatReward:
    """Share of mask tokens in well-formed groups (no broken groups, no stray mask tokens)."""
    return FormatReward("mask_format", mask_tokens_ok)


def gres_format() -> FormatReward:
    """1.0 when the completion is a valid GRES answer (fenced JSON list of masks, or ``No target.``)."""
    return FormatReward("gres_format", gres_ok)


def gcg_format() -> FormatReward:
    """1.0 when every phrase of the completion is followed by one mask group and nothing is stray."""
    return FormatReward("gcg_format", gcg_ok)
