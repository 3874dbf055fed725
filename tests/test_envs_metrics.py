"""Official metrics: ReLA's GRES and GLaMM's GCG on hand-computed cases, every quirk included."""

import json

import numpy as np
import pytest

from envs.metrics import _greedy_miou, caption_scores, gcg_scores, gres_scores, ngram_embed
from tokenizer.masks import encode_rle


def m(bits: str) -> np.ndarray:
    return np.array([[c == "1" for c in bits]])


# ------------------------------------------------------------------------------------------- GRES
HAND_CASE = [
    (m("11000"), False, m("10000"), False),  # target, I=1 U=2 -> 0.5 ("TN")
    (m("10000"), True, m("10000"), False),  # target rejected ("FP"): I forced to 0, U=1 kept -> 0
    (None, True, m("00000"), True),  # no-target rejected ("TP"): IoU 1, adds nothing to the sums
    (m("11100"), False, m("00000"), True),  # no-target with a mask ("FN"): IoU 0, adds U=3
    (m("00110"), False, m("00110"), False),  # perfect -> 1
    (m("00000"), False, m("00100"), False),  # empty prediction on a target, not rejected: U=1 -> 0 ("TN")
    (m("11111"), False, m("11110"), False),  # I=4 U=5 -> exactly 0.8: Pr@0.8 counts it (>=)
]


def test_gres_hand_computed_every_quirk():
    s = gres_scores(HAND_CASE)
    assert s["gIoU"] == pytest.approx(100 * (0.5 + 0 + 1 + 0 + 1 + 0 + 0.8) / 7)
    assert s["cIoU"] == pytest.approx(100 * (1 + 0 + 0 + 0 + 2 + 0 + 4) / (2 + 1 + 0 + 3 + 2 + 1 + 5))
    assert s["N-acc"] == pytest.approx(50.0)  # 1 of 2 no-target samples rejected
    assert s["T-acc"] == pytest.approx(80.0)  # 4 of 5 target samples not rejected
    # Pr@X over the 5 target samples only (the correctly rejected no-target IoU of 1 does not count).
    assert (s["Pr@0.7"], s["Pr@0.8"], s["Pr@0.9"]) == pytest.approx((40.0, 40.0, 20.0))
    assert set(s) == {"gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"}


def test_gres_split_without_no_target_reports_zero_accuracies():
    s = gres_scores([r for r in HAND_CASE if not r[3]])
    assert s["N-acc"] == 0.0 and s["T-acc"] == 0.0  # ReLA's branch for "no empty sample"
    assert s["gIoU"] == pytest.approx(100 * 2.3 / 5)


def test_gres_rejects_shape_mismatch_naming_the_record():
    with pytest.raises(ValueError, match="record 1"):
        gres_scores([HAND_CASE[0], (m("11"), False, m("10000"), False)])


def _rela_loop(records):
    """ReLA's ReferEvaluator.evaluate, restated sample by sample (no vectorisation)."""
    acc_iou = acc_i = acc_u = 0.0
    tp = fn = fp = tn = n_target = 0
    pr = {0.7: 0, 0.8: 0, 0.9: 0}
    for pred, pred_nt, gt, gt_nt in records:
        pred = np.zeros_like(gt) if pred is None else pred
        i, u = int(np.sum(pred & gt)), int(np.sum(pred | gt))
        if gt_nt:
            if pred_nt:
                tp += 1
                acc_iou += 1
            else:
                fn += 1
                acc_u += u
        else:
            if pred_nt:
                fp += 1
                i = 0
            else:
                tn += 1
            iou = 0.0 if u == 0 else i / u
            acc_iou, acc_i, acc_u, n_target = acc_iou + iou, acc_i + i, acc_u + u, n_target + 1
            for t in pr:
                pr[t] += iou >= t
    return {"gIoU": 100 * acc_iou / len(records), "cIoU": 100 * acc_i / acc_u, "N-acc": 100 * tp / (tp + fn),
            "T-acc": 100 * tn / (tn + fp), **{f"Pr@{t:.1f}": 100 * c / n_target for t, c in pr.items()}}


def test_gres_matches_the_reference_loop_on_random_records():
    rng = np.random.default_rng(0)
    records = []
    for _ in range(300):
        gt_nt = rng.random() < 0.3
        gt = np.zeros((9, 7), bool) if gt_nt else rng.random((9, 7)) < rng.random()
        pred = rng.random((9, 7)) < rng.random() if rng.random() < 0.8 else None
        records.append((pred, pred is None or rng.random() < 0.1, gt, gt_nt))
    assert gres_scores(iter(records)) == pytest.approx(_rela_loop(records))


# -------------------------------------------------------------------------------------------- GCG
def px(*on, n=10):
    a = np.zeros((1, n), bool)
    a[0, list(on)] = True
    return a


VECTORS = {"a cat": [1, 0], "the cat": [1, 0], "a dog": [0, 1], "a bird": [0.6, -0.8]}


def embed(text):
    return np.array(VECTORS[text], float)


def _write_case(tmp_path, images):
    """images: {id: (caption, [(label, gt mask)], pred caption, [phrases], [pred masks])}."""
    caps = {"images": [], "annotations": []}
    masks = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    preds = tmp_path / "preds"
    preds.mkdir()
    for image_id, (caption, gts, pred_caption, phrases, pred_masks) in images.items():
        caps["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 1, "width": 10})
        masks["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 1, "width": 10})
        caps["annotations"].append({"id": len(caps["annotations"]) + 1, "image_id": image_id, "caption": caption,
                                    "labels": [label for label, _ in gts]})
        for _, g in gts:
            masks["annotations"].append({"id": len(masks["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                         "segmentation": encode_rle(g[0:1].reshape(1, -1)), "iscrowd": 0,
                                         "area": float(g.sum()), "bbox": [0, 0, 10, 1]})
        pred = {"image_id": image_id, "caption": pred_caption, "phrases": phrases,
                "pred_masks": [encode_rle(p) for p in pred_masks]}
        (preds / f"{image_id}.json").write_text(json.dumps(pred))
    (tmp_path / "cap.json").write_text(json.dumps(caps))
    (tmp_path / "mask.json").write_text(json.dumps(masks))
    return preds, tmp_path / "cap.json", tmp_path / "mask.json"


def test_gcg_miou_and_recall_hand_computed(tmp_path):
    images = {
        # greedy takes IoU 1 (dog) then 0.5 (cat); the extra bird mask costs nothing. Recall: 2 TPs.
        "a": ("a cat and a dog", [("a cat", px(0, 1)), ("a dog", px(5, 6))], "the cat, a dog and a bird",
              ["the cat", "a dog", "a bird"], [px(0), px(5, 6), px(9)]),
        # the first max-IoU pair has dissimilar phrases: the loop stops though the second pair would pass.
        "b": ("a cat and a dog", [("a cat", px(0, 1, 2, 3)), ("a dog", px(6, 7))], "a dog and a cat",
              ["a dog", "a cat"], [px(0, 1, 2, 3), px(6, 7)]),
        # two masks, one phrase: the best pair's phrase index is out of range -> IndexError, caught; 0 TPs.
        "c": ("a cat", [("a cat", px(0, 1, 2, 3, 4))], "a cat", ["a cat"], [px(0), px(0, 1, 2, 3, 4)]),
        # nothing predicted: mIoU 0, its GT phrase still counts in the recall denominator.
        "d": ("a cat", [("a cat", px(0, 1))], "", [], []),
    }
    preds, cap, mask = _write_case(tmp_path, images)
    s = gcg_scores(preds, cap, mask, embed=embed, with_captions=False)
    assert s["mIoU"] == pytest.approx(100 * (0.75 + 1.0 + 1.0 + 0.0) / 4)
    assert s["recall"] == pytest.approx(100 * 2 / 6)
    assert set(s) == {"AP50", "mIoU", "recall"}


@pytest.mark.parametrize("order,expected", [("hit_first", 51 / 101), ("miss_first", 0.5 * 51 / 101)])
def test_gcg_ap50_is_class_agnostic_with_equal_scores(tmp_path, order, expected):
    # One image, 2 GT masks, 2 predictions (one hit at IoU >= 0.5, one miss). With every score 1.0,
    # pycocotools' stable sort keeps file order, so the order changes the precision at recall 0.5.
    hit, miss = px(0, 1, 2), px(8)
    pred = [hit, miss] if order == "hit_first" else [miss, hit]
    images = {"x": ("a cat and a dog", [("a cat", px(0, 1, 2)), ("a dog", px(5, 6))], "c", ["a cat", "a dog"], pred)}
    preds, cap, mask = _write_case(tmp_path, images)
    assert gcg_scores(preds, cap, mask, embed=embed, with_captions=False)["AP50"] == pytest.approx(100 * expected)


def test_gcg_greedy_miou_stops_at_nan_like_the_official_code():
    # Empty prediction vs empty GT gives 0/0 = NaN; np.max is then NaN and the loop never starts.
    assert _greedy_miou([px(0, 1), px()], [px(0, 1), px()]) == 0.0
    assert _greedy_miou([px(0, 1)], [px(0, 1), px(5)]) == 1.0


def test_gcg_errors_name_the_file(tmp_path):
    images = {"a": ("a cat", [("a cat", px(0, 1))], "a cat", ["a cat"], [px(0, 1)])}
    preds, cap, mask = _write_case(tmp_path, images)
    bad = json.loads((preds / "a.json").read_text())
    bad["pred_masks"][0]["counts"] = "!!not rle"
    (preds / "a.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"a\.json: pred_masks\[0\]"):
        gcg_scores(preds, cap, mask, embed=embed, with_captions=False)
    (preds / "a.json").unlink()
    with pytest.raises(ValueError, match="missing prediction"):
        gcg_scores(preds, cap, mask, embed=embed, with_captions=False)


def test_gcg_default_embed_warns_that_recall_is_not_comparable(tmp_path, monkeypatch):
    monkeypatch.delenv("SAMTOK_RL_BERT", raising=False)
    images = {"a": ("a cat", [("a cat", px(0, 1))], "a cat", ["a cat"], [px(0, 1)])}
    preds, cap, mask = _write_case(tmp_path, images)
    with pytest.warns(UserWarning, match="NOT comparable"):
        s = gcg_scores(preds, cap, mask, with_captions=False)
    assert s["recall"] == 100.0
    sim = lambda a, b: float(ngram_embed(a) @ ngram_embed(b) / np.linalg.norm(ngram_embed(a)) / np.linalg.norm(ngram_embed(b)))
    assert sim("a red circle", "the red circle") > 0.5 > sim("a red circle", "two blue squares")


def test_caption_scores_meteor_and_cider():
    # One JVM start (~5 s) for the whole suite: two perfect captions and a wrong one.
    gt = {"annotations": [
        {"image_id": 1, "caption": "a big red circle and a small blue square."},
        {"image_id": 2, "caption": "a small green triangle."},
        {"image_id": 3, "caption": "a yellow square on the left."},
    ]}
    preds = {1: gt["annotations"][0]["caption"], 2: gt["annotations"][1]["caption"], 3: "nothing at all"}
    s = caption_scores(gt, preds)
    # METEOR averages per-image scores near 1, 1 and 0; CIDEr-D is positive when some captions match.
    assert 60 < s["METEOR"] < 85
    assert s["CIDEr"] > 100


def test_bert_embed_is_mean_pooled_last_hidden_state(tmp_path, monkeypatch):
    # A tiny random BERT saved locally stands in for bert-base-uncased: the code path is the same.
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from envs.metrics import bert_embed, default_embed

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "dog"]))
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(tmp_path)
    embed = bert_embed(str(tmp_path))
    ids = BertTokenizerFast.from_pretrained(tmp_path)("a cat", return_tensors="pt")["input_ids"]
    assert ids[0, 0] == 2 and ids[0, -1] == 3 and ids.shape[1] == 4  # [CLS] ... [SEP]: GLaMM averages over all
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).last_hidden_state[0].mean(0).numpy()
    assert np.allclose(embed("a cat"), expected, atol=1e-5)
    monkeypatch.setenv("SAMTOK_RL_BERT", str(tmp_path))
    assert default_embed().__name__ == "bert"
