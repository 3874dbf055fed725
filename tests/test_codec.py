"""The mask-token text codec: formatting, the official repair rules, and never raising on model output."""

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenizer.codec import CODE_TOKENS, MASK_TOKENS, MT_END, MT_START, format_mask, parse_masks

S, E = MT_START, MT_END


def tok(i):
    return f"<|mt_{i:04d}|>"


def test_vocabulary_layout():
    assert len(MASK_TOKENS) == 514
    assert MASK_TOKENS[0] == "<|mt_start|>" and MASK_TOKENS[-1] == "<|mt_end|>"
    assert MASK_TOKENS[1] == "<|mt_0000|>" and MASK_TOKENS[512] == "<|mt_0511|>"
    assert len(set(MASK_TOKENS)) == 514


def test_format_matches_official_example():
    assert format_mask((17, 45)) == "<|mt_start|><|mt_0017|><|mt_0301|><|mt_end|>"
    assert format_mask((17, -1)) == "<|mt_start|><|mt_0017|><|mt_end|>"


@pytest.mark.parametrize("bad", [(256, 0), (0, 256), (-1, 3), (1, 2, 3), (), (-5, 0)])
def test_format_rejects_bad_codes(bad):
    with pytest.raises(ValueError):
        format_mask(bad)


def test_round_trip_every_code():
    pairs = [(c, (c * 7 + 3) % 256) for c in range(256)] + [(5, -1)]
    text = " and ".join(format_mask(p) for p in pairs)
    assert parse_masks(text) == pairs


@pytest.mark.parametrize(
    "text, expected",
    [
        # more than two codes: keep the first two
        (S + tok(1) + tok(257) + tok(258) + tok(3) + E, [(1, 1)]),
        # exactly one code: a filler second code, -1 (which the decoder embeds as code 0)
        (S + tok(9) + E, [(9, -1)]),
        # first code out of level 1's range: the group is dropped
        (S + tok(300) + tok(301) + E, []),
        # second code out of level 2's range: -1
        (S + tok(4) + tok(7) + E, [(4, -1)]),
        # no code at all
        (S + E, []),
        # a start and one code at the end of the output (truncated) are completed: the second becomes -1
        (S + tok(1) + tok(257) + E + S + tok(2), [(1, 1), (2, -1)]),
        # a truncated group with two codes stays broken
        (S + tok(1) + tok(257) + E + S + tok(2) + tok(258), [(1, 1)]),
        # a nested start abandons the unfinished group
        (S + tok(1) + S + tok(2) + tok(258) + E, [(2, 2)]),
        # stray end and codes outside any group are ignored
        (E + tok(3) + S + tok(4) + tok(260) + E + tok(5), [(4, 4)]),
        # text between the tokens of a group breaks it (the official extraction wants them adjacent)
        (S + " " + tok(4) + " x " + tok(260) + "\n" + E, []),
        # a five-digit id takes part in the repair as a code, then is not extracted: the group is dropped
        (S + "<|mt_00001|>" + tok(6) + E, []),
    ],
)
def test_repair_rules(text, expected):
    assert parse_masks(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_random_text(text):
    out = parse_masks(text)
    assert all(0 <= a < 256 and -1 <= b < 256 for a, b in out)


_pieces = st.sampled_from([S, E, "<|mt_", "|>", "<|mt_start", "x", " ", "<|mt_9999|>", "<|object_ref_start|>"] + CODE_TOKENS[::37])


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=60))
def test_never_raises_on_adversarial_token_soup(parts):
    out = parse_masks("".join(parts))
    assert all(isinstance(a, int) and isinstance(b, int) for a, b in out)
    assert all(0 <= a < 256 and -1 <= b < 256 for a, b in out)


@pytest.mark.parametrize("junk", [None, 3, b"<|mt_start|>", ["<|mt_start|>"]])
def test_non_strings_give_nothing(junk):
    assert parse_masks(junk) == []


def test_huge_input_is_linear():
    text = (S + tok(1)) * 200_000 + S + tok(2) + tok(300) + E  # 200k unfinished groups
    assert parse_masks(text) == [(2, 44)]


def test_codec_imports_without_torch():
    code = "import sys, tokenizer.codec, tokenizer; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
