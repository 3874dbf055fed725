"""``MaskTokenizer.load_official`` reads checkpoints laid out like the released files, by their own names.

The SAM2 checkpoint is a real ``SAM2Base`` (sam2.1 Hiera-T at 256 px, random weights) built by sam2's
own ``build_sam2``; the tokenizer checkpoint holds the keys the official ``VQ_SAM2`` adds
(``model.sam2_model.sam_mask_encoder.*``, ``quantizer.codebooks.{0,1}.*``). The loaded model's image
features and mask decoding are compared with SAM2's own code paths.
"""

import numpy as np
import pytest
import torch
from sam2.build_sam import build_sam2
from sam2.modeling.sam.transformer import TwoWayTransformer

from tokenizer import MaskTokenizer
from tokenizer.model import to_rgb_array

SIZE = 256


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("official")
    sam2 = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu", mode="eval",
                      hydra_overrides_extra=[f"++model.image_size={SIZE}"])
    torch.save({"model": sam2.state_dict()}, d / "sam2.1_hiera_tiny.pt")
    enc = TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    tok = {f"model.sam2_model.sam_mask_encoder.transformer.{k}": v for k, v in enc.state_dict().items()}
    tok["model.sam2_model.sam_mask_encoder.mask_tokens.weight"] = torch.randn(1, 256)
    for level in range(2):
        codebook = torch.randn(257, 256)
        codebook[256] = 0  # padding row (code -1)
        tok[f"quantizer.codebooks.{level}.weight"] = codebook
        tok[f"quantizer.codebooks.{level}.cluster_size_ema"] = torch.rand(256)
        tok[f"quantizer.codebooks.{level}.embed_ema"] = torch.randn(256, 256)
    torch.save(tok, d / "mask_tokenizer_256x2.pth")
    return d, sam2, tok


def _load(d, **kw):
    return MaskTokenizer.load_official(d / "mask_tokenizer_256x2.pth", d / "sam2.1_hiera_tiny.pt",
                                       sam2_config="sam2.1_hiera_t", image_size=SIZE, **kw)


def test_loads_by_official_names_and_matches_sam2(official_files):
    d, sam2, tok = official_files
    model = _load(d)
    state = model.state_dict()
    for k, v in sam2.state_dict().items():
        if "model.sam2_model." + k in state:
            assert torch.equal(state["model.sam2_model." + k], v), k
    for k, v in tok.items():
        assert torch.equal(state[k], v), k

    # Image features: SAM2's forward_image + single-frame no-memory embedding.
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    x = model.preprocess(to_rgb_array(img))
    with torch.no_grad():
        ref = sam2.forward_image(x)
        _, vision, _, sizes = sam2._prepare_backbone_features(ref)
        ref_emb = (vision[-1] + sam2.no_mem_embed).permute(1, 2, 0).view(1, 256, *sizes[-1])
        ref_high = [v.permute(1, 2, 0).view(1, -1, *s) for v, s in zip(vision[:-1], sizes[:-1])]
        feats = model.image_features(to_rgb_array(img))
        torch.testing.assert_close(model.image_embedding(feats), ref_emb)
        dec = model.sam.sam_mask_decoder
        torch.testing.assert_close(dec.conv_s0(feats[0]), ref_high[0])

        # Decoding: SAM2's own head with the code embedding appended to the sparse prompt, as the
        # official ``language_embed`` hook does; best of three candidates by predicted IoU.
        codes = torch.tensor([[3, 9], [100, -1]])
        emb = model.quantizer.embed_codes(codes)
        original = sam2.sam_prompt_encoder.forward

        def with_code(*a, **k):
            sparse, dense = original(*a, **k)
            return torch.cat([sparse, emb[:, None]], 1), dense

        sam2.sam_prompt_encoder.forward = with_code
        try:
            out = sam2._forward_sam_heads(backbone_features=ref_emb.expand(2, -1, -1, -1), point_inputs=None,
                                          mask_inputs=None, high_res_features=[h.expand(2, -1, -1, -1) for h in ref_high],
                                          multimask_output=True)
        finally:
            sam2.sam_prompt_encoder.forward = original
        ours = model.decode_logits(feats, emb)[0]
        torch.testing.assert_close(ours, out[3][:, 0], atol=1e-4, rtol=1e-4)
        expected = model.upsample(out[3][:, 0], (SIZE, SIZE)) > 0.5
        assert torch.equal(model.decode(img, codes), expected)


def test_missing_and_unexpected_keys_are_listed(official_files, tmp_path):
    d, _, tok = official_files
    sam2_ckpt = d / "sam2.1_hiera_tiny.pt"
    broken = dict(tok)
    del broken["quantizer.codebooks.1.embed_ema"]
    broken["quantizer.codebooks.2.weight"] = torch.zeros(257, 256)
    torch.save(broken, tmp_path / "tok.pth")
    with pytest.raises(ValueError) as e:
        MaskTokenizer.load_official(tmp_path / "tok.pth", sam2_ckpt, "sam2.1_hiera_t", SIZE)
    msg = str(e.value)
    assert "missing keys: quantizer.codebooks.1.embed_ema" in msg
    assert "unexpected keys: quantizer.codebooks.2.weight" in msg

    wrong = dict(tok)
    wrong["quantizer.codebooks.0.weight"] = torch.zeros(1025, 256)  # a 1024-code tokenizer
    torch.save(wrong, tmp_path / "tok1024.pth")
    with pytest.raises(ValueError, match="wrong shape keys: quantizer.codebooks.0.weight"):
        MaskTokenizer.load_official(tmp_path / "tok1024.pth", sam2_ckpt, "sam2.1_hiera_t", SIZE)


def test_tokenizer_file_with_sam2_weights_inside_and_wrappers(official_files, tmp_path):
    # A full VQ_SAM2 state dict (SAM2 weights included), wrapped as {"state_dict": ...} with DDP prefixes.
    d, sam2, tok = official_files
    full = {f"module.model.sam2_model.{k}": v + 1 for k, v in sam2.state_dict().items() if k.startswith("sam_")}
    full.update({f"module.{k}": v for k, v in tok.items()})
    torch.save({"state_dict": full}, tmp_path / "full.pth")
    model = MaskTokenizer.load_official(tmp_path / "full.pth", d / "sam2.1_hiera_tiny.pt", "sam2.1_hiera_t", SIZE)
    w = "model.sam2_model.sam_mask_decoder.iou_token.weight"
    assert torch.equal(model.state_dict()[w], sam2.state_dict()[w[len("model.sam2_model."):]] + 1)


def test_unreadable_files_are_clear_errors(official_files, tmp_path):
    d, _, _ = official_files
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        MaskTokenizer.load_official(tmp_path / "nope.pth", d / "sam2.1_hiera_tiny.pt", "sam2.1_hiera_t", SIZE)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict of tensors"):
        MaskTokenizer.load_official(tmp_path / "list.pth", d / "sam2.1_hiera_tiny.pt", "sam2.1_hiera_t", SIZE)
