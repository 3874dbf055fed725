"""Property tests: every reward gives a number in [0, 1] (or None) for any text, and never raises."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards import get_reward
from rewards.answer_match import gcg_scores, no_repeat, score
from rewards.format import gcg_ok, gres_ok, mask_tokens_ok

FRAGMENTS = [
    "<|mt_start|>", "<|mt_end|>", "<|mt_0001|>", "<|mt_0258|>", "<|mt_0255|>", "<|mt_0511|>", "<|mt_9999|>",
    "<|mt_12345|>", "<|mt_", "|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|im_end|>", "```json\n",
    "\n```", '{"mask_2d": ', ', "label": "x"}', "[", "]", ",", "No target.", " ", "\n", "man", "DOG", "<", "|",
]
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

texts = st.one_of(
    st.text(max_size=200),  # arbitrary unicode
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=80).map("".join),  # near-valid token soup
)
groups = st.tuples(st.integers(0, 255), st.integers(0, 255)).map(
    lambda c: f"<|mt_start|><|mt_{c[0]:04d}|><|mt_{256 + c[1]:04d}|><|mt_end|>"
)
REWARDS = ["answer_match", "no_repeat", "mask_format", "gres_format", "gcg_format"]


def in_unit(x):
    return isinstance(x, float) and math.isfinite(x) and 0.0 <= x <= 1.0


@SETTINGS
@given(pred=texts, gt=texts)
def test_pure_scores_are_in_range(pred, gt):
    for grading in ("binary", "coarse"):
        assert in_unit(score(pred, gt, grading))
        assert all(in_unit(v) for v in gcg_scores(pred, gt, grading).values())
    assert score(pred, gt, "coarse") >= score(pred, gt, "binary")
    assert no_repeat(pred) in (0.0, 1.0)
    assert in_unit(mask_tokens_ok(pred))
    assert isinstance(gres_ok(pred), bool) and isinstance(gcg_ok(pred), bool)


@SETTINGS
@given(completions=st.lists(texts, min_size=1, max_size=4), answer=texts, data=st.data())
def test_reward_functions_are_in_range(completions, answer, data):
    n = len(completions)
    chat = data.draw(st.booleans())
    comps = [[{"role": "assistant", "content": c}] for c in completions] if chat else completions
    for name in REWARDS:
        params = {"phrase_weight": 1.0, "no_repeat_weight": 1.0} if name == "answer_match" else {}
        out = get_reward(name, **params)(prompts=["p"] * n, completions=comps, answer=[answer] * n)
        assert len(out) == n and all(in_unit(v) for v in out)


@SETTINGS
@given(gt=st.lists(groups, min_size=1, max_size=6, unique=True), data=st.data())
def test_any_order_of_distinct_gt_groups_scores_one(gt, data):
    pred = data.draw(st.permutations(gt))
    assert score(" ".join(pred), "".join(gt)) == 1.0
    assert score(" ".join(pred + pred[:1]), "".join(gt)) == pytest.approx(len(gt) / (len(gt) + 1))


@pytest.mark.parametrize(
    "text",
    [
        "<|object_ref_start|>" * 20000 + "x",  # unclosed phrases
        ("<|object_ref_start|>" + "a" * 50) * 2000 + "<|object_ref_end|>",
        "<|mt_start|><|mt_0001|>" * 20000,  # unfinished groups
        "<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>" * 20000,  # 80k well-formed tokens
        "```json\n" + "[" * 50000 + "\n```",
        "```json\n[" + '{"mask_2d": <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>, "label": "x"},' * 5000 + "]\n```",
        "\x00\ud7ff\U0010ffff" * 10000,
    ],
)
def test_huge_adversarial_completions(text):
    answer = "<|object_ref_start|>a<|object_ref_end|><|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>"
    for name in REWARDS:
        out = get_reward(name)(prompts=["p"], completions=[text], answer=[answer])
        assert in_unit(out[0])


@SETTINGS
@given(ids=st.lists(st.lists(st.integers(-(2**40), 2**40) | st.integers(0, 1100), max_size=30), min_size=1, max_size=4))
def test_decoding_any_token_ids_never_raises(tok, ids):
    from rewards.runtime import decode_raw

    out = decode_raw(ids, tok)
    assert len(out) == len(ids) and all(isinstance(t, str) for t in out)


@pytest.fixture(scope="module")
def tok():
    from rl.policy.model import build_tokenizer

    return build_tokenizer("tiny")


BEHAVIOURS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.sampled_from(["text", ValueError("bad"), KeyError("answer")]),
)


@SETTINGS
@given(values=st.lists(BEHAVIOURS, min_size=1, max_size=12))
def test_wrapped_rewards_return_finite_numbers_or_none(values):
    from rewards.runtime import wrap_rewards

    def arbitrary(prompts, completions, **kw):
        out = []
        for i in completions:
            if isinstance(values[i], Exception):
                raise values[i]
            out.append(values[i])
        return out

    (r,) = wrap_rewards([arbitrary], max_failure_rate=1.0)
    out = r(prompts=["p"] * len(values), completions=list(range(len(values))))
    assert len(out) == len(values)
    assert all(v is None or (isinstance(v, float) and math.isfinite(v)) for v in out)
    bad = sum(1 for v in values if isinstance(v, (str, Exception)) or (isinstance(v, float) and not math.isfinite(v)))
    assert sum(r.failures.values()) == bad
    assert sum(v is None for v in out) == bad + sum(v is None for v in values)
