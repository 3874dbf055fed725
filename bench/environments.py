"""Environment benchmarks, measured side by side in one run.

1. ``gres_scores`` on N records at SIZE x SIZE versus ReLA's own per-sample loop (``np.sum`` of
   ``logical_and``/``logical_or`` on int8 masks, as ``refer_evaluation.computeIoU`` does), same records.
2. ``samtok-rl prepare`` seconds per 1,000 masks with the tiny MaskTokenizer (trained weights when
   committed, else the same architecture randomly initialised: encoding cost does not depend on weights).

    OMP_NUM_THREADS=1 .venv/bin/python bench/environments.py [--records 10000] [--size 512] [--scenes 500]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Run as `python bench/environments.py`, this folder comes first on sys.path, where bench/tokenizer.py would shadow
# the tokenizer package: the checkout's root goes first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs import get_env  # noqa: E402
from envs.metrics import gres_scores  # noqa: E402
from envs.prepare import prepare_dataset  # noqa: E402
from tokenizer.load import load_mask_tokenizer  # noqa: E402


def records(n, size, seed=0):
    rng = np.random.default_rng(seed)
    pool = [rng.random((size, size)) < p for p in (0.05, 0.2, 0.5, 0.8)]  # reused: generation is not timed work
    for k in range(n):
        yield pool[k % 4], k % 5 == 0, pool[(k + 1) % 4], k % 7 == 0


def rela_loop(recs):
    acc_iou = acc_i = acc_u = 0.0
    n = 0
    for pred, pred_nt, gt, gt_nt in recs:
        p, g = pred.astype(np.int8), gt.astype(np.int8)
        i, u = np.sum(np.logical_and(p, g)), np.sum(np.logical_or(p, g))
        n += 1
        if gt_nt:
            acc_iou += pred_nt
            acc_u += 0 if pred_nt else u
        else:
            i = 0 if pred_nt else i
            acc_iou += i / u if u else 0.0
            acc_i, acc_u = acc_i + i, acc_u + u
    return 100 * acc_iou / n, 100 * acc_i / acc_u


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--scenes", type=int, default=500)
    args = ap.parse_args()

    t = time.perf_counter()
    ours = gres_scores(records(args.records, args.size))
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = rela_loop(records(args.records, args.size))
    t_ref = time.perf_counter() - t
    assert np.allclose((ours["gIoU"], ours["cIoU"]), ref), (ours, ref)
    print(f"gres_scores {args.records} records at {args.size}x{args.size}: {t_ours:.2f} s "
          f"(ReLA-style loop {t_ref:.2f} s, ratio {t_ref / t_ours:.1f}x)")

    try:
        tok, which = load_mask_tokenizer("tiny16"), "tiny16 (trained)"
    except FileNotFoundError:
        tok, which = load_mask_tokenizer("random"), "tiny (random init: trained weights not committed yet)"
    env = get_env("shapes_gres", train_size=args.scenes, seed=0)
    with tempfile.TemporaryDirectory() as out:
        report = prepare_dataset(env, "train", out, tok, which, shard_size=250, progress=False)
    print(f"prepare with {which}: {report['masks_encoded']} masks, {report['rows']} rows in {report['seconds']:.1f} s "
          f"= {report['seconds_per_1000_masks']:.1f} s per 1,000 masks (including sample generation and writing)")


if __name__ == "__main__":
    main()
