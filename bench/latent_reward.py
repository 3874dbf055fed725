"""How well the decode-free ``latent_match`` reward ranks predictions like the decoded IoU does (shapes world).

    python bench/latent_reward.py [--scenes 150] [--per-mask 12] [--tokenizer tiny16|tiny]

For GT masks of held-out shapes scenes, candidate code pairs are drawn the way a policy errs (the GT pair with
another level-2 code, another level-1 code, a pair of another object in the scene, of another scene, a random
pair). Each candidate is decoded on the scene's image and scored by IoU against the GT mask (what ``mask_iou``
rewards); the same candidate is scored by ``latent_match`` (rbf and cosine) and by ``answer_match`` coarse
against the GT codes. Prints the Spearman rank correlation of each with the decoded IoU over all pairs, and
the seconds per call of each reward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def agreement(scenes: int = 150, per_mask: int = 12, seed: int = 0, timings: dict | None = None,
              tokenizer: str = "tiny16") -> dict:
    """Spearman correlation with the decoded IoU of each reward, over the candidate pairs (see the module doc)."""
    from scipy.stats import spearmanr

    from envs.shapes import gres_samples
    from rewards.answer_match import answer_match
    from rewards.latent import LatentMatch
    from tokenizer.codec import format_mask
    from tokenizer.load import load_mask_tokenizer
    from tokenizer.masks import decode_rle, mask_to_box

    rng = np.random.default_rng(seed)
    tok = load_mask_tokenizer(tokenizer, "cpu")
    k = tok.quantizer.codebook_size
    samples = [s for s in gres_samples("test", scenes * 2, seed=seed) if s["masks"]][:scenes]
    encoded = []
    for s in samples:
        masks = np.stack([decode_rle(r) for r in s["masks"]])
        codes = tok.encode(s["image"], masks, [mask_to_box(m) for m in masks]).tolist()  # as envs.base.build_rows
        encoded.append((s["image"], masks, [tuple(c) for c in codes]))
    pool = [c for _, _, codes in encoded for c in codes]
    iou, texts, gts = [], [], []
    for image, masks, codes in encoded:
        i = int(rng.integers(len(codes)))
        c1, c2 = codes[i]
        cands = [(c1, c2)]
        for _ in range(per_mask - 1):
            kind = rng.integers(5)
            if kind == 0:
                cands.append((c1, int(rng.integers(k))))
            elif kind == 1:
                cands.append((int(rng.integers(k)), c2))
            elif kind == 2 and len(codes) > 1:
                cands.append(codes[int(rng.choice([j for j in range(len(codes)) if j != i]))])
            elif kind == 3:
                cands.append(pool[int(rng.integers(len(pool)))])
            else:
                cands.append((int(rng.integers(k)), int(rng.integers(k))))
        with torch.no_grad():
            pred = torch.as_tensor(tok.decode(image, cands)).bool().numpy()
        gt = masks[i]
        inter = (pred & gt).reshape(len(cands), -1).sum(1)
        union = (pred | gt).reshape(len(cands), -1).sum(1)
        iou += list(inter / np.maximum(union, 1))
        texts += [format_mask(c) for c in cands]
        gts += [format_mask((c1, c2))] * len(cands)
    iou = np.array(iou)
    rewards = {
        "latent_match rbf": LatentMatch(tok, similarity="rbf"),
        "latent_match cosine": LatentMatch(tok, similarity="cosine"),
        "answer_match coarse": answer_match(grading="coarse"),
        "answer_match binary": answer_match(grading="binary"),
    }
    out = {}
    for name, fn in rewards.items():
        t = time.perf_counter()
        got = np.array(fn(completions=texts, answer=gts))
        if timings is not None:
            timings[name] = (time.perf_counter() - t) / len(texts)
        out[name] = float(spearmanr(got, iou).statistic)
    if timings is not None:
        timings["pairs"], timings["mean_iou"] = len(iou), float(iou.mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=150)
    ap.add_argument("--per-mask", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default="tiny16", help="mask tokenizer spec: tiny16 (default) or tiny (2x256)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    timings = {}
    rho = agreement(args.scenes, args.per_mask, args.seed, timings, args.tokenizer)
    print(f"{args.tokenizer}: {timings['pairs']} (prediction, GT) pairs from {args.scenes} shapes scenes; "
          f"decoded IoU mean {timings['mean_iou']:.3f}")
    print(f"{'reward':<22} {'Spearman vs IoU':>16} {'us/completion':>14}")
    for name, r in rho.items():
        print(f"{name:<22} {r:>16.3f} {timings[name] * 1e6:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
