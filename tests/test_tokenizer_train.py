"""Tokenizer training: learning happens, frozen parts stay frozen, resume is exact, COCO input is checked."""

import json

import numpy as np
import pytest
import torch

import tokenizer.train as T
from envs.shapes import make_scenes
from tokenizer import MaskTokenizer, config


@pytest.fixture(scope="module")
def scenes():
    return [(s["image"], s["masks"]) for s in make_scenes(24, 0)]


def _model():
    torch.manual_seed(0)
    return MaskTokenizer(config.tiny())


def _args(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path), steps=6, batch_images=2, lr=3e-3, loss_size=64, ckpt_every=3,
                continuous_steps=2, kmeans_init=True, kmeans_masks=16, progress=False, log_every=1)
    base.update(kw)
    return T.TrainArgs(**base)


def test_loss_decreases_and_only_trainable_parts_change(scenes, tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = T._draw_batch(scenes, 0, _args(tmp_path))

    def fixed_loss():
        model.train()
        with torch.no_grad():
            return T.train_step(model, batch, 64, torch.Generator().manual_seed(0), quantize=False)[0].item()

    start = fixed_loss()
    T.train(model, scenes, _args(tmp_path, steps=40, continuous_steps=40, kmeans_init=False))
    assert fixed_loss() < 0.8 * start
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.sam2_model.sam_mask_encoder.") for k in changed)
    assert any(k.startswith("model.sam2_model.sam_mask_decoder.transformer.") for k in changed)
    frozen = ("image_encoder.", "sam_prompt_encoder.", "no_mem_embed", "sam_mask_decoder.pred_obj_score_head.",
              "sam_mask_decoder.obj_score_token.")
    assert not [k for k in changed if k[len("model.sam2_model."):].startswith(frozen)]
    assert (tmp_path / "model.safetensors").is_file()
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(40))


def test_quantised_training_updates_codebooks_by_ema(scenes, tmp_path):
    model = _model()
    T.train(model, scenes, _args(tmp_path, steps=5, continuous_steps=1, kmeans_masks=20))
    books = model.quantizer.codebooks
    assert (books[0].cluster_size_ema > 0).all()
    codes = model.encode(*scenes[1])
    assert codes.shape == (len(scenes[1][1]), 2)


def test_resume_after_a_crash_is_exact(scenes, tmp_path, monkeypatch):
    straight = _model()
    T.train(straight, scenes, _args(tmp_path / "a"))

    crashed = _model()
    real_step = T.train_step
    calls = {"n": 0}

    def crash_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_step(*a, **k)

    monkeypatch.setattr(T, "train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        T.train(crashed, scenes, _args(tmp_path / "b"))
    monkeypatch.setattr(T, "train_step", real_step)
    assert [p.name for p in T._committed(tmp_path / "b" / "checkpoints")] == ["step_0000003"]
    # A half-written checkpoint (no COMMITTED marker) is ignored.
    (tmp_path / "b" / "checkpoints" / "step_0000005").mkdir()
    resumed = _model()
    T.train(resumed, scenes, _args(tmp_path / "b"))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_refuses_a_different_config(scenes, tmp_path):
    T.train(_model(), scenes, _args(tmp_path, steps=4, ckpt_every=2, continuous_steps=4, kmeans_init=False))
    # Only the final weights exist now; fake an interrupted run by committing a checkpoint of another config.
    other = MaskTokenizer(config.TokenizerConfig(**{**config.tiny().to_dict(), "decoder_mlp_dim": 128}))
    d = tmp_path / "checkpoints" / "step_0000009"
    other.save_pretrained(d)
    (d / "COMMITTED").write_text("9")
    with pytest.raises(ValueError, match="config differs"):
        T.train(_model(), scenes, _args(tmp_path, steps=12))


@pytest.mark.parametrize("points", [False, True])
def test_mask_losses_prefer_the_right_mask(points):
    cfg = config.TokenizerConfig(**{**config.tiny().to_dict(), "loss_sample_points": points, "num_points": 256})
    target = torch.zeros(2, 40, 40)
    target[:, 10:30, 5:25] = 1
    right = (target[:, ::2, ::2] * 2 - 1) * 8  # logits on a coarser grid, as the decoder's are
    wrong = -right  # the complement
    gen = torch.Generator().manual_seed(0)
    bce_r, dice_r = T.mask_losses(right, target, cfg, gen)
    bce_w, dice_w = T.mask_losses(wrong, target, cfg, gen)
    assert bce_r.shape == (2,) and torch.isfinite(bce_r).all()
    # (point sampling concentrates on the uncertain edge, where even the right mask is unsure)
    assert (bce_r < 0.5 * bce_w).all() and (dice_r < 0.5 * dice_w).all()


def test_reconstruction_miou_counts_every_nonempty_mask(scenes):
    model = _model().eval()
    res = T.reconstruction_miou(model, scenes[:4])
    assert res["masks"] == sum(int(m.any(axis=(1, 2)).sum()) for _, m in scenes[:4])
    assert 0.0 <= res["miou"] <= 1.0


def _coco(tmp_path, anns, size=(20, 30)):
    from PIL import Image

    h, w = size
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w}], "annotations": anns}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_polygons_and_rle(tmp_path):
    from tokenizer.masks import encode_rle

    m = np.zeros((20, 30), bool)
    m[2:8, 3:9] = True
    anns = [{"id": 7, "image_id": 1, "segmentation": [[10, 10, 20, 10, 20, 18, 10, 18]]},
            {"id": 8, "image_id": 1, "segmentation": encode_rle(m)},
            {"id": 9, "image_id": 1, "iscrowd": 1, "segmentation": encode_rle(m)}]
    ds = T.CocoMasks(_coco(tmp_path, anns), tmp_path)
    image, masks = ds[0]
    assert len(ds) == 1 and masks.shape == (2, 20, 30) and image.size == (30, 20)
    assert masks[0, 12, 15] and not masks[0, 2, 2]
    assert np.array_equal(masks[1], m)


@pytest.mark.parametrize("seg, match", [
    ({"size": [20, 30], "counts": "bad!"}, "annotation 7 field 'segmentation'"),
    ({"size": [10, 10], "counts": [100]}, "differs from the image"),
    ([[1, 2, 3]], "polygon"),
    ("nope", "polygon list or an RLE dict"),
])
def test_coco_bad_segmentation_names_the_annotation(tmp_path, seg, match):
    with pytest.raises(ValueError, match=match):
        T.CocoMasks(_coco(tmp_path, [{"id": 7, "image_id": 1, "segmentation": seg}]), tmp_path)


def test_coco_unknown_image_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown image_id 5"):
        T.CocoMasks(_coco(tmp_path, [{"id": 1, "image_id": 5, "segmentation": [[0, 0, 1, 0, 1, 1]]}]), tmp_path)
    path = _coco(tmp_path, [{"id": 1, "image_id": 1, "segmentation": [[0, 0, 5, 0, 5, 5]]}])
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="cannot read image"):
        T.CocoMasks(path, tmp_path)[0]
