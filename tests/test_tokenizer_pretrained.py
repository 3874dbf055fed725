"""The committed tiny tokenizer reconstructs held-out shapes-world masks through its two codes."""

import numpy as np
import torch

from envs.shapes import make_scenes
from tokenizer import MaskTokenizer
from tokenizer.codec import format_masks, parse_masks
from tokenizer.train import reconstruction_miou


def test_tiny_pretrained_reconstructs_held_out_scenes():
    tok = MaskTokenizer.tiny_pretrained()
    scenes = make_scenes(100, seed=1, split="test")  # never seen in training (train split, seed 0)
    result = reconstruction_miou(tok, [(s["image"], s["masks"]) for s in scenes])
    assert result["masks"] >= 150
    assert result["miou"] >= 0.90, result


def test_codes_survive_the_text_format():
    tok = MaskTokenizer.tiny_pretrained()
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
