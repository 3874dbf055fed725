"""gRefCOCO and GranD-f loaders on small fixture files written in the official schemas."""

import json

import numpy as np
import pytest
from PIL import Image

from envs import BadRowError, BadRows, get_env
from envs.base import build_rows, gcg_answer, gres_answer, safe_image_path
from envs.gcg import locate_phrases, parse_gcg_text, prediction_record
from rewards.format import gcg_ok, gres_ok
from tokenizer.codec import parse_masks
from tokenizer.masks import decode_rle, encode_rle

H, W = 24, 32


class AreaCodes:
    def __init__(self):
        self.batches = []

    def encode(self, image, masks, boxes=None):
        assert image.size == (W, H)
        self.batches.append(len(masks))
        return np.array([[int(m.sum()) % 256, len(masks)] for m in masks]).reshape(-1, 2)


def box_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (10, 20, 30)).save(path)


@pytest.fixture
def grefcoco(tmp_path):
    images = tmp_path / "train2014"
    for name in ("COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"):
        _image(images / name)
    (images / "COCO_train2014_garbage.jpg").write_bytes(b"not a jpeg")
    poly_right = [20, 2, 30, 2, 30, 12, 20, 12]  # polygon, box centre x = 25
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": H, "width": W},
            {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": H, "width": W},
            {"id": 3, "file_name": "../escape.jpg", "height": H, "width": W},
            {"id": 4, "file_name": "COCO_train2014_missing.jpg", "height": H, "width": W},
            {"id": 5, "file_name": "COCO_train2014_garbage.jpg", "height": H, "width": W},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [20, 2, 10, 10], "segmentation": [poly_right]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [2, 4, 6, 6],
             "segmentation": encode_rle(box_mask(2, 4, 8, 10))},  # RLE, box centre x = 5
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 4, 4],
             "segmentation": {"size": [H, W], "counts": [0, 4, H * W - 4]}},
            {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 1, 1], "segmentation": [[1, 1, 2]]},
            {"id": 14, "image_id": 2, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 4, 4],
             "segmentation": {"size": [H, W], "counts": "!!corrupt"}},
        ],
    }
    s = lambda i, raw: {"sent_id": i, "raw": raw, "tokens": raw.split(), "sent": raw}
    refs = [
        {"ref_id": 0, "image_id": 1, "split": "val", "ann_id": [10, 11, 12], "category_id": [1, 1],
         "sentences": [s(100, "two boxes"), s(101, "both squares")]},
        {"ref_id": 1, "image_id": 1, "split": "val", "ann_id": [-1], "category_id": [-1], "sentences": [s(102, "a dog")]},
        {"ref_id": 2, "image_id": 2, "split": "train", "ann_id": [13], "sentences": [s(103, "tiny thing")]},
        {"ref_id": 3, "image_id": 3, "split": "val", "ann_id": [-1], "sentences": [s(104, "escape")]},
        {"ref_id": 4, "image_id": 4, "split": "val", "ann_id": [-1], "sentences": [s(105, "missing")]},
        {"ref_id": 5, "image_id": 2, "split": "val", "ann_id": [14], "sentences": [s(106, "corrupt")]},
        {"ref_id": 6, "image_id": 1, "split": "val", "ann_id": [99], "sentences": [s(107, "unknown ann")]},
        {"ref_id": 7, "image_id": 1, "split": "val", "ann_id": [10], "sentences": [{"sent_id": 108}]},
        {"ref_id": 8, "image_id": 5, "split": "val", "ann_id": [-1], "sentences": [s(109, "garbage image")]},
        "not a ref",
    ]
    (tmp_path / "grefs(unc).json").write_text(json.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    return tmp_path


def test_grefcoco_lenient_loads_good_rows_and_reports_bad_ones(grefcoco):
    env = get_env("grefcoco", root=str(grefcoco), image_root=str(grefcoco / "train2014"))
    bad = BadRows(strict=False)
    samples = env.samples("val", bad)
    # One sample per sentence, grouped by image (the unreadable image is only found when it is read).
    assert [s["expression"] for s in samples] == ["two boxes", "both squares", "a dog", "garbage image"]
    two = samples[0]
    assert not two["no_target"] and len(two["masks"]) == 2  # the crowd annotation is skipped
    # Instances sorted by box centre x: the RLE box (centre 5) before the polygon (centre 25).
    assert decode_rle(two["masks"][0]).sum() == 36 and decode_rle(two["masks"][1])[:, 25].any()
    assert samples[2]["no_target"] and samples[2]["masks"] == []
    assert two["question"] == "Please segment two boxes in this image."
    reasons = {s["index"]: s["reason"] for s in bad.skipped}
    assert set(reasons) == {3, 4, 5, 6, 7, 9}
    assert "escapes the image root" in reasons[3]
    assert "missing image" in reasons[4]
    assert "RLE" in reasons[5] and "ann_id 99" in reasons[6] and "raw" in reasons[7]
    assert all(s["file"].endswith("grefs(unc).json") for s in bad.skipped)

    codes = AreaCodes()
    rows = build_rows(samples[:3], codes)
    assert codes.batches == [2]  # one batch per image; the two sentences share their instances
    assert gres_ok(rows[0]["answer"]) and rows[2]["answer"] == "No target."
    assert [c for c, _ in parse_masks(rows[0]["answer"])] == [36, decode_rle(two["masks"][1]).sum() % 256]


def test_prepare_reports_loader_and_encoding_failures(grefcoco, tmp_path):
    from envs.prepare import prepare_dataset

    env = get_env("grefcoco", root=str(grefcoco), image_root=str(grefcoco / "train2014"))
    report = prepare_dataset(env, "val", tmp_path / "out", AreaCodes(), "area", strict=False, progress=False)
    assert report["rows"] == 3 and report["skipped"] == 7
    kinds = report["skipped_by_reason"]
    assert kinds["missing image"] == 1 and kinds["image path escapes root"] == 1 and kinds["corrupt RLE"] == 1
    assert kinds["unreadable image"] == 1
    garbage = next(r for r in report["skipped_rows"] if "cannot read image" in r["reason"])
    assert garbage["source"].endswith("grefs(unc).json[8]")

    class NeverCalled:
        def encode(self, *a, **k):
            raise AssertionError("strict mode must fail before encoding")

    with pytest.raises(BadRowError, match=r"grefs\(unc\)\.json\[3\]"):
        prepare_dataset(env, "val", tmp_path / "strict", NeverCalled(), "x", strict=True, progress=False)


def test_grefcoco_strict_fails_naming_file_and_index(grefcoco):
    env = get_env("grefcoco", root=str(grefcoco), image_root=str(grefcoco / "train2014"))
    with pytest.raises(BadRowError, match=r"grefs\(unc\)\.json\[3\]: .*escapes"):
        env.samples("val", BadRows(strict=True))


def test_grefcoco_train_questions_draw_the_16_samtok_templates(tmp_path):
    from envs.gres import EVAL_TEMPLATE, TEMPLATES

    assert len(set(TEMPLATES)) == 16 and all("{expr}" in t for t in TEMPLATES) and EVAL_TEMPLATE in TEMPLATES
    _image(tmp_path / "train2014/a.jpg")
    instances = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 4, 4],
                                  "segmentation": encode_rle(box_mask(0, 0, 4, 4))}]}
    sents = [{"sent_id": i, "raw": f"thing {i}", "sent": f"thing {i}"} for i in range(64)]
    refs = [{"ref_id": 0, "image_id": 1, "split": split, "ann_id": [1], "sentences": sents} for split in ("train", "val")]
    (tmp_path / "grefs(unc).json").write_text(json.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    questions = lambda split, seed=0: [s["question"] for s in get_env(
        "grefcoco", root=str(tmp_path), image_root=str(tmp_path / "train2014"), seed=seed).samples(split)]
    train = questions("train")
    used = {t for t in TEMPLATES for i, q in enumerate(train) if q == t.format(expr=f"thing {i}")}
    assert len(used) >= 12 and len(train) == 64 and all(any(q == t.format(expr=f"thing {i}") for t in TEMPLATES)
                                                          for i, q in enumerate(train))
    assert questions("train") == train and questions("train", seed=1) != train  # seeded per sentence
    assert questions("val") == [EVAL_TEMPLATE.format(expr=f"thing {i}") for i in range(64)]


def test_grefcoco_train_drops_invalid_polygons_like_rela(grefcoco):
    env = get_env("grefcoco", root=str(grefcoco), image_root=str(grefcoco / "train2014"))
    bad = BadRows(strict=False)
    assert env.samples("train", bad) == []
    assert "no usable instance" in bad.skipped[0]["reason"]
    with pytest.raises(ValueError, match="split"):
        env.samples("nope")


def test_crowd_only_target_refs_are_kept_in_eval_splits_like_rela(tmp_path):
    from envs.metrics import gres_scores

    _image(tmp_path / "train2014/a.jpg")
    crowd = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 4, 4],
             "segmentation": encode_rle(box_mask(0, 0, 4, 4))}
    instances = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}], "annotations": [crowd]}
    refs = [{"ref_id": i, "image_id": 1, "split": split, "ann_id": [1], "sentences": [{"sent_id": i, "raw": "crowd"}]}
            for i, split in enumerate(("train", "val"))]
    (tmp_path / "grefs(unc).json").write_text(json.dumps(refs))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    env = get_env("grefcoco", root=str(tmp_path), image_root=str(tmp_path / "train2014"))
    bad = BadRows(strict=False)
    assert env.samples("train", bad) == [] and "no usable instance" in bad.skipped[0]["reason"]
    (val,) = env.samples("val", BadRows(strict=True))
    assert val["masks"] == [] and val["no_target"] is False  # a target sample with an empty GT mask
    # ReLA scores it as a target: rejecting it is a false positive, any mask scores IoU 0.
    empty = np.zeros((H, W), bool)
    assert gres_scores([(None, True, empty, False)]) == pytest.approx(
        {"gIoU": 0, "cIoU": 0, "N-acc": 0, "T-acc": 0, "Pr@0.7": 0, "Pr@0.8": 0, "Pr@0.9": 0})


@pytest.fixture
def grandf(tmp_path):
    root = tmp_path / "GranDf"
    _image(root / "GranDf_HA_images/train/sa_1.jpg")
    _image(root / "GranDf_HA_images/val_test/sa_9.jpg")
    _image(root / "GranDf_HA_images/val_test/sa_8.jpg")
    caption = '"A man rides a horse near a tree."'
    train = [
        {"file_name": "sa_1.jpg", "height": H, "width": W, "caption": caption, "groundings": {
            # listed out of caption order; two RLEs for the tree are OR-ed
            "a tree": {"token_positives": [25, 31], "rle_masks": [encode_rle(box_mask(0, 0, 4, 4)), encode_rle(box_mask(2, 2, 6, 6))]},
            "A man": {"token_positives": [0, 5], "rle_masks": [encode_rle(box_mask(10, 10, 12, 20))]},
        }},
        {"file_name": "../../etc/passwd", "caption": "x", "groundings": {}},
        {"file_name": "sa_1.jpg", "caption": "a dog", "groundings": {"a dog": {"token_positives": [0, 5], "rle_masks": [
            {"size": [H, W], "counts": "garbage!"}]}}},
    ]
    (root / "annotations/train").mkdir(parents=True)
    (root / "annotations/train/GranDf_HA_GCG_train.json").write_text(json.dumps(train))
    images = [{"id": "sa_9", "file_name": "sa_9.jpg", "height": H, "width": W},
              {"id": "sa_8", "file_name": "sa_8.jpg", "height": H, "width": W}]
    cap = {"images": images, "annotations": [
        {"id": 1, "image_id": "sa_9", "caption": "A cat sits on a mat.", "labels": ["A cat", "a mat"]},
        {"id": 2, "image_id": "sa_8", "caption": "A bird.", "labels": ["A bird", "a cloud"]}]}
    masks = {"images": images, "categories": [{"id": 1, "name": "object"}], "annotations": [
        {"id": 1, "image_id": "sa_9", "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(box_mask(0, 0, 8, 8))},
        {"id": 2, "image_id": "sa_9", "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(box_mask(0, 10, 30, 20))},
        {"id": 3, "image_id": "sa_8", "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(box_mask(1, 1, 3, 3))}]}
    (root / "annotations/val_test").mkdir(parents=True)
    for split in ("val", "test"):
        (root / f"annotations/val_test/{split}_gcg_coco_caption_gt.json").write_text(json.dumps(cap))
        (root / f"annotations/val_test/{split}_gcg_coco_mask_gt.json").write_text(json.dumps(masks))
    return root


def test_grandf_train_record_to_answer(grandf):
    env = get_env("grandf", root=str(grandf))
    bad = BadRows(strict=False)
    samples = env.samples("train", bad)
    assert len(samples) == 1 and [b["index"] for b in bad.skipped] == [1, 2]
    assert "escapes" in bad.skipped[0]["reason"] and "RLE" in bad.skipped[1]["reason"]
    s = samples[0]
    assert s["caption"] == "A man rides a horse near a tree."  # GLaMM strips the quotes
    assert s["phrases"] == ["A man", "a tree"]  # caption order
    assert decode_rle(s["masks"][1]).sum() == 16 + 16 - 4  # OR of the two tree RLEs
    row = build_rows(samples, AreaCodes())[0]
    assert row["answer"] == ("<|object_ref_start|> A man <|object_ref_end|> <|mt_start|><|mt_0020|><|mt_0258|><|mt_end|>"
                             " rides a horse near <|object_ref_start|> a tree <|object_ref_end|> "
                             "<|mt_start|><|mt_0028|><|mt_0258|><|mt_end|>.")
    assert gcg_ok(row["answer"])
    with pytest.raises(BadRowError, match=r"GranDf_HA_GCG_train\.json\[1\]"):
        env.samples("train", BadRows(strict=True))


def test_grandf_eval_files_align_phrases_with_masks(grandf):
    env = get_env("grandf", root=str(grandf))
    bad = BadRows(strict=False)
    samples = env.samples("val", bad)
    assert [s["image_id"] for s in samples] == ["sa_9"]
    assert "2 phrases but 1 masks" in bad.skipped[0]["reason"] and bad.skipped[0]["index"] == 1
    assert samples[0]["spans"] == [(0, 5), (14, 19)]
    assert samples[0]["question"].startswith("Could you please give me a brief description")


def test_answers_and_prediction_parsing():
    assert gres_answer([], "x") == "No target."
    a = gres_answer(["<|mt_start|><|mt_0001|><|mt_0300|><|mt_end|>"], 'the "big" one')
    assert a == '```json\n[{"mask_2d": <|mt_start|><|mt_0001|><|mt_0300|><|mt_end|>, "label": "the \\"big\\" one"}]\n```'
    assert gres_ok(a)
    with pytest.raises(ValueError, match="overlaps"):
        gcg_answer("a cat", [(0, 3), (2, 5)], ["m1", "m2"])
    with pytest.raises(ValueError, match="out of caption order"):
        gcg_answer("a cat", [(2, 5), (0, 1)], ["m1", "m2"])
    assert gcg_answer("a cat.", [(0, 1), (2, 5)], ["M1", "M2"]) == (
        "<|object_ref_start|> a <|object_ref_end|> M1 <|object_ref_start|> cat <|object_ref_end|> M2.")
    assert locate_phrases("The cat and the Cat.", ["the cat", "the cat"]) == [(0, 7), (12, 19)]
    text = "<|object_ref_start|> A cat <|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0300|><|mt_end|> sits."
    assert parse_gcg_text(text) == ("A cat sits.", ["A cat"])
    rec = prediction_record("img", text, [box_mask(0, 0, 2, 2)])
    assert rec["phrases"] == ["A cat"] and decode_rle(rec["pred_masks"][0]).sum() == 4
    assert parse_gcg_text(None) == ("", [])


def test_safe_image_path(tmp_path):
    assert safe_image_path(tmp_path, "a/b.jpg") == (tmp_path / "a/b.jpg").resolve()
    for bad in ("../x.jpg", "/etc/passwd", "a/../../x.jpg", ""):
        with pytest.raises(ValueError):
            safe_image_path(tmp_path, bad)
