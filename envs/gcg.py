"""GCG on GranD-f: the official files in, samples with GLaMM's questions and SAMTok answers out.

* Train: ``GranDf_HA_GCG_train.json``, a list of ``{"file_name", "caption", "groundings": {phrase:
  {"token_positives": [start, end], "rle_masks": [RLE, ...]}}}``. As GLaMM's loader does, the caption
  is ``caption.strip('"').strip()``, the RLEs of one phrase are OR-ed into one mask, and phrases are
  ordered by their start offset.
* Val/test: ``{val,test}_gcg_coco_caption_gt.json`` (COCO captions; each caption annotation carries
  ``labels``, the GT phrases) and ``{val,test}_gcg_coco_mask_gt.json`` (COCO instances, one RLE per
  phrase). Phrase ``k`` goes with the image's ``k``-th mask annotation in file order, which is the
  alignment GLaMM's evaluator assumes; each phrase is located in the caption left to right.

Predictions are written in GLaMM's per-image JSON (``prediction_record``) for ``envs.metrics.gcg_scores``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

from envs.base import BadRows, Environment, load_json, safe_image_path
from tokenizer.codec import OBJ_END, OBJ_START

# GLaMM's "brief description" GCG questions, as SAMTok uses them.
QUESTIONS = (
    "Could you please give me a brief description of the image? Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Can you provide a brief description of the this image? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Please briefly describe the contents of the image. Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Could you give a brief explanation of what can be found within this picture? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Could you give me an brief explanation of this picture? Please respond with interleaved segmentation masks for the corresponding phrases.",
    "Could you provide me with a briefly analysis of this photo? Please output with interleaved segmentation masks for the corresponding parts of the answer.",
)
EVAL_QUESTION = QUESTIONS[0]  # SAMTok's official GCG eval prompt
SPLITS = ("train", "val", "test")


def grandf_train_samples(ann_file, image_root, bad_rows: BadRows | None = None, seed: int = 0) -> list[dict]:
    bad_rows = bad_rows if bad_rows is not None else BadRows(strict=True)
    records = load_json(ann_file)
    if not isinstance(records, list):
        raise ValueError(f"{ann_file}: expected a JSON list of records, got {type(records).__name__}")
    out = []
    for idx, rec in enumerate(records):
        try:
            out.append(_train_sample(rec, idx, image_root, seed, ann_file))
        except (ValueError, KeyError, TypeError) as e:
            bad_rows.report(ann_file, idx, str(e) if isinstance(e, ValueError) else f"malformed record: {e!r}")
    return out


def _train_sample(rec, idx, image_root, seed, ann_file) -> dict:
    from tokenizer.masks import decode_rle, encode_rle

    if not isinstance(rec, dict):
        raise ValueError("record is not an object")
    path = _image(image_root, rec.get("file_name"))
    if not isinstance(rec.get("caption"), str):
        raise ValueError("'caption' must be a string")
    caption = rec["caption"].strip('"').strip()
    groundings = rec["groundings"]
    if not isinstance(groundings, dict) or not groundings:
        raise ValueError("no groundings")
    items = []
    for phrase, g in groundings.items():
        start, end = (int(v) for v in g["token_positives"])
        if not 0 <= start < end <= len(caption):
            raise ValueError(f"phrase {phrase!r}: span {[start, end]} is outside the caption")
        rles = g["rle_masks"]
        if not isinstance(rles, list) or not rles:
            raise ValueError(f"phrase {phrase!r}: no rle_masks")
        merged = np.logical_or.reduce([decode_rle(r) for r in rles])
        if not merged.any():
            raise ValueError(f"phrase {phrase!r}: empty mask")
        items.append(((start, end), encode_rle(merged)))
    items.sort(key=lambda it: it[0][0])
    spans = [s for s, _ in items]
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise ValueError(f"overlapping phrase spans {spans}")
    name = Path(rec["file_name"]).stem
    return {
        "id": f"grandf-train-{idx}", "image_id": name, "task": "gcg", "image": path,
        "masks": [m for _, m in items], "question": random.Random(f"{seed}-{idx}").choice(QUESTIONS),
        "caption": caption, "spans": spans, "phrases": [caption[a:b] for a, b in spans],
        "source": f"{ann_file}[{idx}]",
    }


def grandf_eval_samples(caption_file, mask_file, image_root, bad_rows: BadRows | None = None) -> list[dict]:
    """Samples of the val or test split from GLaMM's two COCO-format GT files."""
    from tokenizer.masks import validate_rle

    bad_rows = bad_rows if bad_rows is not None else BadRows(strict=True)
    cap, masks = load_json(caption_file), load_json(mask_file)
    for f, d in ((caption_file, cap), (mask_file, masks)):
        if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("annotations"), list):
            raise ValueError(f"{f}: expected a COCO-format object with 'images' and 'annotations' lists")
    captions: dict = {}
    for a in cap["annotations"]:
        if isinstance(a, dict):
            captions.setdefault(a.get("image_id"), a)  # GLaMM uses the first caption entry of an image
    per_image: dict = {}
    for k, a in enumerate(masks["annotations"]):
        if not isinstance(a, dict):
            bad_rows.report(mask_file, k, "annotation is not an object")
            continue
        try:
            validate_rle(a.get("segmentation"))
        except ValueError as e:
            bad_rows.report(mask_file, k, f"corrupt RLE: {e}")
            per_image.setdefault(a.get("image_id"), []).append(None)
            continue
        per_image.setdefault(a.get("image_id"), []).append(a["segmentation"])
    out = []
    for idx, im in enumerate(cap["images"]):
        try:
            sample = _eval_sample(im, captions, per_image, image_root)
            out.append({**sample, "source": f"{caption_file}[{idx}]"})
        except (ValueError, KeyError, TypeError) as e:
            bad_rows.report(caption_file, idx, str(e) if isinstance(e, ValueError) else f"malformed image entry: {e!r}")
    return out


def _eval_sample(im, captions, per_image, image_root) -> dict:
    from tokenizer.masks import compact_rle

    image_id = im["id"]
    path = _image(image_root, im.get("file_name"))
    ann = captions.get(image_id)
    if ann is None:
        raise ValueError(f"image {image_id!r} has no caption annotation")
    caption, labels = ann["caption"], ann.get("labels", [])
    if not isinstance(caption, str) or not isinstance(labels, list):
        raise ValueError(f"image {image_id!r}: caption must be a string and labels a list")
    rles = per_image.get(image_id, [])
    if any(r is None for r in rles):
        raise ValueError(f"image {image_id!r} has a corrupt mask (see the mask file's report)")
    if len(rles) != len(labels):
        raise ValueError(f"image {image_id!r}: {len(labels)} phrases but {len(rles)} masks")
    if not labels:
        raise ValueError(f"image {image_id!r} has no phrases")
    spans = locate_phrases(caption, labels)
    return {
        "id": f"grandf-{image_id}", "image_id": str(image_id), "task": "gcg", "image": path,
        "masks": [compact_rle(r) for r in rles], "question": EVAL_QUESTION,
        "caption": caption, "spans": spans, "phrases": list(labels),
    }


def locate_phrases(caption: str, phrases) -> list[tuple[int, int]]:
    """Character span of each phrase, searched left to right (case-insensitive when the exact text is absent)."""
    spans, pos, lower = [], 0, caption.lower()
    for p in phrases:
        if not isinstance(p, str) or not p:
            raise ValueError(f"phrase must be a non-empty string, got {p!r}")
        at = caption.find(p, pos)
        if at < 0:
            at = lower.find(p.lower(), pos)
        if at < 0:
            raise ValueError(f"phrase {p!r} not found in the caption after offset {pos}")
        spans.append((at, at + len(p)))
        pos = at + len(p)
    return spans



def _image(image_root, name) -> Path:
    path = safe_image_path(image_root, name)
    if not path.is_file():
        raise ValueError(f"missing image: {path}")
    return path



# -------------------------------------------------------------------------------------- predictions
_PHRASE_RE = re.compile(re.escape(OBJ_START) + r"(.*?)" + re.escape(OBJ_END), re.S)
_TAG_RE = re.compile(r"<[^>]*>")


def parse_gcg_text(text: str) -> tuple[str, list[str]]:
    """SAMTok's GCG eval parsing: phrases inside object-ref tokens; the caption is the text with all
    ``<...>`` tags removed and whitespace collapsed. Never raises."""
    if not isinstance(text, str):
        return "", []
    phrases = [p.strip() for p in _PHRASE_RE.findall(text)]
    caption = " ".join(_TAG_RE.sub("", text).split())
    return caption, phrases


def prediction_record(image_id, text: str, masks) -> dict:
    """GLaMM's per-image prediction JSON from a completion and its decoded masks (one per mask group)."""
    from tokenizer.masks import encode_rle

    caption, phrases = parse_gcg_text(text)
    return {"image_id": image_id, "caption": caption, "phrases": phrases, "pred_masks": [encode_rle(m) for m in masks]}


def write_gt_files(rows, out_dir) -> tuple[Path, Path]:
    """GLaMM-format caption and mask GT files for GCG rows (what ``gcg_scores`` reads)."""
    from pycocotools import mask as mask_utils

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images, caps, anns = [], [], []
    for r in rows:
        h, w = r["masks"][0]["size"] if r["masks"] else (0, 0)
        images.append({"id": r["image_id"], "file_name": f"{r['image_id']}", "height": h, "width": w})
        caps.append({"id": len(caps) + 1, "image_id": r["image_id"], "caption": r["caption"], "labels": list(r["phrases"])})
        for m in r["masks"]:
            coco = {"size": list(m["size"]), "counts": m["counts"].encode("ascii")}
            anns.append({
                "id": len(anns) + 1, "image_id": r["image_id"], "category_id": 1, "segmentation": m, "iscrowd": 0,
                "area": float(mask_utils.area(coco)), "bbox": [float(v) for v in mask_utils.toBbox(coco)],
            })
    cap_path, mask_path = out_dir / "gcg_coco_caption_gt.json", out_dir / "gcg_coco_mask_gt.json"
    cap_path.write_text(json.dumps({"images": images, "annotations": caps}))
    mask_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
    return cap_path, mask_path


def grandf_env(root, seed: int = 0) -> Environment:
    """GranD-f as an ``Environment``; ``root`` is GLaMM's ``GranDf`` folder (annotations + GranDf_HA_images)."""
    root = Path(root)

    def samples(split: str, bad_rows: BadRows | None = None):
        if split == "train":
            return grandf_train_samples(root / "annotations/train/GranDf_HA_GCG_train.json",
                                        root / "GranDf_HA_images/train", bad_rows, seed)
        gt = root / "annotations/val_test"
        return grandf_eval_samples(gt / f"{split}_gcg_coco_caption_gt.json", gt / f"{split}_gcg_coco_mask_gt.json",
                                   root / "GranDf_HA_images/val_test", bad_rows)

    return Environment(name="grandf", task="gcg", splits=SPLITS, samples=samples)
