"""The official GRES (ReLA) and GCG (GLaMM) metrics, reimplemented to give the same numbers.

GRES follows ``henghuiding/ReLA`` ``gres_model/evaluation/refer_evaluation.py``; GCG follows
``mbzuai-oryx/groundingLMM`` ``eval/gcg/evaluate.py``. Their quirks are kept on purpose (each one is
named where it happens), because a metric that differs from the official evaluator by a hair makes
every comparison with published numbers worthless. The only deliberate differences:

* every value is in percent (ReLA returns N-acc/T-acc as fractions and GLaMM prints fractions);
* where the official code would divide by zero or crash (no target samples, no predictions at all),
  the value is 0.0 instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from envs.base import load_json

PR_THRESHOLDS = (0.7, 0.8, 0.9)


# ----------------------------------------------------------------------------------------------- GRES
def gres_scores(records: Iterable) -> dict:
    """ReLA's gIoU, cIoU, N-acc, T-acc, Pr@0.7/0.8/0.9 (percent) over ``(pred_mask, pred_nt, gt_mask, gt_nt)``.

    Masks are boolean HxW numpy arrays (the merged prediction and the merged GT); ``pred_mask`` may be
    ``None`` (read as empty). Per sample, with I/U the pixel intersection/union:

    * GT no-target, predicted no-target ("TP" in ReLA's inverted naming): IoU 1, adds nothing to ΣI, ΣU.
    * GT no-target, predicted target ("FN"): IoU 0, adds U (the predicted area) to ΣU.
    * GT target, predicted no-target ("FP"): I is forced to 0, U is kept; IoU = I/U (0 when U = 0).
    * GT target, predicted target ("TN"): IoU = I/U (0 when U = 0).
    * Pr@X counts target samples with IoU >= X, over target samples only.

    ``records`` may be any iterable (a generator keeps memory flat on big splits).
    """
    inter, union, gt_nt, pred_nt = [], [], [], []
    for k, (pred, p_nt, gt, g_nt) in enumerate(records):
        gt = np.asarray(gt, dtype=bool)
        pred = np.zeros_like(gt) if pred is None else np.asarray(pred, dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"record {k}: prediction shape {pred.shape} != GT shape {gt.shape}")
        # count_nonzero on a fused and/or is the fast path: no temporary int arrays, no sums of bools.
        inter.append(np.count_nonzero(np.logical_and(pred, gt)))
        union.append(np.count_nonzero(np.logical_or(pred, gt)))
        gt_nt.append(bool(g_nt))
        pred_nt.append(bool(p_nt))
    return _gres_from_counts(np.array(inter, float), np.array(union, float), np.array(gt_nt, bool), np.array(pred_nt, bool))


def _gres_from_counts(inter, union, gt_nt, pred_nt) -> dict:
    tp = gt_nt & pred_nt  # correctly rejected
    fp = ~gt_nt & pred_nt
    tn = ~gt_nt & ~pred_nt
    inter = np.where(gt_nt | fp, 0.0, inter)  # no-target samples add no I; a rejected target has I forced to 0
    union = np.where(tp, 0.0, union)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iou = np.where(tp, 1.0, iou)
    n, n_target, n_empty = len(iou), int((~gt_nt).sum()), int(gt_nt.sum())
    out = {
        "gIoU": 100.0 * iou.sum() / n if n else 0.0,
        "cIoU": 100.0 * inter.sum() / union.sum() if union.sum() > 0 else 0.0,
    }
    # Quirk kept: ReLA reports both accuracies as 0 when the split has no no-target sample at all.
    out["N-acc"] = 100.0 * tp.sum() / n_empty if n_empty else 0.0
    out["T-acc"] = 100.0 * tn.sum() / n_target if n_empty and n_target else 0.0
    for t in PR_THRESHOLDS:
        hits = ((iou >= t) & ~gt_nt).sum()
        out[f"Pr@{t:.1f}"] = 100.0 * hits / n_target if n_target else 0.0
    return {k: float(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ GCG
def gcg_scores(pred_dir, gt_caption_file, gt_mask_file, embed: Callable[[str], np.ndarray] | None = None,
               with_captions: bool = True) -> dict:
    """GLaMM's AP50, mIoU, recall, METEOR and CIDEr (percent) for a folder of per-image prediction JSONs.

    ``pred_dir`` holds ``<image_id>.json`` for every image of the caption GT file, each with
    ``caption``, ``phrases`` and ``pred_masks`` (COCO RLE, ``pred_masks[j]`` belongs to ``phrases[j]``).
    ``embed`` maps a phrase to a vector for the recall's phrase similarity; ``None`` picks BERT when a
    local checkpoint is configured (``SAMTOK_RL_BERT``), else a character-n-gram fallback that warns
    (see ``default_embed``). ``with_captions=False`` skips METEOR/CIDEr (they need Java).
    """
    from pycocotools import mask as mask_utils

    from tokenizer.masks import validate_rle

    cap_gt, mask_gt = _coco_file(gt_caption_file), _coco_file(gt_mask_file)
    image_ids = [img["id"] for img in cap_gt["images"]]
    preds = {i: _read_prediction(Path(pred_dir), i, validate_rle) for i in image_ids}
    gt_rles: dict = {i: [] for i in image_ids}
    for k, ann in enumerate(mask_gt["annotations"]):  # file order = the order GLaMM iterates coco_gt.anns in
        try:
            validate_rle(ann["segmentation"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{gt_mask_file}: annotations[{k}]: bad segmentation: {e}") from None
        if ann.get("image_id") in gt_rles:
            gt_rles[ann["image_id"]].append(ann["segmentation"])
    gt_labels: dict = {}
    for ann in cap_gt["annotations"]:
        gt_labels.setdefault(ann.get("image_id"), ann.get("labels", []))  # GLaMM takes the first caption entry

    def decode(rles):
        return [mask_utils.decode(_coco_rle(r)).astype(bool) for r in rles]

    embed = embed or default_embed()
    mious, tp, total = [], 0, 0
    for i in image_ids:  # one image's masks in memory at a time: GranD-f images are large
        gt, pred = decode(gt_rles[i]), decode(preds[i]["pred_masks"])
        if len({m.shape for m in gt + pred}) > 1:
            raise ValueError(f"{Path(pred_dir) / f'{i}.json'}: predicted mask size differs from the GT's")
        mious.append(_greedy_miou(pred, gt))
        labels = gt_labels.get(i)
        if labels is None:  # GLaMM's [0] on an empty list raises before counting; the image adds nothing
            continue
        total += len(labels)
        try:
            tp += _greedy_recall(gt, labels, pred, preds[i]["phrases"], embed)
        except IndexError:
            pass  # #phrases != #masks: GLaMM catches the error per image; its GT phrases still count
    out = {
        "AP50": 100.0 * _ap50(mask_gt, preds, image_ids),
        "mIoU": 100.0 * float(np.mean(mious)) if mious else 0.0,
        "recall": 100.0 * tp / total if total else 0.0,
    }
    if with_captions:
        out.update(caption_scores(cap_gt, {i: preds[i]["caption"] for i in image_ids}))
    return out


def _coco_file(path) -> dict:
    data = load_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"{path}: expected a COCO-format object with 'images' and 'annotations' lists")
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise ValueError(f"{path}: images[{k}] has no 'id'")
    return data



def _read_prediction(pred_dir: Path, image_id, validate_rle) -> dict:
    path = pred_dir / f"{image_id}.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing prediction for image {image_id!r}")
    pred = load_json(path)
    # GLaMM also accepts a file whose single top-level key wraps the prediction dict.
    if isinstance(pred, dict) and pred and isinstance(next(iter(pred.values())), dict) and "caption" not in pred:
        pred = next(iter(pred.values()))
    for key in ("caption", "phrases", "pred_masks"):
        if not isinstance(pred, dict) or key not in pred:
            raise ValueError(f"{path}: prediction lacks {key!r}")
    for j, rle in enumerate(pred["pred_masks"]):
        try:
            validate_rle(rle)
        except ValueError as e:
            raise ValueError(f"{path}: pred_masks[{j}]: {e}") from None
    return pred


def _coco_rle(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):
        from pycocotools import mask as mask_utils

        h, w = rle["size"]
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _ap50(mask_gt: dict, preds: dict, image_ids) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [
        {"image_id": i, "category_id": 1, "segmentation": _coco_rle(r), "score": 1.0}
        for i in image_ids for r in preds[i]["pred_masks"]
    ]
    if not results:  # pycocotools' loadRes crashes on an empty list; nothing predicted scores 0
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = mask_gt
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[1]), 0.0)  # -1 means "no GT": report 0


def _iou_matrix(a: list, b: list) -> np.ndarray:
    """GLaMM's compute_iou for every pair: I/U with no epsilon, so empty vs empty gives NaN."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    fa = np.stack(a).reshape(len(a), -1).astype(np.float32)
    fb = np.stack(b).reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return (inter / union).astype(np.float64)


def _greedy_miou(pred: list, gt: list) -> float:
    """Repeatedly pair the global max IoU (> 0) and drop its row and column; unmatched masks cost nothing.

    Quirk kept: a NaN (empty vs empty) makes ``max`` NaN, which ends the loop at once.
    """
    m = _iou_matrix(pred, gt)
    paired = []
    while m.size > 0 and np.max(m) > 0:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        paired.append(m[r, c])
        m = np.delete(np.delete(m, r, axis=0), c, axis=1)
    return float(np.mean(paired)) if paired else 0.0


def _greedy_recall(gt_masks, gt_labels, pred_masks, pred_labels, embed) -> int:
    """GLaMM's find_best_matches: take the max-IoU pair; stop at the first pair under IoU 0.5 or similarity 0.5.

    Phrases align with masks by position; a count mismatch raises IndexError here as it does there.
    """
    ious = _iou_matrix(gt_masks, pred_masks)
    sims = np.zeros((len(gt_labels), len(pred_labels)))
    if len(gt_labels) and len(pred_labels):
        g = np.stack([np.asarray(embed(t), float) for t in gt_labels])
        p = np.stack([np.asarray(embed(t), float) for t in pred_labels])
        sims = _cosine(g, p)
    matches = 0
    while ious.size > 0:
        idx = np.unravel_index(np.argmax(ious), ious.shape)
        if ious[idx] < 0.5 or sims[idx] < 0.5:
            break
        matches += 1
        ious[idx[0], :] = 0
        ious[:, idx[1]] = 0
        sims[idx[0], :] = 0
        sims[:, idx[1]] = 0
    return matches


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # sklearn's cosine_similarity: zero vectors have similarity 0 with everything.
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = a / np.where(na == 0, 1, na)
    b = b / np.where(nb == 0, 1, nb)
    return a @ b.T


def caption_scores(cap_gt: dict, captions: dict) -> dict:
    """METEOR and CIDEr (percent) as COCOEvalCap computes them (PTB tokenizer), skipping SPICE (offline)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts: dict = {}
    for ann in cap_gt.get("annotations", []):
        if ann["image_id"] in captions:
            gts.setdefault(ann["image_id"], []).append({"caption": ann["caption"]})
    ids = [i for i in captions if i in gts]
    if not ids:
        return {"METEOR": 0.0, "CIDEr": 0.0}
    res = {i: [{"caption": captions[i]}] for i in ids}
    gts = {i: gts[i] for i in ids}
    with contextlib.redirect_stdout(io.StringIO()):
        # One tokenizer call for both sides: it is line-by-line, and each call starts a JVM.
        both = PTBTokenizer().tokenize({**{("gt", i): v for i, v in gts.items()}, **{("res", i): v for i, v in res.items()}})
    gts = {i: both[("gt", i)] for i in ids}
    res = {i: both[("res", i)] for i in ids}
    meteor = Meteor()
    try:
        m, _ = meteor.compute_score(gts, res)
    finally:
        with meteor.lock:  # stop the JVM now rather than at garbage collection
            meteor.meteor_p.stdin.close()
            meteor.meteor_p.kill()
            meteor.meteor_p.wait()
    c, _ = Cider().compute_score(gts, res)
    return {"METEOR": 100.0 * float(m), "CIDEr": 100.0 * float(c)}


# -------------------------------------------------------------------------------- phrase embeddings
def bert_embed(path: str) -> Callable[[str], np.ndarray]:
    """GLaMM's phrase embedding: mean of BERT's last hidden state over all tokens (CLS/SEP included)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    cache: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in cache:
            with torch.no_grad():
                out = model(**tok(text, return_tensors="pt", max_length=512, truncation=True))
            cache[text] = out.last_hidden_state[0].mean(0).numpy()
        return cache[text]

    embed.__name__ = "bert"
    return embed


def ngram_embed(text: str, dim: int = 2048) -> np.ndarray:
    """Offline fallback: hashed character 3-grams of the lower-cased phrase (deterministic, no model).

    It ranks identical and near-identical phrases as similar, but its similarity scale differs from
    BERT's (BERT gives unrelated phrases ~0.6-0.8), so recall computed with it is NOT comparable to
    published GCG numbers.
    """
    s = f"  {' '.join(str(text).lower().split())} "
    v = np.zeros(dim)
    for i in range(len(s) - 2):
        # zlib.crc32 rather than hash(): str hashes change per process.
        v[zlib.crc32(s[i : i + 3].encode()) % dim] += 1.0
    return v


def default_embed() -> Callable[[str], np.ndarray]:
    """BERT from the local checkpoint named by ``SAMTOK_RL_BERT``, else the n-gram fallback with a warning."""
    path = os.environ.get("SAMTOK_RL_BERT")
    if path:
        return bert_embed(path)
    warnings.warn(
        "GCG recall: no local BERT configured (set SAMTOK_RL_BERT to a bert-base-uncased folder); using "
        "character n-gram phrase similarity, so recall is NOT comparable to published numbers",
        stacklevel=2,
    )
    return ngram_embed
