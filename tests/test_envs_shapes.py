"""The shapes world: deterministic, exact masks, the promised mix of targets, valid answers."""

import numpy as np
import pytest

from envs import get_env
from envs.base import build_rows, group_by_image, rows_to_dataset
from envs.shapes import COLORS, make_gcg_samples, make_gres_samples, make_scenes
from rewards.format import gcg_ok, gres_ok
from tokenizer.codec import parse_masks
from tokenizer.masks import decode_rle


class CountingCodes:
    """A deterministic stand-in for MaskTokenizer.encode: codes from the mask's area and first pixel."""

    def __init__(self):
        self.calls = 0

    def encode(self, image, masks, boxes=None):
        self.calls += 1
        return np.array([[int(m.sum()) % 256, int(np.argmax(m)) % 256] for m in masks], dtype=np.int64).reshape(-1, 2)


def test_scenes_are_deterministic_and_splits_differ():
    a, b = make_scenes(20, seed=3), make_scenes(20, seed=3)
    for x, y in zip(a, b):
        assert x["objects"] == y["objects"]
        assert np.array_equal(x["masks"], y["masks"])
        assert np.array_equal(np.asarray(x["image"]), np.asarray(y["image"]))
    other = make_scenes(20, seed=3, split="val")
    assert [s["objects"] for s in a] != [s["objects"] for s in other]
    assert [s["objects"] for s in a] != [s["objects"] for s in make_scenes(20, seed=4)]


def test_masks_are_exact_painted_pixels_and_disjoint():
    for scene in make_scenes(30, seed=0):
        pixels = np.asarray(scene["image"])
        assert pixels.shape == (112, 112, 3) and 0 <= len(scene["objects"]) <= 4
        if len(scene["masks"]):
            assert scene["masks"].sum(0).max() == 1  # no overlap: every mask is fully visible
        for color, rgb in COLORS.items():  # the pixels of a colour are exactly its objects' masks
            same = [m for o, m in zip(scene["objects"], scene["masks"]) if o["color"] == color]
            union = np.any(same, axis=0) if same else np.zeros((112, 112), bool)
            assert np.array_equal(np.all(pixels == rgb, axis=-1), union)
        for obj, mask in zip(scene["objects"], scene["masks"]):
            assert mask.any()
            ys, xs = np.nonzero(mask)
            assert obj["box"] == (xs.min(), ys.min(), xs.max(), ys.max())  # inclusive, as masks_to_boxes


def test_gres_expressions_hit_one_several_or_none():
    samples = make_gres_samples(400, seed=0)
    counts = np.array([len(s["masks"]) for s in samples])
    assert 0.15 < np.mean(counts == 0) < 0.25  # about 20% no-target
    assert np.mean(counts == 1) > 0.3 and np.mean(counts >= 2) > 0.1
    for s in samples:
        assert s["no_target"] == (len(s["masks"]) == 0)
        words = s["expression"].split()
        assert words[0] in ("the", "all") and len(words) <= 4
        if len(s["masks"]) > 1:
            assert words[0] == "all"


def test_gcg_captions_ground_every_object():
    for s in make_gcg_samples(20, seed=1):
        assert len(s["phrases"]) == len(s["masks"]) == len(s["spans"]) >= 1
        assert [s["caption"][a:b] for a, b in s["spans"]] == s["phrases"]
        centres = [(b[0] + b[2]) / 2 for b in s["boxes"]]
        assert centres == sorted(centres)  # phrases listed left to right


@pytest.mark.parametrize("name,check", [("shapes_gres", gres_ok), ("shapes_gcg", gcg_ok)])
def test_rows_are_trl_ready_and_answers_are_well_formed(name, check):
    env = get_env(name, train_size=12, eval_size=4, seed=0)
    assert env.name == name and env.task == name.removeprefix("shapes_")
    rows = [r for g in group_by_image(env.samples("train")) for r in build_rows(g, CountingCodes())]
    ds = rows_to_dataset(rows)
    assert len(ds) == 12
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
    assert row["image"].size == (112, 112)
    for r in rows:
        assert check(r["answer"]), r["answer"]
        assert len(parse_masks(r["answer"])) == len(r["masks"])
        assert all(decode_rle(m).any() for m in r["masks"])
        if r["task"] == "gres":
            assert r["no_target"] == (r["answer"] == "No target.")
            boxes = [np.nonzero(decode_rle(m)) for m in r["masks"]]
            centres = [((x.min() + x.max() + 1) / 2, (y.min() + y.max() + 1) / 2) for y, x in boxes]
            assert centres == sorted(centres)  # answer order: box centre x, then y
