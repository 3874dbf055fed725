"""Parsing of untrusted completion text shared by the rewards: the text of a completion, the strict mask-group
grammar of the released textual rewards, GCG phrases and the repaired group that follows each phrase.

Two grammars, on purpose (see ``rewards.answer_match``): the textual rewards score groups as written
(``strict_groups``: exactly ``<|mt_start|><|mt_dddd|><|mt_dddd|><|mt_end|>``), while decoding rewards use the
official repair path (``tokenizer.codec.mask_groups``), here through ``gcg_pred``. Nothing here raises on any
input; GT answers are parsed once per distinct answer (``gt_groups``, ``gt_gcg``: an answer is scored against
``num_generations`` completions).
"""

from __future__ import annotations

import re
from functools import lru_cache

from tokenizer.codec import CODEBOOK_SIZE, GROUP, PHRASE, mask_groups

GROUP_RE = re.compile(GROUP)
# A phrase (the codec's grammar) and the mask group that directly follows it, after optional whitespace, when
# present. One C-level pass: measured faster than splitting on the markers in Python.
PHRASE_RE = re.compile(PHRASE + rf"(?:\s*{GROUP})?")
# The same phrases with the whitespace after them: a mask group that directly follows a phrase starts where
# the match ends (``gcg_pred`` pairs phrases with repaired groups this way).
PHRASE_WS_RE = re.compile(PHRASE + r"\s*")


def completion_text(completion) -> str:
    """The text of a completion: a string, or TRL's chat form ``[{"role": "assistant", "content": str}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content parts: keep the text ones
            return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def strict_groups(text: str) -> list[tuple[str, str]]:
    """The well-formed mask groups of ``text`` as written, as digit strings ``(c1, c2)``."""
    return GROUP_RE.findall(text)


@lru_cache(maxsize=4096)
def gt_groups(answer: str) -> list[tuple[str, str]]:
    return GROUP_RE.findall(answer)


def normalize_phrase(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def phrases(text: str) -> list[tuple[str, str, str]]:
    """``(phrase, c1, c2)`` per phrase; c1/c2 are the digits of the group right after it, or empty strings."""
    return PHRASE_RE.findall(text)


def gcg_parse(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(strict mask groups that directly follow a phrase, all normalised phrases)."""
    groups, names = [], []
    for phrase, c1, c2 in phrases(text):
        names.append(normalize_phrase(phrase))
        if c1:
            groups.append((c1, c2))
    return groups, names


@lru_cache(maxsize=4096)
def gt_gcg(answer: str) -> tuple[list[tuple[str, str]], list[str]]:
    return gcg_parse(answer)


def gcg_pred(text: str, codebook_size: int = CODEBOOK_SIZE) -> tuple[list[str], list[tuple[int, int]]]:
    """(normalised phrase, codes) of every phrase directly followed by a (repaired, decodable) mask group;
    ``codebook_size``: the decoding tokenizer's codes per level (``tokenizer.codec.mask_groups``)."""
    groups = {g.start: g.codes for g in mask_groups(text, codebook_size)}
    names, codes = [], []
    for m in PHRASE_WS_RE.finditer(text):
        pair = groups.get(m.end())
        if pair is None:
            continue  # a phrase without a (decodable) mask predicts nothing
        names.append(normalize_phrase(m.group(1)))
        codes.append(pair)
    return names, codes
