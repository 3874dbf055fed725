"""GRES on gRefCOCO: the official files in, samples with SAMTok's questions and answers out.

Files (ReLA's ``datasets/DATASET.md``): ``grefcoco/grefs(unc).json`` (a list of refs: ``ref_id``,
``image_id``, ``split``, ``ann_id`` list with ``[-1]`` meaning no target, ``sentences`` with ``raw``),
``grefcoco/instances.json`` (COCO ``images`` and ``annotations``) and the COCO ``train2014`` images.
Sample construction follows ReLA's loader: one sample per sentence; crowd annotations are skipped;
polygons with fewer than three points are dropped; every target instance keeps its own mask (the
metric merges them). Unlike ReLA, a target ref left with no usable instance is reported as a bad row
rather than kept with an empty mask, because it has no answer to train on.
"""

from __future__ import annotations

import random
from pathlib import Path

from envs.base import BadRows, Environment, load_json, safe_image_path, sort_instances

# The 16 GRES question templates of SAMTok's gRefCOCO data (the SEG_QUESTIONS list its GRES dataset
# class draws from; the same list sits beside ``mask_generation_gres209k.json``): four phrasings each
# with and without final punctuation, in two groups.
TEMPLATES = (
    "Can you segment the {expr} in this image?",
    "Please segment {expr} in this image.",
    "What is {expr} in this image? Please respond with segmentation mask.",
    "What is {expr} in this image? Please output segmentation mask.",
    "Can you segment the {expr} in this image",
    "Please segment {expr} in this image",
    "What is {expr} in this image? Please respond with segmentation mask",
    "What is {expr} in this image? Please output segmentation mask",
    "Could you provide a segmentation mask for the {expr} in this image?",
    "Please identify and segment the {expr} in this image.",
    "Where is the {expr} in this picture? Please respond with a segmentation mask.",
    "Can you highlight the {expr} in this image with a segmentation mask?",
    "Could you provide a segmentation mask for the {expr} in this image",
    "Please identify and segment the {expr} in this image",
    "Where is the {expr} in this picture? Please respond with a segmentation mask",
    "Can you highlight the {expr} in this image with a segmentation mask",
)
EVAL_TEMPLATE = "Please segment {expr} in this image."  # the group's GRES eval prompt
SPLITS = ("train", "val", "testA", "testB")


def grefcoco_samples(refs_file, instances_file, image_root, split: str, bad_rows: BadRows | None = None,
                     seed: int = 0) -> list[dict]:
    """Samples of one gRefCOCO split, grouped by image. Train questions draw a template (seeded by
    ``seed`` and the sentence id); other splits use the eval prompt.

    A target ref whose instances are all crowd (or have no valid polygon) has nothing to learn from, so
    it is a bad row in train; in the eval splits it is kept as ReLA keeps it, a target sample with an
    empty GT mask (it can only score IoU 0), so that the metrics count the same samples as ReLA's. Its
    answer string, having no mask to write, reads ``No target.``: score such splits with the metrics.
    """
    from pycocotools import mask as mask_utils

    if split not in SPLITS:
        raise ValueError(f"gRefCOCO split must be one of {SPLITS}, got {split!r}")
    bad_rows = bad_rows if bad_rows is not None else BadRows(strict=True)
    refs = load_json(refs_file, list)
    instances = load_json(instances_file, dict)
    images = {im.get("id"): im for im in instances.get("images", []) if isinstance(im, dict)}
    anns = {a.get("id"): a for a in instances.get("annotations", []) if isinstance(a, dict)}
    out = []
    for idx, ref in enumerate(refs):
        if not isinstance(ref, dict):
            bad_rows.report(refs_file, idx, "ref is not a JSON object")
            continue
        if ref.get("split") != split:
            continue
        try:
            image, masks, no_target = _ref_instances(ref, images, anns, image_root, keep_empty=split != "train")
        except ValueError as e:
            bad_rows.report(refs_file, idx, str(e))
            continue
        boxes = [mask_utils.toBbox(_coco(m)).tolist() for m in masks]
        order = sort_instances([(x, y, x + w, y + h) for x, y, w, h in boxes])
        masks = [masks[k] for k in order]
        for s, sent in enumerate(ref["sentences"]):
            expr = sent.get("raw", sent.get("sent")) if isinstance(sent, dict) else None
            if not isinstance(expr, str) or not expr.strip():
                bad_rows.report(refs_file, idx, f"sentences[{s}] has no 'raw' text")
                continue
            sent_id = sent.get("sent_id", s)
            template = random.Random(f"{seed}-{sent_id}").choice(TEMPLATES) if split == "train" else EVAL_TEMPLATE
            out.append({
                "id": f"grefcoco-{split}-{ref.get('ref_id', idx)}-{sent_id}", "image_id": str(ref["image_id"]),
                "task": "gres", "image": image, "masks": masks, "question": template.format(expr=expr.strip()),
                "expression": expr.strip(), "no_target": no_target, "source": f"{refs_file}[{idx}]",
            })
    out.sort(key=lambda s: s["image_id"])  # stable: keeps file order within an image
    return out


def _ref_instances(ref, images, anns, image_root, keep_empty: bool = False):
    """``(image path, [RLE per usable instance], no_target)`` of one ref; ``ValueError`` names what is wrong."""
    for key in ("image_id", "ann_id", "sentences"):
        if key not in ref:
            raise ValueError(f"missing field {key!r}")
    if not isinstance(ref["sentences"], list) or not ref["sentences"]:
        raise ValueError("'sentences' must be a non-empty list")
    image = images.get(ref["image_id"])
    if image is None:
        raise ValueError(f"image_id {ref['image_id']!r} is not in instances.json")
    path = safe_image_path(image_root, image.get("file_name"))
    if not path.is_file():
        raise ValueError(f"missing image: {path}")
    h, w = image.get("height"), image.get("width")
    ann_ids = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
    if ann_ids == [-1]:
        return path, [], True
    masks = []
    for ann_id in ann_ids:
        ann = anns.get(ann_id)
        if ann is None:
            raise ValueError(f"ann_id {ann_id!r} is not in instances.json")
        if ann.get("image_id") != ref["image_id"]:
            raise ValueError(f"ann_id {ann_id!r} belongs to image {ann.get('image_id')!r}, not {ref['image_id']!r}")
        if ann.get("iscrowd"):
            continue
        rle = _segmentation_rle(ann.get("segmentation"), h, w)
        if rle is not None:
            masks.append(rle)
    if not masks and not keep_empty:
        raise ValueError("target ref with no usable instance (all crowd or invalid polygons)")
    return path, masks, False


def _segmentation_rle(segm, h, w):
    """A COCO segmentation (polygons or RLE) as our RLE dict; None when no polygon is valid."""
    from tokenizer.masks import compact_rle, polygons_to_rle, validate_rle

    if isinstance(segm, dict):
        if list(validate_rle(segm)) != [h, w]:
            raise ValueError(f"segmentation size {segm['size']} does not match the image {h}x{w}")
        return compact_rle(segm)
    if not isinstance(segm, list):
        raise ValueError(f"segmentation must be polygons or RLE, got {type(segm).__name__}")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"image height/width must be positive integers, got {h!r}x{w!r}")
    polys = [p for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for p in polys for v in p):
        raise ValueError("polygon coordinates must be numbers")
    if not polys:
        return None
    return polygons_to_rle(polys, h, w)


def _coco(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def grefcoco_env(root, image_root, refs_name: str = "grefs(unc).json", seed: int = 0) -> Environment:
    """gRefCOCO as an ``Environment``: ``root`` holds the refs and ``instances.json``; ``image_root`` train2014."""
    root = Path(root)

    def samples(split: str, bad_rows: BadRows | None = None):
        return grefcoco_samples(root / refs_name, root / "instances.json", image_root, split, bad_rows, seed)

    return Environment(name="grefcoco", task="gres", splits=SPLITS, samples=samples)
