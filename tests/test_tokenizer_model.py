"""MaskTokenizer API on the tiny configuration (random weights): shapes, batching, cache, persistence, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from tokenizer import MaskTokenizer, config
from tokenizer.model import to_rgb_array


def _scene(seed=0, size=96, n=3):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size, size + 16, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size + 16), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 30, 2)
        masks[i, y:y + 10 + 5 * i, x:x + 20] = True
    return img, masks


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return MaskTokenizer(config.tiny()).eval()


def test_encode_decode_shapes_and_types(tok):
    img, masks = _scene()
    codes = tok.encode(img, masks)
    assert codes.dtype == torch.long and codes.shape == (3, 2)
    assert ((codes >= 0) & (codes < 256)).all()
    out = tok.decode(img, codes)
    assert out.dtype == torch.bool and out.shape == (3, 96, 112)
    assert tok.device.type == "cpu" and tok.config.image_size == 256


def test_batched_equals_one_mask_per_call(tok):
    img, masks = _scene(1, n=4)
    codes = tok.encode(img, masks)
    single = torch.cat([tok.encode(img, masks[i:i + 1]) for i in range(4)])
    assert torch.equal(codes, single)
    # Decoding: compare logits (thresholded masks could flip on a float tie).
    feats = tok.image_features(to_rgb_array(img))
    emb = tok.quantizer.embed_codes(codes)
    batched = tok.decode_logits(feats, emb)[0]
    one = torch.cat([tok.decode_logits(feats, emb[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(batched, one, atol=1e-4, rtol=1e-4)


def test_cache_hits_and_misses(tok):
    tok.clear_cache()
    img, masks = _scene(2)
    h0, m0 = tok.cache_hits, tok.cache_misses
    codes = tok.encode(img, masks)
    for _ in range(8):  # the G completions of one prompt
        tok.decode(img, codes)
    assert (tok.cache_hits - h0, tok.cache_misses - m0) == (8, 1)
    other = img.copy()
    other[0, 0, 0] ^= 1  # one pixel differs: must not hit
    tok.decode(other, codes)
    assert tok.cache_misses - m0 == 2
    # A PIL image with the same pixels is the same image.
    tok.decode(Image.fromarray(img), codes)
    assert tok.cache_hits - h0 == 9


def test_cache_is_bounded_and_cleared_when_weights_change(tok):
    tok.clear_cache()
    codes = torch.tensor([[1, 2]])
    for s in range(tok.config.cache_size + 3):
        tok.decode(_scene(100 + s)[0], codes)
    assert tok.cache_info()["size"] == tok.config.cache_size
    tok.load_state_dict(tok.state_dict())
    assert tok.cache_info()["size"] == 0


def test_cached_result_equals_uncached(tok):
    img, masks = _scene(3)
    tok.clear_cache()
    cold = tok.decode(img, tok.encode(img, masks))
    warm = tok.decode(img, tok.encode(img, masks))
    assert torch.equal(cold, warm)


def test_level_two_minus_one_and_codec_rules(tok):
    img, _ = _scene(4)
    full = tok.decode(img, [[5, 7]])
    assert tok.decode(img, [[5, -1]]).shape == full.shape
    # [N, 1] means level 2 is -1; extra columns are ignored; level-2 out of range means -1.
    assert torch.equal(tok.decode(img, [[5]]), tok.decode(img, [[5, -1]]))
    assert torch.equal(tok.decode(img, [[5, 7, 9]]), full)
    assert torch.equal(tok.decode(img, [[5, 300]]), tok.decode(img, [[5, -1]]))
    # As in the released decoder, -1 is embedded as code 0: both levels are always summed.
    emb = tok.quantizer.embed_codes(torch.tensor([[5, -1], [5, 7]]))
    books = tok.quantizer.codebooks
    torch.testing.assert_close(emb[0], books[0].weight[5] + books[1].weight[0])
    torch.testing.assert_close(emb[1], books[0].weight[5] + books[1].weight[7])
    with pytest.raises(ValueError, match="codes must be in 0..255 or -1"):
        tok.quantizer.embed_codes(torch.tensor([[5, -2]]))


def test_minus_one_decodes_exactly_as_code_zero_and_codes_are_not_modified(tok):
    img, _ = _scene(5)
    codes = torch.tensor([[5, -1], [200, -1], [9, 3]])
    before = codes.clone()
    feats = tok.image_features(to_rgb_array(img))
    zero = torch.tensor([[5, 0], [200, 0], [9, 3]])
    # Bit-exact: the same embedding, then the same logits and masks.
    assert torch.equal(tok.quantizer.embed_codes(codes), tok.quantizer.embed_codes(zero))
    assert torch.equal(tok.decode_logits(feats, tok.quantizer.embed_codes(codes))[0],
                       tok.decode_logits(feats, tok.quantizer.embed_codes(zero))[0])
    assert torch.equal(tok.decode(img, codes), tok.decode(img, zero))
    assert torch.equal(tok.decode(img, [[5, -1]]), tok.decode(img, [[5, 0]]))
    # The official embed_code overwrites the caller's -1 with 0; ours leaves the codes alone.
    assert torch.equal(codes, before)
    tok.quantizer.embed_codes(codes)
    assert torch.equal(codes, before)


@pytest.mark.parametrize("codes", [[[-1, 3]], [[256, 3]], [[0, 1], [999, 1]]])
def test_bad_level_one_code_is_an_error(tok, codes):
    with pytest.raises(ValueError, match="level-1 codes"):
        tok.decode(_scene()[0], codes)


@pytest.mark.parametrize("codes", [np.zeros((2, 2, 2), int), np.zeros((2, 0), int), np.array([[1.5, 2.0]]),
                                   [[1, 2], [3]], [["a", "b"]], "12"])
def test_bad_code_shape_or_type_is_an_error(tok, codes):
    with pytest.raises(ValueError, match="codes"):
        tok.decode(_scene()[0], codes)


def test_empty_inputs_give_empty_outputs(tok):
    img, _ = _scene()
    assert tok.encode(img, np.zeros((0, 96, 112), bool)).shape == (0, 2)
    assert tok.decode(img, torch.zeros(0, 2, dtype=torch.long)).shape == (0, 96, 112)


def test_empty_mask_is_an_error_naming_it(tok):
    img, masks = _scene()
    masks[1] = False
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        tok.encode(img, masks)


def test_mask_size_mismatch_is_an_error(tok):
    img, masks = _scene()
    with pytest.raises(ValueError, match="96x111 but the image is 96x112"):
        tok.encode(img, masks[:, :, :111])
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        tok.encode(img, masks[0])


def test_boxes_are_validated_and_used(tok):
    img, masks = _scene()
    with pytest.raises(ValueError, match="boxes must be"):
        tok.encode(img, masks, boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(img, masks, boxes=np.full((3, 4), np.nan))
    from tokenizer.masks import mask_to_box

    explicit = tok.encode(img, masks, boxes=[mask_to_box(m) for m in masks])
    assert torch.equal(explicit, tok.encode(img, masks))


def test_box_prompt_is_torchvision_masks_to_boxes(tok):
    """The official pipelines take the box with torchvision's masks_to_boxes: inclusive far corner."""
    from torchvision.ops import masks_to_boxes

    from tokenizer.masks import mask_to_box

    rng = np.random.default_rng(0)
    masks = []
    for k in range(200):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        m = rng.random((h, w)) < rng.choice([0.002, 0.02, 0.2, 0.9])
        if k % 4 == 0:  # a filled rectangle, or a single pixel when it is 1x1
            m = np.zeros((h, w), bool)
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0:rng.integers(y0, h) + 1, x0:rng.integers(x0, w) + 1] = True
        if not m.any():
            m[rng.integers(0, h), rng.integers(0, w)] = True
        masks.append(m)
        assert mask_to_box(m) == tuple(masks_to_boxes(torch.from_numpy(m)[None])[0].tolist()), (k, np.argwhere(m))
    one = np.zeros((5, 7), bool)
    one[2, 3] = True
    assert mask_to_box(one) == (3.0, 2.0, 3.0, 2.0)
    # encode's default box prompt is that box.
    img, scene = _scene(6)
    assert torch.equal(tok.encode(img, scene), tok.encode(img, scene, boxes=masks_to_boxes(torch.from_numpy(scene))))


def test_image_formats(tok):
    img, masks = _scene()
    gray = img[:, :, 0]
    rgb_from_gray = np.repeat(gray[:, :, None], 3, 2)
    codes = tok.encode(rgb_from_gray, masks)
    assert torch.equal(tok.encode(gray, masks), codes)  # HxW
    assert torch.equal(tok.encode(Image.fromarray(gray, "L"), masks), codes)  # PIL grayscale
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 7, np.uint8)], 2)
    assert torch.equal(tok.encode(rgba, masks), tok.encode(img, masks))  # alpha dropped
    odd = np.zeros((37, 53, 3), np.uint8)  # odd-sized: direct resize, output at the original size
    m = np.zeros((1, 37, 53), bool)
    m[0, 5:20, 10:30] = True
    assert tok.decode(odd, tok.encode(odd, m)).shape == (1, 37, 53)
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(img.astype(np.float32), masks)
    with pytest.raises(ValueError, match="shape"):
        tok.encode(np.zeros((4, 4, 2), np.uint8), np.zeros((1, 4, 4), bool))


def test_save_load_roundtrip(tok, tmp_path):
    img, masks = _scene(5)
    tok.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = MaskTokenizer.from_pretrained(tmp_path)
    assert loaded.config == tok.config
    for (k, a), (k2, b) in zip(tok.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    codes = tok.encode(img, masks)
    assert torch.equal(loaded.encode(img, masks), codes)
    assert torch.equal(loaded.decode(img, codes), tok.decode(img, codes))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        MaskTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"image_size": 256, "bogus": 1}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="bogus"):
        MaskTokenizer.from_pretrained(tmp_path)


def test_same_seed_same_model_and_codes():
    img, masks = _scene(6)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = MaskTokenizer(config.tiny()).eval()
        outs.append((m.encode(img, masks), m.decode(img, torch.tensor([[3, 4], [200, -1]]))))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_bf16_runs(tok):
    img, masks = _scene(7)
    m = MaskTokenizer(tok.config)
    m.load_state_dict(tok.state_dict())
    m = m.to(torch.bfloat16).eval()
    codes = m.encode(img, masks)
    assert codes.shape == (3, 2)
    assert m.decode(img, codes).shape == (3, 96, 112)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 32"):
        config.TokenizerConfig(image_size=100)
    for size, depth in ((512, 2), (1, 2), (16, 3)):
        with pytest.raises(ValueError, match=f"2 codebooks of 2..256 codes, got {depth}x{size}"):
            config.TokenizerConfig(codebook_size=size, codebook_depth=depth)
    with pytest.raises(ValueError, match="unknown SAM2 config"):
        config.from_sam2("sam2.1_hiera_xxl")


def test_box_prompts_follow_the_convention_the_tokenizer_was_trained_with():
    """The committed tiny tokenizer was trained with exclusive boxes: it is prompted that way (its codes are
    those it produced before the official inclusive convention became the default), while a tokenizer in the
    official convention gets the inclusive box itself."""
    import dataclasses

    import numpy as np

    from tokenizer import MaskTokenizer
    from tokenizer.load import load_mask_tokenizer
    from tokenizer.masks import mask_to_box

    tiny = load_mask_tokenizer("tiny")
    assert tiny.config.box_convention == "exclusive"
    official = MaskTokenizer(dataclasses.replace(tiny.config, box_convention="inclusive")).eval()
    official.load_state_dict(tiny.state_dict())
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 5:20, 8:30] = True
    masks[1, 40:60, 2:12] = True
    inclusive = np.array([mask_to_box(m) for m in masks])
    exclusive = inclusive + [0, 0, 1, 1]
    np.testing.assert_array_equal(tiny.prompt_boxes(None, masks), exclusive)
    np.testing.assert_array_equal(official.prompt_boxes(None, masks), inclusive)
    image = np.full((64, 64, 3), 128, np.uint8)
    assert torch.equal(tiny.encode(image, masks), official.encode(image, masks, boxes=exclusive))
