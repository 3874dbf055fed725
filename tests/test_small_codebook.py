"""Tokenizers with fewer than 256 codes per level inside the unchanged 514-token text format.

A smaller codebook uses the first K tokens of each level and never produces the others. Model output is
untrusted, so a policy may still write a code past K: every reader (the codec, mask_iou, latent_match and the
evaluation) reads it as the official path reads a code past 255: a first code drops the group, a second becomes
-1 (decoded as code 0). Nothing raises.
"""

import numpy as np
import pytest
import torch

from envs.base import predicted_masks
from envs.shapes import make_scenes
from rewards.iou import MaskIoU
from rewards.latent import LatentMatch
from tokenizer import MaskTokenizer
from tokenizer.codec import NO_TARGET, format_mask, format_masks, parse_masks
from tokenizer.config import tiny
from tokenizer.masks import encode_rle

K = 16


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return MaskTokenizer(tiny(K)).eval()


@pytest.fixture(scope="module")
def scene():
    return make_scenes(3, seed=1)[2]


def _group(c1: int, token2: int) -> str:
    """A mask group written with the raw token numbers (level-2 tokens are 256 + code)."""
    return f"<|mt_start|><|mt_{c1:04d}|><|mt_{token2:04d}|><|mt_end|>"


def test_codes_stay_inside_the_codebook_and_the_text_round_trips(small, scene):
    codes = small.encode(scene["image"], scene["masks"])
    assert small.codebook_size == K and len(small.quantizer.codebooks[0].weight) == K + 1  # + the padding row
    assert codes.shape == (len(scene["masks"]), 2) and int(codes.max()) < K and int(codes.min()) >= 0
    text = "".join(format_masks(codes.tolist()))
    assert parse_masks(text, K) == parse_masks(text) == [tuple(c) for c in codes.tolist()]


def test_the_codec_reads_codes_past_a_small_codebook_as_it_reads_codes_past_255():
    past_first = _group(K + 4, 256 + 3)  # a level-1 code past K: names no mask
    past_second = _group(5, 256 + K + 28)  # a level-2 code past K: -1
    assert parse_masks(past_first, K) == [] and parse_masks(past_first) == [(K + 4, 3)]
    assert parse_masks(past_second, K) == [(5, -1)] and parse_masks(past_second) == [(5, K + 28)]
    assert parse_masks(_group(K - 1, 256 + K - 1), K) == [(K - 1, K - 1)]
    # The same rule at the text format's own edge, for the default size.
    assert parse_masks(_group(255, 511)) == [(255, 255)] and parse_masks(_group(255, 512)) == [(255, -1)]


def test_mask_iou_and_the_evaluation_read_out_of_range_codes_alike(small, scene):
    image, masks = scene["image"], scene["masks"]
    reward = MaskIoU("gres", mask_tokenizer=small)
    target = {"image": [image], "masks": [[encode_rle(masks[0])]]}
    none = {"image": [image], "masks": [[]]}
    row = {"image": image}

    # A level-2 code past the codebook decodes as code 0, in the reward and in the evaluation.
    wrote, meant = _group(5, 256 + K + 28), format_mask((5, 0))
    assert reward(completions=[wrote], **target) == reward(completions=[meant], **target)
    assert np.array_equal(predicted_masks(wrote, row, small), predicted_masks(meant, row, small))

    # A level-1 code past the codebook names no mask: nothing is decoded, nothing raises.
    bad = _group(K + 4, 256 + 3)
    assert predicted_masks(bad, row, small).shape == (0, *masks.shape[1:])
    assert reward(completions=[bad], **target) == [0.0]  # a target row with no decodable mask
    assert reward(completions=[bad, NO_TARGET], **{k: v * 2 for k, v in none.items()}) == [1.0, 1.0]
    # Instances mode (GCG): an extra, undecodable group is no instance at all.
    inst = MaskIoU("instances", mask_tokenizer=small)
    good = format_mask(small.encode(image, masks[:1])[0].tolist())
    assert inst(completions=[good + bad], **target) == inst(completions=[good], **target)


def test_latent_match_reads_out_of_range_codes_as_decoding_does(small):
    reward = LatentMatch(mask_tokenizer=small)
    assert reward.k == K
    answer = format_mask((5, 0))
    assert reward(completions=[_group(5, 256 + K + 28)], answer=[answer]) == [1.0]  # (5, -1) embeds as (5, 0)
    assert reward(completions=[_group(K + 4, 256 + 0)], answer=[answer]) == [0.0]  # no mask against one
    assert reward(completions=[_group(K + 4, 256 + 0)], answer=[NO_TARGET]) == [1.0]
