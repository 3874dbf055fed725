"""latent_match: the decode-free reward scores groups by the closeness of their quantised latents, with
answer_match's no-target and duplicate rules; never raises on model output; pickles; ranks like the IoU."""

import pickle

import numpy as np
import pytest

from rewards import get_reward
from rewards.latent import LatentMatch
from tokenizer.codec import format_mask


def g(c1, c2):
    return format_mask((c1, c2))


@pytest.fixture(scope="module")
def reward():
    return get_reward("latent_match", mask_tokenizer="tiny")  # 2x256: the rules below use codes past 16


def test_rules(reward):
    gt = g(17, 45)
    assert reward.score(gt, gt) == pytest.approx(1.0)
    assert reward.score("No target.", "No target.") == 1.0  # the no-target rule
    assert reward.score("No target.", gt) == 0.0 and reward.score(gt, "No target.") == 0.0
    near, far = reward.score(g(17, 46), gt), reward.score(g(200, 3), gt)
    assert 0 < far < near < 1
    assert reward.score(gt + gt, gt) == pytest.approx(0.5)  # a repeat counts against, as in answer_match
    two = g(17, 45) + g(90, 12)
    assert reward.score(two, two) == pytest.approx(1.0)
    assert reward.score(g(90, 12) + g(17, 45), two) == pytest.approx(1.0)  # matched, not compared in order
    assert reward.score(g(17, 45), two) == pytest.approx(0.5)  # a missing object costs
    assert reward.score("<|mt_start|><|mt_0017|><|mt_end|>", g(17, 0)) == pytest.approx(1.0)  # (c1,-1) is (c1,0)


def test_similarity_is_the_latent_distance():
    rng = np.random.default_rng(0)
    books = [rng.normal(size=(256, 8)), rng.normal(size=(256, 8))]
    r = LatentMatch(codebooks=books)
    a, b = books[0][1] + books[1][2], books[0][3] + books[1][4]
    assert r.score(g(1, 2), g(3, 4)) == pytest.approx(np.exp(-((a - b) ** 2).sum() / r.scale))
    pairs = rng.integers(0, 256, size=(20000, 4))
    d2 = ((books[0][pairs[:, 0]] + books[1][pairs[:, 1]] - books[0][pairs[:, 2]] - books[1][pairs[:, 3]]) ** 2).sum(1)
    assert r.scale == pytest.approx(d2.mean(), rel=0.03)  # the closed form is the random-pair mean
    cos = LatentMatch(codebooks=books, similarity="cosine")
    assert cos.score(g(1, 2), g(3, 4)) == pytest.approx(max(0.0, a @ b / np.linalg.norm(a) / np.linalg.norm(b)))


def test_gcg_pairs_only_the_same_phrase():
    r = get_reward("latent_match", mode="gcg", mask_tokenizer="tiny")
    ref = lambda p, c: f"<|object_ref_start|>{p}<|object_ref_end|>{g(*c)}"  # noqa: E731
    gt = f"{ref('a red circle', (5, 6))} and {ref('a blue square', (70, 80))}."
    assert r.score(gt, gt) == pytest.approx(1.0)
    swapped = f"{ref('a red circle', (70, 80))} and {ref('a blue square', (5, 6))}."
    # right masks under the wrong phrases: each phrase can only match its own GT group
    cross = r.pair_similarity([(70, 80)], [(5, 6)])[0, 0]
    assert cross < 1 and r.score(swapped, gt) == pytest.approx(cross)
    assert r.score(f"{ref('a green triangle', (5, 6))}.", gt) == 0.0  # no GT phrase to pair with
    assert r.score("A red circle.", gt) == 0.0


def test_untrusted_output_never_raises(reward):
    junk = ["", None, 5, [{"role": "assistant", "content": None}], "<|mt_start|>" * 50, "<|mt_9999|><|mt_0001|>",
            "<|mt_start|><|mt_0300|><|mt_0001|><|mt_end|>", "<|mt_start|><|mt_0001|><|mt_0100|><|mt_end|>" * 3,
            "\x00<|mt_start|><|mt_00001|><|mt_0257|><|mt_end|>"]
    out = reward(completions=junk, answer=[g(1, 2)] * len(junk))
    assert len(out) == len(junk) and all(0.0 <= x <= 1.0 for x in out)
    gcg = get_reward("latent_match", mode="gcg")
    assert all(0.0 <= x <= 1.0 for x in gcg(completions=junk, answer=["<|object_ref_start|>x<|object_ref_end|>"] * 9))


def test_pickles_and_rejects_bad_params(reward):
    again = pickle.loads(pickle.dumps(reward))
    assert again.score(g(3, 4), g(3, 5)) == reward.score(g(3, 4), g(3, 5))
    assert again.__name__ == "latent_match"
    with pytest.raises(ValueError, match="similarity"):
        LatentMatch(similarity="l1")
    with pytest.raises(ValueError, match="mode"):
        get_reward("latent_match", mode="instances")


def test_ranks_predictions_like_the_decoded_iou():
    """On real shapes masks, the latent score orders candidate codes much as their decoded IoU does."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import latent_reward

    rho = latent_reward.agreement(scenes=12, per_mask=8)
    assert rho["latent_match rbf"] > 0.7 and rho["latent_match rbf"] > rho["answer_match binary"]
