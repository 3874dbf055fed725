"""answer_match: exact values on hand-written cases for every rule of the released reward."""

import pytest

from rewards.answer_match import answer_match, gcg_scores, no_repeat, no_repeat_reward, score


def g(c1, c2):
    """A well-formed group for level-1 code c1 and level-2 code c2."""
    return f"<|mt_start|><|mt_{c1:04d}|><|mt_{256 + c2:04d}|><|mt_end|>"


def gres(*groups):
    items = ",\n".join(f'{{"mask_2d": {x}, "label": "one of the cats"}}' for x in groups)
    return f"```json\n[{items}]\n```"


def ph(phrase, group="", sep=" "):
    return f"<|object_ref_start|>{phrase}<|object_ref_end|>{sep}{group}"


A, B, C = g(1, 2), g(3, 4), g(5, 6)


@pytest.mark.parametrize(
    "pred, gt, binary, coarse",
    [
        (gres(A), gres(A), 1.0, 1.0),
        (gres(A, B), gres(B, A), 1.0, 1.0),  # order does not matter
        (gres(A), gres(A, B), 0.5, 0.5),  # a missing instance
        (gres(A, B, C), gres(A), 1 / 3, 1 / 3),  # extra instances
        (gres(A, A), gres(A), 0.5, 0.5),  # duplicates count in the denominator, once in the numerator
        (gres(A, A, A, A), gres(A, B), 0.25, 0.25),
        (gres(g(1, 9)), gres(A), 0.0, 0.4),  # only the level-1 code matches
        (gres(g(1, 9), g(3, 9)), gres(A, B), 0.0, 0.4),
        (gres(g(1, 9), B), gres(A, B), 0.5, 0.7),
        (gres(g(9, 2)), gres(A), 0.0, 0.0),  # only the level-2 code matches: nothing
        ("No target.", "No target.", 1.0, 1.0),  # both empty
        ("", "No target.", 1.0, 1.0),
        (gres(A), "No target.", 0.0, 0.0),  # a mask on a no-target row
        ("No target.", gres(A), 0.0, 0.0),  # no mask on a target row
        (A, gres(A), 1.0, 1.0),  # only the groups matter, not the JSON around them
    ],
)
def test_score_rules(pred, gt, binary, coarse):
    assert score(pred, gt) == pytest.approx(binary)
    assert score(pred, gt, grading="binary") == pytest.approx(binary)
    assert score(pred, gt, grading="coarse") == pytest.approx(coarse)


@pytest.mark.parametrize(
    "broken",
    [
        "<|mt_start|><|mt_0001|><|mt_end|>",  # one code
        "<|mt_start|><|mt_0001|><|mt_0258|><|mt_0300|><|mt_end|>",  # three codes
        "<|mt_start|><|mt_0001|><|mt_0258|>",  # truncated
        "<|mt_0001|><|mt_0258|><|mt_end|>",  # no start
        "<|mt_start|> <|mt_0001|><|mt_0258|><|mt_end|>",  # a space inside
        "<|mt_start|><|mt_001|><|mt_0258|><|mt_end|>",  # three digits
        "<|mt_start|><|mt_00001|><|mt_0258|><|mt_end|>",  # five digits
        "<|mt_start|><|mt_0001|>  ",  # one code then text: decoding completes it, the reward does not
    ],
)
def test_malformed_groups_count_as_nothing(broken):
    # Nothing predicted: a no-target GT is matched, a target GT is not.
    assert score(broken, "No target.") == 1.0
    assert score(broken, gres(A)) == 0.0
    # Next to a good group, a broken one neither helps nor enlarges the denominator.
    assert score(broken + A, gres(A)) == 1.0


def test_the_textual_reward_does_not_repair_what_decoding_repairs():
    """The released reward file defines the repair path but its textual rewards never call it."""
    from tokenizer.codec import parse_masks

    one_code = "<|mt_start|><|mt_0001|>  "  # the case: decoding completes it to (1, -1)
    three = "<|mt_start|><|mt_0001|><|mt_0258|><|mt_0300|><|mt_end|>"  # decoding keeps (1, 2)
    assert parse_masks(one_code + A) == [(1, -1), (1, 2)] and parse_masks(three + B) == [(1, 2), (3, 4)]
    assert score(one_code + A, gres(A)) == 1.0  # repaired, the extra group would halve it
    assert score(three + B, gres(A, B)) == 0.5  # repaired, it would be 1.0
    assert no_repeat(three * 4) == 1.0  # repaired, four repeats would give 0.0


def test_chat_form_and_non_string_inputs():
    assert score([{"role": "assistant", "content": gres(A)}], gres(A)) == 1.0
    assert score([{"role": "assistant", "content": [{"type": "text", "text": A}]}], gres(A)) == 1.0
    assert score(None, "No target.") == 1.0 and score(None, gres(A)) == 0.0
    assert score(123, gres(A)) == 0.0
    with pytest.raises(ValueError, match="grading"):
        score(A, A, grading="soft")


def test_no_repeat_threshold_is_more_than_three():
    assert no_repeat(A * 3) == 1.0
    assert no_repeat(A * 4) == 0.0
    assert no_repeat(A * 3 + B * 3) == 1.0
    assert no_repeat(gres(A, B, A, B, A, B, A)) == 0.0
    assert no_repeat("") == 1.0
    assert no_repeat("<|mt_start|><|mt_0001|><|mt_end|>" * 10) == 1.0  # malformed groups are not counted
    assert no_repeat_reward()(completions=[A * 4, A]) == [0.0, 1.0]


GCG_GT = f"A {ph('man', A)} walks a {ph('brown dog', B)} on the {ph('grass', C)}."


def test_gcg_exact_match_and_whitespace():
    assert gcg_scores(GCG_GT, GCG_GT) == {"mask": 1.0, "phrase": 1.0}
    # Whitespace between the phrase end and the group (spaces, newlines), case and inner spaces of phrases.
    loose = f"{ph(' Man ', A, sep=' ')} {ph('BROWN   dog', B, sep=chr(10))} {ph('grass', C, sep='')}"
    assert gcg_scores(loose, GCG_GT) == {"mask": 1.0, "phrase": 1.0}


def test_gcg_mask_needs_a_phrase_directly_before():
    # B is not right after a phrase (text in between); C is not after a phrase at all.
    pred = f"{ph('man', A)} {ph('brown dog')} and {B} {C}"
    s = gcg_scores(pred, GCG_GT)
    assert s["mask"] == pytest.approx(1 / 3)  # only A counts; max(1, 3) = 3
    assert s["phrase"] == pytest.approx(2 / 3)  # man, brown dog found; max(2, 3)


def test_gcg_phrase_accuracy_rules():
    # Duplicated predicted phrases are found once but count in the denominator.
    pred = f"{ph('man', A)} {ph('man', B)} {ph('man', C)} {ph('tree', A)}"
    assert gcg_scores(pred, GCG_GT)["phrase"] == pytest.approx(1 / 4)
    # A GT with no phrases gives full phrase credit.
    assert gcg_scores(pred, "just a caption")["phrase"] == 1.0
    # A phrase never spans another start marker: "<s>x <s>man<e>" is the phrase "man".
    assert gcg_scores(f"<|object_ref_start|>x {ph('man', A)}", GCG_GT)["phrase"] == pytest.approx(1 / 3)


def test_gcg_grading_coarse():
    pred = f"{ph('man', g(1, 99))}"
    assert gcg_scores(pred, GCG_GT)["mask"] == 0.0
    assert gcg_scores(pred, GCG_GT, grading="coarse")["mask"] == pytest.approx(0.4 / 3)


def test_answer_match_reward_gres_and_gcg_rows():
    plain = answer_match()
    assert plain.__name__ == "answer_match"
    out = plain(prompts=["p"] * 3, completions=[gres(A), gres(A, A), GCG_GT], answer=[gres(A), gres(A), GCG_GT])
    assert out == [1.0, 0.5, 1.0]
    # A row without ground truth is "not applicable" (None), not zero.
    assert plain(completions=[A], answer=[None]) == [None]
    with pytest.raises(ValueError, match="answer"):
        plain(completions=[A])


def test_answer_match_weights_and_normalisation():
    # Masks and phrases are scored independently (as released): B after "tree" still counts.
    # C repeated 4 times (not after a phrase) only trips no_repeat.
    pred = f"{ph('man', A)} {ph('tree', B)} " + C * 4
    s = gcg_scores(pred, GCG_GT)
    assert s == {"mask": pytest.approx(2 / 3), "phrase": pytest.approx(1 / 3)}
    released = answer_match(phrase_weight=1.0, no_repeat_weight=1.0, normalize=False)
    assert released(completions=[pred], answer=[GCG_GT])[0] == pytest.approx(2 / 3 + 1 / 3 + 0.0)
    normalised = answer_match(phrase_weight=1.0, no_repeat_weight=1.0)
    assert normalised(completions=[pred], answer=[GCG_GT])[0] == pytest.approx(1 / 3)
    # GRES rows get full phrase credit, as in the released code's GRES total.
    assert released(completions=[gres(A)], answer=[gres(A)])[0] == pytest.approx(3.0)
    # Forcing the task: a GRES scoring of a GCG answer counts every group.
    gres_only = answer_match(task="gres")
    assert gres_only(completions=[f"{A} {B} {C}"], answer=[GCG_GT]) == [1.0]
    with pytest.raises(ValueError, match="task"):
        answer_match(task="vqa")
    with pytest.raises(ValueError, match="phrase_weight"):
        answer_match(phrase_weight=-1)
