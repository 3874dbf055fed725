"""``samtok-rl eval``: generate with a policy over an environment split and report the official metrics.

Pipeline (each step is a function the demo can call on its own):

1. ``eval_rows``: the split's rows (GT masks as RLE; answers are not needed to score);
2. ``rl.generation.generate``: HF ``generate`` in batches, greedy by default, decoded with special tokens kept
   (mask and object-ref tokens) exactly as the rewards read completions; or ``rl.vllm_backend.generate``,
   the same prompts, images and decoding served by vLLM (``--backend vllm``, or ``auto`` on a GPU);
3. ``predicted_masks``: every mask group of a completion, parsed with the codec's repair rules and
   decoded by the ``MaskTokenizer`` on the row's image (row by row, so memory stays flat);
4. ``score``: GRES with ReLA's metric (no mask group = "no target"; the groups' masks are unioned and
   compared with the merged GT), GCG with GLaMM's evaluator on GLaMM-format per-image JSONs;
5. ``render_grid``: a PNG of GT vs predicted mask overlays.

``report`` runs steps 3-5 on completions from either backend. The mask tokenizer waits on the CPU until
the policy (or the vLLM engine) is released, then moves to ``--tokenizer-device`` (the GPU when there is one).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from envs import BadRows, get_env
from envs.base import build_rows, group_by_image, load_image, merged_mask
from rl.generation import generate
from tokenizer.codec import CODEBOOK_SIZE, parse_masks
from tokenizer.masks import decode_rle, encode_rle

MAX_NEW_TOKENS = {"gres": 96, "gcg": 128}  # greedy completion budget of the demo, experiments and monitor


def eval_rows(env, split: str, limit: int | None = None, strict: bool = True) -> list[dict]:
    """Rows of ``env``'s ``split`` (at most ``limit``) without encoded answers."""
    env.check_split(split)
    samples = list(env.samples(split, BadRows(strict=strict)))
    samples = samples[:limit] if limit is not None else samples
    return [r for group in group_by_image(samples) for r in build_rows(group, None)]


def predicted_masks(text: str, row: dict, mask_tokenizer) -> np.ndarray:
    """bool [N,H,W]: one mask per mask group of the completion, decoded on the row's image (N may be 0)."""
    image = load_image(row["image"])
    codes = parse_masks(text, getattr(mask_tokenizer, "codebook_size", CODEBOOK_SIZE))
    if not codes:
        return np.zeros((0, image.height, image.width), bool)
    return np.asarray(mask_tokenizer.decode(image, codes), dtype=bool)


def decode_predictions(texts: list[str], rows: list[dict], mask_tokenizer) -> list[np.ndarray]:
    """``predicted_masks`` for every row (holds them all: use on small sets, e.g. the grid)."""
    return [predicted_masks(t, r, mask_tokenizer) for t, r in zip(texts, rows)]


def score_gres(rows, texts, mask_tokenizer, out_dir: Path) -> dict:
    """ReLA's GRES metrics; writes ``predictions.jsonl`` (text, no-target flag, merged mask per row).

    Rows are decoded and scored one at a time, so memory does not grow with the split.
    """
    from envs.metrics import gres_scores

    def records(f):
        for row, text in zip(rows, texts):
            pred = predicted_masks(text, row, mask_tokenizer)
            merged = pred.any(0)
            pred_nt = len(pred) == 0  # SAMTok: no mask group means "no target"
            f.write(json.dumps({"id": row["id"], "question": row["question"], "completion": text,
                                "pred_no_target": pred_nt, "masks": len(pred), "pred_mask": encode_rle(merged),
                                "gt_no_target": row["no_target"]}) + "\n")
            yield merged, pred_nt, merged_mask(row["masks"], merged.shape), row["no_target"]

    with open(out_dir / "predictions.jsonl", "w") as f:
        return gres_scores(records(f))


def score_gcg(rows, texts, mask_tokenizer, out_dir: Path, embed=None, with_captions: bool = True) -> dict:
    """GLaMM's GCG metrics over per-image prediction JSONs written to ``out_dir/predictions``."""
    from envs.gcg import prediction_record, write_gt_files
    from envs.metrics import gcg_scores

    pred_dir = out_dir / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for row, text in zip(rows, texts):
        record = prediction_record(row["image_id"], text, predicted_masks(text, row, mask_tokenizer))
        (pred_dir / f"{row['image_id']}.json").write_text(json.dumps(record))
    cap_file, mask_file = write_gt_files(rows, out_dir / "gt")
    return gcg_scores(pred_dir, cap_file, mask_file, embed=embed, with_captions=with_captions)


def render_grid(rows, preds, texts, path, n: int = 16) -> Path:
    """A PNG with one line per sample: the image with GT masks | with predicted masks (first ``n`` rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(rows))
    fig, axes = plt.subplots(max(n, 1), 2, figsize=(6, 3.2 * max(n, 1)), squeeze=False)
    for i in range(n):
        image = np.asarray(load_image(rows[i]["image"]), dtype=float) / 255
        gt = np.stack([decode_rle(r, image.shape[:2]) for r in rows[i]["masks"]]) if rows[i]["masks"] else preds[i][:0]
        for ax, masks, title in ((axes[i, 0], gt, "GT: " + rows[i]["question"]), (axes[i, 1], preds[i], "pred: " + texts[i])):
            ax.imshow(_overlay(image, masks))
            ax.set_title(textwrap.shorten(title, 90), fontsize=6, wrap=True)
            ax.axis("off")
    if n == 0:
        axes[0, 0].set_title("no samples")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


def _overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    # Tints plus a white outline, so a mask stays visible on an object of the same colour.
    colours = np.array([[0, 1, 1], [1, 0, 1], [1, 0.5, 0], [0.5, 0, 1], [1, 1, 1], [0, 0, 0]], float)
    out = image.copy()
    for k, m in enumerate(masks):
        out[m] = 0.4 * out[m] + 0.6 * colours[k % len(colours)]
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        out[m & ~inner] = 1.0
    return out


def report(rows, texts, mask_tokenizer, task: str, out_dir, grid: int = 16, embed=None,
           with_captions: bool = True, info: dict | None = None) -> dict:
    """Decode, score, write predictions + ``metrics.json`` (with ``info``) + ``grid.png``; returns the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if task == "gres":
        metrics = score_gres(rows, texts, mask_tokenizer, out_dir)
    else:
        metrics = score_gcg(rows, texts, mask_tokenizer, out_dir, embed, with_captions)
    if grid:
        n = min(grid, len(rows))
        render_grid(rows[:n], decode_predictions(texts[:n], rows[:n], mask_tokenizer), texts[:n], out_dir / "grid.png", n)
    result = {"task": task, "samples": len(rows), "metrics": metrics, **(info or {}),
              "scoring_seconds": round(time.perf_counter() - start, 2)}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    return metrics


def score_task(task: str, rows, texts, mask_tok, out_dir: Path) -> dict:
    """GRES: ReLA's metrics. GCG: GLaMM's AP50/mIoU/recall; METEOR/CIDEr are skipped (they need Java), and
    the recall's phrase similarity is BERT's only where ``SAMTOK_RL_BERT`` names a local checkpoint."""
    if task == "gres":
        return score_gres(rows, texts, mask_tok, out_dir)
    return score_gcg(rows, texts, mask_tok, out_dir, with_captions=False)


def recall_note() -> str:
    """Which phrase similarity GCG recall used: it decides whether recall compares with published numbers."""
    import os

    bert = os.environ.get("SAMTOK_RL_BERT")
    if bert:
        return f"GCG recall's phrase similarity: BERT from {bert}."
    return ("GCG recall's phrase similarity: a character n-gram stand-in (SAMTOK_RL_BERT is not set), so recall is "
            "not comparable to published numbers; METEOR/CIDEr are not computed (they need Java).")


def format_table(metrics: dict) -> str:
    width = max(len(k) for k in metrics) if metrics else 0
    return "\n".join(f"{k:<{width}}  {v:7.2f}" for k, v in metrics.items())


# `--policy tiny` (a random tiny policy, for smoke tests): heads of 32, the smallest vLLM's CPU attention serves,
# so that both backends run the same policy; training recipes keep model.tiny's own head_dim.
EVAL_TINY = {"head_dim": 32}


def vllm_policy_spec(spec: str, out_dir) -> tuple[str, object]:
    """``(path or hub id, processor)`` for vLLM, which loads whole checkpoints only: ``tiny`` is built, and a
    LoRA checkpoint merged, and saved under ``out_dir`` first."""
    from transformers import AutoProcessor

    from rl.policy import load_policy_spec, save_policy

    if spec == "tiny" or (Path(spec) / "adapter_config.json").is_file():
        model, processor = load_policy_spec(spec, tiny=EVAL_TINY)
        name = "policy-tiny" if spec == "tiny" else "policy-merged"
        return str(save_policy(model, processor, Path(out_dir) / name)), processor
    return spec, AutoProcessor.from_pretrained(spec, padding_side="left")


def complete(rows, policy: str, out, backend: str = "auto", device: str | None = None, max_new_tokens: int = 256,
             batch_size: int = 8, **vllm_options) -> tuple[list[str], dict]:
    """Completions of ``rows`` by ``policy`` from the chosen backend, and what to record about the run.
    ``vllm_options`` go to ``rl.vllm_backend.generate`` (the HF backend has none)."""
    from rl import vllm_backend
    from rl.policy import load_policy_spec

    backend = vllm_backend.pick_backend(backend)
    start = time.perf_counter()
    if backend == "hf":
        model, processor = load_policy_spec(policy, tiny=EVAL_TINY, device=device)
        texts = generate(model, processor, rows, max_new_tokens, batch_size)
        del model
    else:
        path, processor = vllm_policy_spec(policy, out)
        texts = vllm_backend.generate(path, processor, rows, max_new_tokens, **vllm_options)
    return texts, {"backend": backend, "generation_seconds": round(time.perf_counter() - start, 2)}


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def command(policy: str, env: str, out: str, split: str = "val", option: list[str] = (), tokenizer: str = "tiny16",
            tokenizer_device: str | None = None, limit: int | None = None, batch_size: int = 8,
            max_new_tokens: int = 256, grid: int = 16, no_captions: bool = False, bert: str | None = None,
            lenient: bool = False, backend: str = "auto", device: str | None = None, **vllm_options) -> int:
    """``samtok-rl eval``: generate with ``policy`` over ``env``'s ``split`` and write the official metrics to
    ``out``. ``vllm_options``: ``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``tensor_parallel_size``
    (``rl.vllm_backend.engine_kwargs``, which holds their defaults). The exit status."""
    from envs.prepare import parse_options
    from rl.preemption import Stopped, sigterm_stops
    from tokenizer.load import load_mask_tokenizer

    def run():
        environment = get_env(env, **parse_options(option))
        rows = eval_rows(environment, split, limit, strict=not lenient)
        embed = None
        if bert:
            from envs.metrics import bert_embed

            embed = bert_embed(bert)
        mask_tokenizer = load_mask_tokenizer(tokenizer)  # on the CPU until the policy is gone
        texts, info = complete(rows, policy, out, backend, device, max_new_tokens, batch_size, **vllm_options)
        mask_tokenizer = mask_tokenizer.to(tokenizer_device or _default_device())
        return environment, rows, info, report(rows, texts, mask_tokenizer, environment.task, out, grid, embed,
                                               not no_captions, info)

    try:
        with sigterm_stops():
            environment, rows, info, metrics = run()
    except (ValueError, FileNotFoundError) as e:
        from rl.errors import bad_input

        return bad_input("samtok-rl eval: error", e)
    except Stopped:
        print(f"stopped on SIGTERM: the evaluation did not finish (what {out} holds is incomplete); run the same "
              "command again", file=sys.stderr)
        return 0
    print(f"{environment.name} {split}: {len(rows)} samples, {info['backend']} backend")
    print(format_table(metrics))
    return 0
