"""Reward benchmarks, measured side by side in one run (ratios are what matter; absolute numbers vary).

1. answer_match throughput (completions/s, one thread) on typical GRES and GCG completions: the pure
   function, the TRL reward (a list per call, as the trainer calls it), and that reward behind
   ``wrap_rewards`` with and without a per-sample timeout.
2. mask_iou per group of 8 completions, with and without the tokenizer's image-feature cache.
   Then mask_iou over a whole generation batch (128 groups of 8) in one call: decoded per distinct image at once
   (the default) against completion by completion, with the rewards compared to the last bit.
3. The share of a GRPO step spent in rewards, on a plain TRL GRPOTrainer run with the tiny policy and
   answer_match (the project's default run does not exist yet).

Usage: OMP_NUM_THREADS=1 python bench/rewards.py [--quick] [--tokenizer tiny|random-tiny|hiera_t|hiera_l] [--device cpu|cuda]\n       [--skip-answer-match] [--skip-grpo]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards import get_reward, wrap_rewards  # noqa: E402
from rewards.answer_match import gcg_scores, score  # noqa: E402
from tokenizer.codec import format_mask  # noqa: E402


def _mask(rng):
    return format_mask((rng.randrange(256), rng.randrange(256)))


def gres_rows(n, rng, group=8):
    """(completion, answer) pairs: groups of 8 completions per answer, ~half right, some duplicates."""
    rows = []
    for _ in range(n // group):
        gt = [_mask(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        answer = "```json\n[" + ",\n".join(f'{{"mask_2d": {m}, "label": "one of the cats"}}' for m in gt) + "]\n```"
        for _ in range(group):
            pred = [m if rng.random() < 0.5 else _mask(rng) for m in gt] + ([gt[0]] if rng.random() < 0.2 else [])
            rows.append(("```json\n[" + ",\n".join(f'{{"mask_2d": {m}, "label": "cat"}}' for m in pred) + "]\n```", answer))
    return rows


def gcg_rows(n, rng, group=8):
    words = ["man", "woman", "dog", "red car", "tree", "building", "sky", "grass"]

    def caption(pairs):
        return "A photo of " + ", ".join(f"<|object_ref_start|> {w} <|object_ref_end|> {m}" for w, m in pairs) + " in a park."

    rows = []
    for _ in range(n // group):
        gt = [(w, _mask(rng)) for w in rng.sample(words, 3)]
        answer = caption(gt)
        for _ in range(group):
            pred = [(w if rng.random() < 0.7 else rng.choice(words), m if rng.random() < 0.5 else _mask(rng)) for w, m in gt]
            rows.append((caption(pred), answer))
    return rows


def rate(fn, n, repeat=3):
    best = min(_timed(fn) for _ in range(repeat))
    return n / best


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_answer_match(n):
    rng = random.Random(0)
    print(f"1. answer_match throughput, {n} completions per task, one thread, best of 3")
    reward = get_reward("answer_match", phrase_weight=1.0, no_repeat_weight=1.0)
    wrapped = wrap_rewards([reward])[0]
    timed = wrap_rewards([reward], timeout_s=10.0)[0]
    for task, rows in (("GRES", gres_rows(n, rng)), ("GCG", gcg_rows(n, rng))):
        comps, answers = [r[0] for r in rows], [r[1] for r in rows]
        batches = [(comps[i : i + 64], answers[i : i + 64]) for i in range(0, len(rows), 64)]
        pure = score if task == "GRES" else gcg_scores
        r_pure = rate(lambda: [pure(c, a) for c, a in rows], len(rows))
        r_reward = rate(lambda: [reward(completions=c, answer=a) for c, a in batches], len(rows))
        r_wrapped = rate(lambda: [wrapped(completions=c, answer=a) for c, a in batches], len(rows))
        r_timed = rate(lambda: [timed(completions=c, answer=a) for c, a in batches], len(rows))
        mean = sum(reward(completions=comps, answer=answers)) / len(rows)
        print(f"   {task:4s} pure {r_pure:>9,.0f}/s | reward {r_reward:>9,.0f}/s | wrapped {r_wrapped:>9,.0f}/s "
              f"({r_wrapped / r_reward:.2f}x) | wrapped+timeout {r_timed:>9,.0f}/s ({r_timed / r_reward:.2f}x) "
              f"| mean reward {mean:.3f} | avg {sum(map(len, comps)) / len(comps):.0f} chars")


def _mask_tokenizer(kind, device):
    import torch

    from tokenizer.config import hiera_t, official, tiny
    from tokenizer.model import MaskTokenizer

    if kind == "tiny":
        try:
            from tokenizer.load import load_mask_tokenizer

            return load_mask_tokenizer("tiny", device), "tiny pretrained"
        except FileNotFoundError:
            kind = "random-tiny"
    torch.manual_seed(0)
    cfg = {"random-tiny": tiny, "hiera_t": hiera_t, "hiera_l": official}[kind]()
    return MaskTokenizer(cfg).to(device).eval(), f"{kind} (random weights, image_size {cfg.image_size})"


def bench_mask_iou(kind, groups, device, batch_groups=0, pass_size=None):
    import numpy as np
    import torch
    from PIL import Image

    from tokenizer.masks import encode_rle

    tok, label = _mask_tokenizer(kind, device)
    rng = np.random.default_rng(0)
    print(f"2. mask_iou per group of 8 completions, {label} on {device}, {groups} groups, one 640x480 image each")
    fn = get_reward("mask_iou", mode="instances", mask_tokenizer=tok)
    r = random.Random(0)
    data = []
    for _ in range(groups):
        pixels = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
        gt = np.zeros((2, 480, 640), dtype=bool)
        gt[0, 50:200, 100:300] = True
        gt[1, 250:400, 300:600] = True
        comps = ["".join(_mask(r) for _ in range(r.choice([1, 2, 3]))) for _ in range(8)]
        # As a dataset hands them out: a new image object per completion, same pixels.
        data.append(([Image.fromarray(pixels) for _ in range(8)], comps, [[encode_rle(m) for m in gt]] * 8))

    def run():
        for images, comps, masks in data:
            fn(prompts=["p"] * 8, completions=comps, image=images, masks=masks)
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up: first-call costs of torch and the allocator
    size = tok.config.cache_size
    cached, uncached = [], []
    for _ in range(3):  # alternate, best of 3 each
        tok.config.cache_size = size
        tok.clear_cache()
        cached.append(_timed(run) / groups)
        tok.config.cache_size = 0  # every decode re-encodes the image
        tok.clear_cache()
        uncached.append(_timed(run) / groups)
    tok.config.cache_size = size
    c, u = min(cached), min(uncached)
    feats = tok.image_features(np.asarray(data[0][0][0]))
    mb = sum(f.numel() * f.element_size() for f in feats) / 2**20
    print(f"   with cache {c * 1e3:8.1f} ms/group | without {u * 1e3:8.1f} ms/group | speed-up {u / c:.2f}x | "
          f"cached features {mb:.1f} MiB per image")
    if device == "cuda":
        print(f"   peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if batch_groups:
        bench_mask_iou_batch(tok, label, batch_groups, device, pass_size)


def bench_mask_iou_batch(tok, label, groups, device, pass_size=None):
    """mask_iou over a generation batch of ``groups`` groups of 8 in one call, as the trainer calls it: decoded per
    distinct image at once (``batch_decode``, the default) against completion by completion, side by side. Two
    workloads: every code random (no two completions share one: the worst case for batching), and rollout-like
    groups whose 8 completions draw their masks from 3 candidate codes, as a policy's samples for one prompt do."""
    for shared in (False, True):
        _batch_workload(tok, label, groups, device, shared, pass_size)


def _batch_workload(tok, label, groups, device, shared: bool, pass_size=None):
    import numpy as np
    import torch
    from PIL import Image

    from tokenizer.masks import encode_rle

    rng, r = np.random.default_rng(1), random.Random(1)
    h, w = 240, 320
    gt = np.zeros((2, h, w), dtype=bool)
    gt[0, 20:100, 40:150] = True
    gt[1, 120:220, 150:300] = True
    rles = [encode_rle(m) for m in gt]
    k = getattr(tok, "codebook_size", 256)
    images, comps = [], []
    for _ in range(groups):
        pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        candidates = [(r.randrange(k), r.randrange(k)) for _ in range(3)]
        for _ in range(8):
            images.append(Image.fromarray(pixels))
            pick = (lambda: r.choice(candidates)) if shared else (lambda: (r.randrange(k), r.randrange(k)))
            comps.append("".join(format_mask(pick()) for _ in range(r.choice([1, 2, 3]))))
    masks = [rles] * len(comps)
    batched = get_reward("mask_iou", mode="instances", mask_tokenizer=tok, pass_size=pass_size)
    each = get_reward("mask_iou", mode="instances", mask_tokenizer=tok, batch_decode=False, pass_size=pass_size)
    out = {}

    def run(fn, name):
        tok.clear_cache()
        start = time.perf_counter()
        out[name] = fn(completions=comps, image=images, masks=masks)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(batched, "batched")  # warm-up
    tb, te = [], []
    for _ in range(2):  # alternate, best of 2 each
        tb.append(run(batched, "batched"))
        te.append(run(each, "each"))
    diffs = [abs(a - b) for a, b in zip(out["batched"], out["each"])]
    same = "yes, to the last bit" if not any(diffs) else (
        f"{sum(d > 0 for d in diffs)} of {len(diffs)} differ, by at most {max(diffs):.2e} (pixels at the mask threshold: "
        "a mask's logits depend on the other masks of its pass or on the run)")
    kind = "rollout-like codes (3 candidates per group)" if shared else "random codes"
    print(f"3. mask_iou over a generation batch of {groups} groups x 8 completions ({h}x{w} images, {kind}), "
          f"{label} on {device}, {batched.masks_per_pass()} masks per decoder pass")
    print(f"   per distinct image at once {min(tb) * 1e3 / groups:8.1f} ms/group | completion by completion "
          f"{min(te) * 1e3 / groups:8.1f} ms/group | speed-up {min(te) / min(tb):.2f}x | same rewards: {same}")


def bench_grpo_share(steps):
    import numpy as np
    from datasets import Dataset
    from PIL import Image
    from trl import GRPOConfig, GRPOTrainer

    from rl.policy.model import build_tiny_policy

    print(f"3. share of a GRPO step in rewards: plain trl.GRPOTrainer, tiny policy (tiny vocab), answer_match + "
          f"mask_format, 1 prompt x 8 generations, 32 new tokens, {steps} steps (not the default run: it does not exist yet)")
    model, processor = build_tiny_policy(seed=0)
    rng = np.random.default_rng(0)
    r = random.Random(0)
    rows = [
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Please segment the cat."}]}],
         "image": Image.fromarray((rng.random((112, 112, 3)) * 255).astype(np.uint8)),
         "answer": "```json\n[" + f'{{"mask_2d": {_mask(r)}, "label": "cat"}}' + "]\n```"}
        for _ in range(steps)
    ]
    wrapped = wrap_rewards([get_reward("answer_match"), get_reward("mask_format")], tokenizer=processor)
    args = GRPOConfig(
        output_dir="/tmp/bench_rewards_grpo", use_cpu=True, bf16=False, per_device_train_batch_size=8,
        num_generations=8, max_completion_length=32, max_steps=steps, learning_rate=1e-5, logging_steps=1,
        report_to="none", save_strategy="no", dataloader_num_workers=0, seed=0, beta=0.0, disable_tqdm=True,
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=wrapped, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=processor)
    t = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t
    in_rewards = sum(w.seconds for w in wrapped)
    print(f"   train {total:.2f} s for {steps} steps | rewards {in_rewards * 1e3:.1f} ms "
          f"(incl. raw-text decoding) | share {in_rewards / total:.3%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    p.add_argument("--tokenizer", default="tiny", choices=["tiny", "random-tiny", "hiera_t", "hiera_l"])
    p.add_argument("--device", default=None, help="for mask_iou; default cuda when available")
    p.add_argument("--skip-grpo", action="store_true")
    p.add_argument("--skip-answer-match", action="store_true")
    p.add_argument("--batch-groups", type=int, default=None,
                   help="groups of 8 in the generation-batch comparison (default 128; --quick 16; 0 skips it)")
    p.add_argument("--pass-size", type=int, default=None,
                   help="masks per decoder pass in that comparison (default: mask_iou's, 4 on a CPU, 16 on a GPU)")
    a = p.parse_args(argv)
    if a.device is None:
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if not a.skip_answer_match:
        bench_answer_match(4096 if a.quick else 65536)
    batch_groups = a.batch_groups if a.batch_groups is not None else (16 if a.quick else 128)
    bench_mask_iou(a.tokenizer, 2 if a.quick else 8, a.device, batch_groups, a.pass_size)
    if not a.skip_grpo:
        bench_grpo_share(2 if a.quick else 6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
