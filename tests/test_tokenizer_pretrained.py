"""The committed shapes-world tokenizers reconstruct held-out masks through their two codes; ``tiny16`` (the shapes
recipes' default) shares code pairs between masks as SAMTok's tokenizer does, ``tiny`` (2x256) gives nearly every
mask its own."""

import numpy as np
import pytest
import torch

from envs.shapes import make_scenes
from tokenizer.codec import format_masks, parse_masks
from tokenizer.load import load_mask_tokenizer
from tokenizer.train import reconstruction_miou


@pytest.mark.parametrize("name", ["tiny", "tiny16"])
def test_reconstructs_held_out_scenes(name):
    tok = load_mask_tokenizer(name)
    scenes = make_scenes(100, seed=1, split="test")  # never seen in training (train split, seed 0)
    result = reconstruction_miou(tok, [(s["image"], s["masks"]) for s in scenes])
    assert result["masks"] >= 150
    assert result["miou"] >= 0.90, result


def test_tiny16_shares_code_pairs_on_unseen_scenes(one_thread):
    scenes = make_scenes(1000, seed=0, split="test")
    result = reconstruction_miou(load_mask_tokenizer("tiny16"), [(s["image"], s["masks"]) for s in scenes])
    # The README's figures on 1,500 scenes: 17.0 masks per used pair, 0.3% of masks with a pair of their own.
    assert result["masks"] > 2000 and result["masks_per_pair"] >= 10 and result["frac_unique"] <= 0.05, result
    assert result["level1_used"] <= 16 and result["miou"] >= 0.90, result


def test_codes_survive_the_text_format():
    tok = load_mask_tokenizer("tiny")
    scene = next(s for s in make_scenes(10, seed=2, split="test") if len(s["masks"]) >= 2)
    codes = tok.encode(scene["image"], scene["masks"])
    parsed = parse_masks("".join(format_masks(codes.tolist())))
    assert torch.equal(torch.tensor(parsed), codes)
    # Different objects get different codes, and the coarse mask of (c1, -1) (decoded as (c1, 0), as the
    # released decoder does) is still the same object.
    assert len({tuple(c) for c in codes.tolist()}) == len(codes)
    coarse = tok.decode(scene["image"], [[c1, -1] for c1, _ in codes.tolist()]).numpy()
    fine = tok.decode(scene["image"], codes).numpy()
    for a, b, gt in zip(coarse, fine, scene["masks"]):
        assert (a & gt).sum() / max((a | gt).sum(), 1) > 0.3
        assert (b & gt).sum() / max((b | gt).sum(), 1) >= (a & gt).sum() / max((a | gt).sum(), 1) - 0.05
    assert np.all(fine.any(axis=(1, 2)))
