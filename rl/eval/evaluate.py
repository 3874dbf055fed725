"""``samtok-rl eval``: generate with a policy over an environment split and report the official metrics.

Pipeline (each step is a function the demo can call on its own):

1. ``eval_rows``: the split's rows (GT masks as RLE; answers are not needed to score);
2. ``rl.eval.generation.generate``: HF ``generate`` in batches, greedy by default, decoded with special tokens kept
   (mask and object-ref tokens) exactly as the rewards read completions; or ``rl.eval.vllm_backend.generate``,
   the same prompts, images and decoding served by vLLM (``--backend vllm``, or ``auto`` on a GPU);
3. ``envs.base.predicted_masks``: every mask group of a completion, parsed with the codec's repair rules and
   decoded by the ``MaskTokenizer`` on the row's image (row by row, so memory stays flat);
4. the task's ``score`` (``envs.task``): GRES with ReLA's metric (no mask group = "no target"; the groups'
   masks are unioned and compared with the merged GT), GCG with GLaMM's evaluator on per-image JSONs;
5. ``render_grid``: a PNG of GT vs predicted mask overlays.

``report`` runs steps 3-5 on completions from either backend. The mask tokenizer waits on the CPU until
the policy (or the vLLM engine) is released, then moves to ``--tokenizer-device`` (the GPU when there is one).
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np

from envs import BadRows, get_task
from envs.base import build_rows, group_by_image, load_image, predicted_masks
from rl.eval.generation import generate
from tokenizer.masks import decode_rle


def eval_rows(env, split: str, limit: int | None = None, strict: bool = True) -> list[dict]:
    """Rows of ``env``'s ``split`` (at most ``limit``) without encoded answers."""
    env.check_split(split)
    samples = list(env.samples(split, BadRows(strict=strict)))
    samples = samples[:limit] if limit is not None else samples
    return [r for group in group_by_image(samples) for r in build_rows(group, None)]


def decode_predictions(texts: list[str], rows: list[dict], mask_tokenizer) -> list[np.ndarray]:
    """``predicted_masks`` for every row (holds them all: use on small sets, e.g. the grid)."""
    return [predicted_masks(t, r, mask_tokenizer) for t, r in zip(texts, rows)]


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
    metrics = get_task(task).score(rows, texts, mask_tokenizer, out_dir, embed=embed, with_captions=with_captions)
    if grid:
        n = min(grid, len(rows))
        render_grid(rows[:n], decode_predictions(texts[:n], rows[:n], mask_tokenizer), texts[:n], out_dir / "grid.png", n)
    result = {"task": task, "samples": len(rows), "metrics": metrics, **(info or {}),
              "scoring_seconds": round(time.perf_counter() - start, 2)}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    return metrics


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

    from rl.policy.model import load_policy_spec, save_policy

    if spec == "tiny" or (Path(spec) / "adapter_config.json").is_file():
        model, processor = load_policy_spec(spec, tiny=EVAL_TINY)
        name = "policy-tiny" if spec == "tiny" else "policy-merged"
        return str(save_policy(model, processor, Path(out_dir) / name)), processor
    return spec, AutoProcessor.from_pretrained(spec, padding_side="left")


def complete(rows, policy: str, out, backend: str = "auto", device: str | None = None, max_new_tokens: int = 256,
             batch_size: int = 8, **vllm_options) -> tuple[list[str], dict]:
    """Completions of ``rows`` by ``policy`` from the chosen backend, and what to record about the run.
    ``vllm_options`` go to ``rl.eval.vllm_backend.generate`` (the HF backend has none)."""
    from rl.eval import vllm_backend
    from rl.policy.model import load_policy_spec

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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


