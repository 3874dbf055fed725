"""parse_masks agrees with the official SAMTok repair-and-extract path on every input.

The oracle below is a plain transcription of the official procedure (the released reward file's
``fix_mt_format_comprehensive``, then ``extract_mt_token_ids_v2`` and the code-range rules; SAMTok
reference, section 3.2): three regex rewrites of the whole text, one strict extraction regex, then the
ranges. It shares nothing with ``tokenizer.codec``, which walks the mask tokens once instead.
"""

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenizer.codec import mask_groups, parse_masks

S, E = "<|mt_start|>", "<|mt_end|>"
OBJ_S, OBJ_E = "<|object_ref_start|>", "<|object_ref_end|>"

# --------------------------------------------------------------------------------------------- the oracle
_S, _E, _CODE = re.escape(S), re.escape(E), r"<\|mt_\d+\|>"
_FILLER = "<|mt_9999|>"
_TOO_MANY = re.compile(f"({_S}{_CODE}{_CODE})(?:{_CODE})+{_E}")  # keep start + the first two codes
_ONE_THEN_END = re.compile(f"({_S}{_CODE}){_E}")  # start + one code + end
_ONE_OPEN = re.compile(rf"({_S}{_CODE})(?!<\|mt_)")  # start + one code, no "<|mt_" right after it
_EXACT = re.compile(rf"{_S}<\|mt_(\d{{4}})\|><\|mt_(\d{{4}})\|>{_E}")


def official_repair(text: str) -> str:
    text = _TOO_MANY.sub(lambda m: m.group(1) + E, text)
    text = _ONE_THEN_END.sub(lambda m: m.group(1) + _FILLER + E, text)
    return _ONE_OPEN.sub(lambda m: m.group(1) + _FILLER + E, text)


def official_parse(text: str) -> list[tuple[int, int]]:
    ids = []
    for a, b in _EXACT.findall(official_repair(text)):
        ids += [int(a), int(b)]
    out = []
    for k in range(0, len(ids), 2):  # chunks of codebook_depth = 2; level k's code is id - 256 * k
        c1, c2 = ids[k], ids[k + 1] - 256
        if not 0 <= c1 < 256:
            continue
        out.append((c1, c2 if 0 <= c2 < 256 else -1))
    return out


def t(i: int) -> str:
    return f"<|mt_{i:04d}|>"


def g(c1: int, c2: int) -> str:
    return S + t(c1) + t(256 + c2) + E


# ----------------------------------------------------------------------------------- adversarial classes
CASES = [
    # the example: one code then spaces then a new group -> completed with the filler
    ("issue example", S + t(182) + "  " + S + t(3) + t(300) + E, [(182, -1), (3, 44)]),
    ("well formed", g(17, 45) + " and " + g(0, 255), [(17, 45), (0, 255)]),
    # more than two codes and an end: the first two are kept (whatever the extra codes are)
    ("three codes", S + t(1) + t(257) + t(258) + E, [(1, 1)]),
    ("five codes", S + t(1) + t(257) + t(258) + t(3) + t(4) + E, [(1, 1)]),
    ("extra code of 5 digits", S + t(1) + t(257) + "<|mt_12345|>" + E, [(1, 1)]),
    ("kept code of 5 digits", S + t(1) + "<|mt_12345|>" + t(258) + E, []),
    ("three codes, no end", S + t(1) + t(257) + t(258) + " x", []),
    # one code then an end: filler -> -1
    ("one code + end", S + t(9) + E, [(9, -1)]),
    # one code not directly followed by a mask token: completed, -1
    ("one code + text", S + t(9) + "x", [(9, -1)]),
    ("one code + space + end", S + t(9) + " " + E, [(9, -1)]),
    ("one code at the end of the output", g(1, 1) + S + t(2), [(1, 1), (2, -1)]),
    ("one code + object ref", S + t(9) + OBJ_S + "cat" + OBJ_E, [(9, -1)]),
    ("one code + newline + group", S + t(9) + "\n" + g(5, 6), [(9, -1), (5, 6)]),
    # one code directly followed by another mask token (or any "<|mt_" text): broken, dropped
    ("one code + new start", S + t(1) + S + t(2) + t(258) + E, [(2, 2)]),
    ("one code + stray code + text", S + t(1) + t(2) + " x", []),
    ("one code + junk mt prefix", S + t(1) + "<|mt_x|>" + E, []),
    ("one code + bare mt prefix at the end", S + t(1) + "<|mt_", []),
    ("one code + minus one", S + t(1) + "<|mt_-1|>" + E, []),
    ("one code + pipe", S + t(1) + "<|mt", [(1, -1)]),
    ("many unfinished groups", (S + t(1)) * 5 + S + t(2) + t(300) + E, [(2, 44)]),
    # anything between the tokens of a group breaks it
    ("space after start", S + " " + t(4) + t(260) + E, []),
    ("space before end", S + t(4) + t(260) + " " + E, []),
    ("space between codes", S + t(4) + " " + t(260) + E, [(4, -1)]),  # S C + text: completed
    # starts and ends without codes
    ("start + end", S + E, []),
    ("start + start", S + S + t(4) + t(260) + E, [(4, 4)]),
    ("lone start at the end", g(1, 2) + S, [(1, 2)]),
    ("no start", t(4) + t(260) + E, []),
    ("stray end and codes", E + t(3) + S + t(4) + t(260) + E + t(5), [(4, 4)]),
    # digit counts: only four-digit codes are extracted (the repair takes any count)
    ("three digits", S + "<|mt_001|>" + t(258) + E, []),
    ("five digits", S + "<|mt_00001|>" + t(258) + E, []),
    ("one code of five digits + end", S + "<|mt_00001|>" + E, []),
    ("one code of three digits + text", S + "<|mt_001|>" + " x", []),
    ("unicode digits", S + "<|mt_\u0660\u0660\u0661\u0667|>" + t(258) + E, [(17, 2)]),
    # code ranges
    ("level-1 code out of range", S + t(300) + t(301) + E, []),
    ("level-1 code 9999", S + "<|mt_9999|>" + E, []),
    ("level-2 code from level 1's range", S + t(4) + t(7) + E, [(4, -1)]),
    ("level-2 code past 511", S + t(4) + t(600) + E, [(4, -1)]),
    ("literal filler", S + t(4) + "<|mt_9999|>" + E, [(4, -1)]),
    ("first codes from level 2", S + t(256) + t(256) + E, []),
]


@pytest.mark.parametrize("name, text, expected", CASES, ids=[c[0] for c in CASES])
def test_adversarial_cases(name, text, expected):
    assert official_parse(text) == expected, "the oracle disagrees with the stated rule"
    assert parse_masks(text) == expected


# ------------------------------------------------------------------------------- random broken outputs
LEVEL1 = st.integers(0, 255)
ANY_CODE = st.one_of(st.integers(0, 255), st.integers(256, 511), st.sampled_from([512, 600, 999, 9999]))
CODE_TOK = ANY_CODE.map(t)
ODD_CODE = st.sampled_from(["<|mt_001|>", "<|mt_00017|>", "<|mt_12345|>", "<|mt_\u0661\u0662\u0663\u0664|>", "<|mt_0|>"])
TEXT = st.sampled_from(["", " ", "  ", "\n", "x", "the cat", ", ", '{"mask_2d": ', '"label": "a dog"}', "```json\n[",
                        "]\n```", "No target.", OBJ_S, OBJ_E, OBJ_S + "a red circle" + OBJ_E + " "])
JUNK = st.sampled_from(["<|mt_", "<|mt", "|>", "<|mt_start", "<|mt_x|>", "<|mt_-1|>", "<|mt_9999|>", "<|im_end|>", "<"])
PARTIAL = st.one_of(
    st.tuples(LEVEL1, st.integers(0, 255)).map(lambda p: g(*p)),  # a good group
    st.lists(st.one_of(CODE_TOK, ODD_CODE), max_size=5).map(lambda cs: S + "".join(cs) + E),  # 0..5 codes + end
    st.lists(st.one_of(CODE_TOK, ODD_CODE), max_size=4).map(lambda cs: S + "".join(cs)),  # no end
    st.just(S), st.just(E), CODE_TOK,
)
PIECE = st.one_of(PARTIAL, PARTIAL, TEXT, JUNK)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PIECE, max_size=30))
def test_agrees_with_official_on_random_mixtures(pieces):
    text = "".join(pieces)
    assert parse_masks(text) == official_parse(text), text


def _answer_tokens(groups: list[tuple[int, int]]) -> list[str]:
    """A GRES answer (or a GCG-like caption) as a token list, mask tokens one element each."""
    out = ["```json\n["]
    for k, (c1, c2) in enumerate(groups):
        out += ([",\n"] if k else []) + ['{"mask_2d": ', S, t(c1), t(256 + c2), E, ', "label": "one of the cats"}']
    return out + ["]\n```"]


MUTATION = st.tuples(st.sampled_from(["delete", "duplicate", "insert"]), st.integers(0, 10_000),
                     st.one_of(TEXT, JUNK, CODE_TOK, st.just(S), st.just(E)))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LEVEL1, st.integers(0, 255)), min_size=1, max_size=4), st.lists(MUTATION, max_size=4),
       st.one_of(st.none(), st.integers(0, 10_000)))
def test_agrees_with_official_on_corrupted_answers(groups, mutations, cut):
    """Well-formed answers with tokens deleted, duplicated or inserted, and possibly truncated: what a
    policy in training writes."""
    toks = _answer_tokens(groups)
    for op, pos, piece in mutations:
        pos %= len(toks) + (op == "insert")
        if op == "delete" and len(toks) > 1:
            del toks[pos % len(toks)]
        elif op == "duplicate":
            toks.insert(pos % len(toks), toks[pos % len(toks)])
        else:
            toks.insert(pos, piece)
    text = "".join(toks)
    if cut is not None:
        text = text[: cut % (len(text) + 1)]
    assert parse_masks(text) == official_parse(text), text


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<|>mt_startend0123456789 x")), max_size=80))
def test_agrees_with_official_on_character_soup(text):
    assert parse_masks(text) == official_parse(text), text


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_agrees_with_official_on_any_text(text):
    assert parse_masks(text) == official_parse(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(PIECE, max_size=20))
def test_group_spans_start_at_a_start_token_and_hold_the_group(pieces):
    text = "".join(pieces)
    groups = mask_groups(text)
    assert [x.codes for x in groups] == parse_masks(text)
    ends = [0]
    for x in groups:
        assert x.start >= ends[-1] and text.startswith(S, x.start)
        # The span alone repairs to the same group (a one-code group's span ends after its code).
        assert parse_masks(text[x.start:x.end]) == [x.codes]
        ends.append(x.end)


def test_never_eval_never_raise_and_stay_linear():
    huge_digits = S + "<|mt_" + "1" * 100_000 + "|>" + E  # int() would refuse this many digits
    assert parse_masks(huge_digits) == []
    t0 = time.perf_counter()
    text = (S + t(1)) * 100_000 + S + t(2) + t(300) + E + (S + t(1) + t(257) * 50) * 2_000 + " " + S + t(3)
    assert parse_masks(text) == official_parse(text) == [(2, 44), (3, -1)]
    assert time.perf_counter() - t0 < 10
