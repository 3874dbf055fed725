"""Format rewards: well-formed mask groups, the GRES answer format, the GCG format."""

import pytest

from rewards.format import gcg_format, gcg_ok, gres_format, gres_ok, mask_format, mask_tokens_ok


def g(c1, c2):
    return f"<|mt_start|><|mt_{c1:04d}|><|mt_{256 + c2:04d}|><|mt_end|>"


A, B = g(1, 2), g(255, 255)


def test_mask_tokens_ok_share_of_tokens_in_valid_groups():
    assert mask_tokens_ok("a caption without masks") == 1.0
    assert mask_tokens_ok(A + B) == 1.0
    assert mask_tokens_ok(A + "<|mt_0007|>") == pytest.approx(4 / 5)  # a stray code
    assert mask_tokens_ok(A + "<|mt_start|><|mt_0001|><|mt_end|>") == pytest.approx(4 / 7)  # a one-code group
    assert mask_tokens_ok("<|mt_start|><|mt_0300|><|mt_0001|><|mt_end|>") == 0.0  # levels swapped
    assert mask_tokens_ok("<|mt_start|><|mt_0001|><|mt_0512|><|mt_end|>") == 0.0  # level-2 code out of range
    assert mask_format()(completions=[A, [{"role": "assistant", "content": "<|mt_end|>"}]]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "text",
    [
        "No target.",
        "  No target.\n",
        f'```json\n[{{"mask_2d": {A}, "label": "one of the cats"}}]\n```',
        f'```json\n[{{"mask_2d": {A}, "label": "cat"}},\n{{"mask_2d": {B}, "label": "cat"}}]\n```',
        f'```json\n[{{"mask_2d": "{A}", "label": "cat"}}]\n```',  # quoted mask (README variant)
    ],
)
def test_gres_format_accepts(text):
    assert gres_ok(text)
    assert gres_format()(completions=[text]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No target",
        "No target. And a cat.",
        A,
        f'[{{"mask_2d": {A}, "label": "cat"}}]',  # not fenced
        "```json\n[]\n```",  # an empty list is not an answer
        f'```json\n[{{"mask_2d": {A}}}]\n```',  # no label
        f'```json\n[{{"mask_2d": {A}, "label": "cat", "x": 1}}]\n```',  # an extra key
        f'```json\n[{{"mask_2d": {A}, "label": 3}}]\n```',  # label not a string
        '```json\n[{"mask_2d": "cat", "label": "cat"}]\n```',  # no mask
        f'```json\n[{{"mask_2d": {A}{B}, "label": "cat"}}]\n```',  # two masks in one item
        '```json\n[{"mask_2d": <|mt_start|><|mt_0001|><|mt_end|>, "label": "cat"}]\n```',  # broken group
        f'```json\n[{{"mask_2d": {A}, "label": "cat"}}\n```',  # broken JSON
        "```json\n" + "[" * 100000 + "\n```",  # deep nesting must not crash
    ],
)
def test_gres_format_rejects(text):
    assert not gres_ok(text)


def ph(p, group, sep=" "):
    return f"<|object_ref_start|>{p}<|object_ref_end|>{sep}{group}"


@pytest.mark.parametrize(
    "text, ok",
    [
        (f"A {ph('man', A)} and a {ph('dog', B, sep='')}.", True),
        ("A plain caption.", False),  # no phrase
        (f"A {ph('man', A)} and a {ph('dog', '')}.", False),  # a phrase without a mask
        (f"A {ph('man', A + B)}.", False),  # two masks after one phrase
        (f"A {ph('man', A)} {B}.", False),  # a stray mask
        (f"A {ph('  ', A)}.", False),  # an empty phrase
        (f"A <|object_ref_start|>{ph('man', A)}.", False),  # an unpaired marker
        (f"A {ph('man', '<|mt_start|><|mt_0001|><|mt_end|>')}.", False),  # a broken group
    ],
)
def test_gcg_format(text, ok):
    assert gcg_ok(text) is ok
    assert gcg_format()(completions=[text]) == [float(ok)]
