"""mask_iou: the gres / instances / gcg modes on a decoder with known masks, then on a real MaskTokenizer."""

import numpy as np
import pytest
import torch
from PIL import Image

from rewards import get_reward, wrap_rewards
from tokenizer.codec import format_mask
from tokenizer.masks import encode_rle, masks_iou

H, W = 16, 16
IMAGE = np.zeros((H, W, 3), dtype=np.uint8)


def band(r0, r1, c1=W):
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1, :c1] = True
    return m


class Bands:
    """A stand-in decoder with known outputs: code (c1, c2) is rows c1..c1+3, full width (half if c2 == -1)."""

    def __init__(self):
        self.calls = 0

    def decode(self, image, codes):
        self.calls += 1
        return torch.from_numpy(np.stack([band(c1, c1 + 4, W if c2 >= 0 else W // 2) for c1, c2 in codes]))


def m(c1, c2=0):
    return format_mask((c1, c2))


def ph(phrase, group):
    return f"<|object_ref_start|>{phrase}<|object_ref_end|> {group}"


def run(mode, completions, gt_masks, answer=None):
    fn = get_reward("mask_iou", mode=mode, mask_tokenizer=Bands())
    n = len(completions)
    rles = [encode_rle(x) for x in gt_masks]
    return fn(prompts=["p"] * n, completions=completions, image=[IMAGE] * n, masks=[rles] * n, answer=[answer] * n)


def test_gres_union_iou_and_no_target_rule():
    gt = [band(0, 4), band(8, 12)]  # merged GT: 128 px
    out = run("gres", [m(0) + m(8), m(0), m(2), m(0, -1), "No target.", m(0) + "<|mt_start|><|mt_0008|>"], gt)
    # The last completion is truncated after one code: the official repair completes it to (8, -1).
    assert out == pytest.approx([1.0, 0.5, (2 * 16) / (128 + 32), 0.25, 0.0, 0.75])
    # A no-target row: no mask -> 1, any mask -> 0 (even one that decodes small).
    assert run("gres", ["No target.", m(0), ""], []) == [1.0, 0.0, 1.0]
    assert run("gres", ["No target.", m(0, -1)], [np.zeros((H, W), bool)]) == [1.0, 0.0]  # an empty GT mask


def test_instances_hungarian_and_counts():
    gt = [band(0, 4), band(4, 8)]
    # Both instances found, in either order.
    assert run("instances", [m(0) + m(4), m(4) + m(0)], gt) == [1.0, 1.0]
    # One missing: half credit; one extra: 2/3; a duplicate cannot match twice.
    assert run("instances", [m(0), m(0) + m(4) + m(12), m(0) + m(0)], gt) == pytest.approx([0.5, 2 / 3, 0.5])
    # Partial overlap: rows 2..5 overlap each GT band by 2 of 6 rows (IoU 1/3).
    assert run("instances", [m(2) + m(4)], gt) == pytest.approx([(1 / 3 + 1) / 2])
    assert run("instances", ["", m(0)], []) == [1.0, 0.0]
    assert run("instances", [""], gt) == [0.0]


def test_matching_is_optimal_not_greedy():
    from rewards.iou import _matched_iou

    # Greedy (take 0.9 first) would give 0.9 + 0.1; the optimal one-to-one matching gives 0.8 + 0.8.
    assert _matched_iou(np.array([[0.9, 0.8], [0.8, 0.1]])) == pytest.approx(0.8)
    assert _matched_iou(np.array([[0.9, 0.8], [0.8, 0.1]]), np.array([[1, 0], [0, 1]])) == pytest.approx(0.5)


def test_gcg_matches_masks_only_under_the_same_phrase():
    answer = f"A {ph('man', m(0))} and a {ph('dog', m(4))}."
    gt = [band(0, 4), band(4, 8)]
    out = run(
        "gcg",
        [
            answer,
            f"A {ph('Man ', m(0))} and a {ph('cat', m(4))}.",  # right mask, wrong phrase: no credit
            f"A {ph('dog', m(0))} and a {ph('man', m(4))}.",  # swapped phrases
            f"A {ph('man', m(0))} and a dog {m(4)}.",  # a mask without a phrase predicts nothing
        ],
        gt,
        answer,
    )
    assert out == pytest.approx([1.0, 0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="2 phrases in 'answer' but 1 masks"):
        run("gcg", [answer], gt[:1], answer)


def test_predicted_groups_are_repaired_by_the_official_rules_in_every_mode():
    S, E = "<|mt_start|>", "<|mt_end|>"
    gt = [band(0, 4), band(4, 8)]
    cases = [
        (S + "<|mt_0000|>" + E, 0.5 / 2),  # one code + end -> (0, -1): a half-width band 0 (IoU 1/2)
        (S + "<|mt_0000|>  " + m(4), (0.5 + 1) / 2),  # the case: one code then text -> (0, -1)
        (S + "<|mt_0000|>" + m(4), 1 / 2),  # one code directly followed by a new start: dropped
        (S + " <|mt_0000|><|mt_0256|>" + E + m(4), 1 / 2),  # a space inside a group: dropped
        (S + "<|mt_0000|><|mt_0256|><|mt_0257|>" + E + m(4), 1.0),  # three codes: the first two kept
    ]
    assert run("instances", [c for c, _ in cases], gt) == pytest.approx([v for _, v in cases])
    answer = f"A {ph('man', m(0))} and a {ph('dog', m(4))}."
    out = run(
        "gcg",
        [
            f"A {ph('man', S + '<|mt_0000|>' + E)} and a {ph('dog', m(4))}.",  # repaired: (0, -1)
            f"A {ph('man', m(0))} and a {ph('dog', S + '<|mt_0004|>')}",  # truncated output: (4, -1)
            f"A {ph('man', S + '<|mt_0000|>' + S)} and a {ph('dog', m(4))}.",  # broken: the phrase predicts nothing
            f"A {ph('man', S + ' <|mt_0000|>' + E)} and a {ph('dog', m(4))}.",  # broken: space inside
        ],
        gt,
        answer,
    )
    assert out == pytest.approx([(0.5 + 1) / 2, (1 + 0.5) / 2, 1 / 2, 1 / 2])


def test_repeated_codes_decode_once_and_too_many_masks_score_zero():
    bands = Bands()
    seen = []
    bands_decode = bands.decode
    bands.decode = lambda image, codes: seen.append(list(codes)) or bands_decode(image, codes)
    fn = get_reward("mask_iou", mode="instances", mask_tokenizer=bands, max_pred_masks=4)
    gt = [encode_rle(band(0, 4)), encode_rle(band(4, 8))]
    out = fn(prompts=["p"] * 2, completions=[m(0) * 3 + m(4), "".join(m(i) for i in range(5))],
             image=[IMAGE] * 2, masks=[gt] * 2)
    assert out == pytest.approx([2 / 4, 0.0])  # duplicates still count in N_pred
    # One decode of the two distinct codes, filled up to a pass of 4 (the CPU's); none for the 5-mask completion.
    assert seen == [[(0, 0), (4, 0), (4, 0), (4, 0)]]
    with pytest.raises(ValueError, match="max_pred_masks"):
        get_reward("mask_iou", mask_tokenizer=bands, max_pred_masks=0)


class PassDependent(Bands):
    """A decoder whose float sums depend on how many masks share a pass, as a batched SAM decoder's do: a code's
    band gains a row in a pass of an odd size (a pixel at the threshold going the other way)."""

    def decode(self, image, codes):
        masks = super().decode(image, codes)
        if len(codes) % 2:
            masks[:, :, 0] |= torch.from_numpy(np.stack([band(c1 + 4, c1 + 5)[:, 0] for c1, _ in codes]))
        return masks


@pytest.mark.parametrize("pass_size", [None, 1, 3])
def test_a_completions_reward_does_not_depend_on_the_others_in_its_call(pass_size):
    """Every decoder pass has one size, so the completions sharing a call (or a pass) change no reward."""
    gt = [encode_rle(band(0, 4)), encode_rle(band(4, 8))]
    alone = [m(0) + m(4), m(8)]
    crowd = alone + [m(12), m(0) + m(4) + m(1), m(2) + m(3) + m(5) + m(6) + m(7)]

    def rewards(completions, **kw):
        fn = get_reward("mask_iou", mode="instances", mask_tokenizer=PassDependent(), pass_size=pass_size, **kw)
        n = len(completions)
        return fn(prompts=["p"] * n, completions=completions, image=[IMAGE] * n, masks=[gt] * n)

    first = rewards(alone)
    assert rewards(crowd)[:2] == first
    assert rewards(crowd, batch_decode=False) == rewards(crowd)
    assert rewards(alone[:1]) == first[:1]
    # The stand-in does decode a code differently in passes of other sizes: the fixed pass is what hides it.
    dec = PassDependent()
    assert not torch.equal(dec.decode(IMAGE, [(0, 0)])[0], dec.decode(IMAGE, [(0, 0), (4, 0)])[0])


def test_pass_size_is_checked_and_follows_the_tokenizers_device():
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="pass_size"):
            get_reward("mask_iou", mask_tokenizer=Bands(), pass_size=bad)
    limited = Bands()
    limited.max_masks_per_pass = 8
    with pytest.raises(ValueError, match="pass_size 16 is above the mask tokenizer's max_masks_per_pass"):
        get_reward("mask_iou", mask_tokenizer=limited, pass_size=16)
    assert get_reward("mask_iou", mask_tokenizer=Bands()).masks_per_pass() == 4
    assert get_reward("mask_iou", mask_tokenizer=Bands(), pass_size=2).masks_per_pass() == 2
    on_gpu = Bands()
    on_gpu.device = torch.device("cuda")
    fn = get_reward("mask_iou", mask_tokenizer=on_gpu)
    assert fn.masks_per_pass() == 16
    on_gpu.max_masks_per_pass = 8  # never above what the tokenizer does in one pass
    assert fn.masks_per_pass() == 8


def test_bad_rows_fail_through_the_wrapper_not_the_run():
    fn = get_reward("mask_iou", mode="gres", mask_tokenizer=Bands())
    (safe,) = wrap_rewards([fn], max_failure_rate=1.0)
    bad_rle = {"size": [H, W], "counts": "#!"}
    out = safe(prompts=["p"] * 3, completions=[m(0)] * 3, image=[IMAGE, IMAGE, None],
               masks=[[encode_rle(band(0, 4))], [bad_rle], [encode_rle(band(0, 4))]])
    assert out == [1.0, None, None]
    assert dict(safe.failures) == {"ValueError": 2}
    with pytest.raises(ValueError, match="mode"):
        get_reward("mask_iou", mode="pixels", mask_tokenizer=Bands())


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_real_mask_tokenizer_one_encoder_pass_per_group(device):
    from tokenizer.config import tiny
    from tokenizer.model import MaskTokenizer

    torch.manual_seed(0)
    tok = MaskTokenizer(tiny()).to(device).eval()
    # Random weights give logits near 0: a threshold there makes the masks non-trivial.
    tok.config.mask_threshold = 0.03
    rng = np.random.default_rng(0)
    pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    codes = [(1, 2), (7, 9), (30, -1)]
    ref = tok.decode(pixels, codes).numpy()
    assert 0 < ref.mean() < 1
    gt = [encode_rle(ref[0]), encode_rle(ref[1])]
    completions = [format_mask(codes[0]) + format_mask(codes[1]), format_mask(codes[1]), format_mask(codes[2]), ""]
    completions = completions * 2  # a group of 8
    tok.clear_cache()
    tok.cache_hits = tok.cache_misses = 0
    fn = get_reward("mask_iou", mode="instances", mask_tokenizer=tok)
    # Eight separate image objects with the same pixels, as a dataset hands them out.
    images = [Image.fromarray(pixels) for _ in completions]
    calls = []
    real_decode = tok.decode
    tok.decode = lambda image, c: calls.append(list(c)) or real_decode(image, c)
    out = fn(prompts=["p"] * 8, completions=completions, image=images, masks=[gt] * 8)
    # One encoder pass and one decoder pass for the image, holding each distinct code once (filled up to 4 masks).
    assert tok.cache_misses == 1 and tok.cache_hits == 0 and calls == [codes + codes[-1:]]
    iou = masks_iou(ref, ref[:2])
    expected = [1.0, iou[1, 1] / 2, max(iou[2]) / 2, 0.0]
    assert out == pytest.approx(expected * 2)
    # Completion by completion (batch_decode=False): one encoder pass, a decoder call per completion, same rewards.
    tok.clear_cache()
    tok.cache_hits = tok.cache_misses = 0
    calls.clear()
    each = get_reward("mask_iou", mode="instances", mask_tokenizer=tok, batch_decode=False)
    assert each(prompts=["p"] * 8, completions=completions, image=images, masks=[gt] * 8) == out
    assert tok.cache_misses == 1 and tok.cache_hits == 5 and len(calls) == 6  # the empty completion decodes nothing


@pytest.mark.parametrize("mode", ["gres", "instances", "gcg"])
def test_batched_decoding_gives_the_per_completion_rewards_to_the_last_bit(mode):
    """Groups of two scenes interleaved in one call, as a generation batch holds them: the rewards are those of
    decoding completion by completion, exactly."""
    import random

    from envs.base import build_rows
    from envs.shapes import gcg_samples, gres_samples
    from tokenizer.load import load_mask_tokenizer

    tok = load_mask_tokenizer("tiny16")
    samples = (gcg_samples if mode == "gcg" else gres_samples)("test", 3, seed=4)
    rows = [r for s in samples for r in build_rows([s], tok)]
    rng = random.Random(0)
    comps, images, masks, answers = [], [], [], []
    for k in range(24):
        row = rows[k % len(rows)]
        if mode == "gcg":  # the GT caption with some codes changed
            text = row["answer"].replace("<|mt_0", f"<|mt_{rng.choice([0, 0, 1])}", 1)
        else:
            text = "".join(format_mask((rng.randrange(16), rng.randrange(16))) for _ in range(rng.randrange(3)))
        comps.append(text)
        images.append(row["image"].copy())  # a fresh object per completion, as TRL hands them out
        masks.append(row["masks"])
        answers.append(row["answer"])
    batched = get_reward("mask_iou", mode=mode, mask_tokenizer=tok)(completions=comps, image=images, masks=masks,
                                                                    answer=answers)
    each = get_reward("mask_iou", mode=mode, mask_tokenizer=tok, batch_decode=False)
    assert batched == each(completions=comps, image=images, masks=masks, answer=answers)
    assert len(set(batched)) > 2
