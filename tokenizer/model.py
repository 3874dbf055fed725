"""SAMTok's mask tokenizer (VQ-SAM2): a region mask of an image <-> two discrete codes.

Encoding: SAM2 image features + the mask as a dense prompt + its box as two corner points go through a
separate two-way transformer ("mask encoder") whose single learned query becomes a latent z; a 2-level
residual VQ turns z into two codes. Decoding: the summed code embeddings are one extra sparse prompt
token of SAM2's mask decoder, which predicts three candidates; the one with the best predicted IoU is
upsampled to the image size and thresholded.

Module names mirror the official ``VQ_SAM2`` (``model.sam2_model.*``, ``quantizer.codebooks.*``) so the
released ``mask_tokenizer_256x2.pth`` loads by its own parameter names (``load_official``).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch import nn

from tokenizer.config import TokenizerConfig, from_sam2
from tokenizer.masks import mask_to_box
from tokenizer.vq import ResidualQuantizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Parts of the released SAM2Base that only video tracking uses; the tokenizer never runs them, so their
# keys are the only ones ``load_official`` may skip. Any other unknown key is an error.
VIDEO_ONLY_KEYS = ("memory_attention.", "memory_encoder.", "mask_downsample.", "maskmem_tpos_enc",
                   "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial", "obj_ptr_proj.", "obj_ptr_tpos_proj.")
SAM2_PREFIX = "model.sam2_model."


class MaskEncoder(nn.Module):
    """Official ``sam_mask_encoder``: learned query tokens read out by a two-way transformer."""

    def __init__(self, transformer: nn.Module, dim: int, num_mask_tokens: int = 1):
        super().__init__()
        self.transformer = transformer
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.num_mask_tokens = num_mask_tokens

    def forward(self, image_embeddings, image_pe, sparse, dense):
        n = sparse.shape[0]
        tokens = torch.cat([self.mask_tokens.weight[None].expand(n, -1, -1), sparse], 1)
        src = image_embeddings.expand(n, -1, -1, -1) + dense
        hs, _ = self.transformer(src, image_pe.expand(n, -1, -1, -1), tokens)
        return hs[:, : self.num_mask_tokens]


class SAM2Parts(nn.Module):
    """The pieces of SAM2Base the tokenizer uses, under SAM2Base's attribute names."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        t, d = cfg.trunk, cfg.hidden_dim
        trunk = Hiera(embed_dim=t.embed_dim, num_heads=t.num_heads, stages=t.stages,
                      global_att_blocks=t.global_att_blocks, window_spec=t.window_spec,
                      window_pos_embed_bkg_spatial_size=t.window_pos_embed_bkg_spatial_size)
        neck = FpnNeck(PositionEmbeddingSine(num_pos_feats=d), d_model=d, backbone_channel_list=t.channel_list,
                       fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")
        self.image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=1)
        e = cfg.embedding_size
        self.sam_prompt_encoder = PromptEncoder(embed_dim=d, image_embedding_size=(e, e),
                                                input_image_size=(cfg.image_size, cfg.image_size),
                                                mask_in_chans=cfg.mask_in_chans)
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3, transformer_dim=d,
            transformer=TwoWayTransformer(depth=cfg.decoder_depth, embedding_dim=d, mlp_dim=cfg.decoder_mlp_dim,
                                          num_heads=cfg.decoder_heads),
            iou_head_depth=3, iou_head_hidden_dim=cfg.iou_head_hidden_dim, use_high_res_features=True,
            iou_prediction_use_sigmoid=True, pred_obj_scores=True, pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True)
        self.sam_mask_encoder = MaskEncoder(
            TwoWayTransformer(depth=cfg.encoder_depth, embedding_dim=d, mlp_dim=cfg.encoder_mlp_dim,
                              num_heads=cfg.encoder_heads), d)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)


class _Holder(nn.Module):
    # Official VQ_SAM2.model is a SAM2Model whose only submodule is ``sam2_model``.
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.sam2_model = SAM2Parts(cfg)


class MaskTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = config
        self.model = _Holder(config)
        self.quantizer = ResidualQuantizer(config.codebook_size, config.hidden_dim, config.codebook_depth,
                                           config.ema_decay, config.ema_eps, config.restart_unused_codes,
                                           config.dead_code_threshold)
        self.max_masks_per_pass = 64  # bounds decoder memory for images with very many masks
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def sam(self) -> SAM2Parts:
        return self.model.sam2_model

    @property
    def codebook_size(self) -> int:
        """Codes per level. The text format has 256 tokens per level; a smaller codebook never produces the
        rest, and parsing reads them as it reads codes past 255 (``tokenizer.codec.mask_groups``)."""
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebooks[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sam.no_mem_embed.dtype

    # ------------------------------------------------------------------ public API

    @torch.no_grad()
    def encode(self, image, masks, boxes=None) -> torch.Tensor:
        """Codes ``LongTensor[N, 2]`` of ``masks`` (bool [N, H, W], H x W = the image's size).

        ``boxes`` ([N, 4] xyxy pixels, x1/y1 inclusive: the last column/row of the mask, as the official
        pipelines compute them) default to each mask's tight box, ``tokenizer.masks.mask_to_box``. An empty
        mask has no box and no meaningful code: it is an error, as is a size mismatch.
        """
        pixels = to_rgb_array(image)
        m = _as_masks(masks, pixels.shape[:2])
        if len(m) == 0:
            return torch.zeros(0, self.config.codebook_depth, dtype=torch.long)
        empty = [i for i in range(len(m)) if not m[i].any()]
        if empty:
            raise ValueError(f"masks {empty} are empty: an empty mask has no box and cannot be encoded")
        b = self.prompt_boxes(boxes, m)
        feats = self.image_features(pixels)
        codes = []
        for s in range(0, len(m), self.max_masks_per_pass):
            z = self.embed_masks(feats, torch.from_numpy(m[s:s + self.max_masks_per_pass]),
                                 self.scale_boxes(b[s:s + self.max_masks_per_pass], pixels.shape[:2]))
            codes.append(self.quantizer(z)[2])
        return torch.cat(codes).cpu()

    @torch.no_grad()
    def prompt_boxes(self, boxes, masks) -> np.ndarray:
        """The box prompts [N, 4] for ``masks``: ``boxes`` (inclusive, the official convention) or each mask's
        tight box, shifted to the convention this tokenizer was trained with (``config.box_convention``)."""
        b = _as_boxes(boxes, masks)  # a fresh float64 array
        if self.config.box_convention == "exclusive":
            b[:, 2:] += 1
        return b

    def decode(self, image, codes) -> torch.Tensor:
        """Masks ``BoolTensor[N, H, W]`` (the image's size) for ``codes`` [N, 2] (or [N, 1]).

        Codes follow ``tokenizer.codec``'s repair rules: columns past the second are ignored, a missing
        second column or a level-2 code outside 0..255 is -1, and -1 is embedded as code 0 as the
        released decoder does (``ResidualQuantizer.embed_codes``): ``(c1, -1)`` decodes exactly as
        ``(c1, 0)``; ``codes`` itself is not modified. A level-1 code outside 0..255 cannot be decoded (the
        codec drops such a group) and is an error naming its row.
        """
        pixels = to_rgb_array(image)
        c = self.check_codes(codes)
        h, w = pixels.shape[:2]
        if len(c) == 0:
            return torch.zeros(0, h, w, dtype=torch.bool)
        feats = self.image_features(pixels)
        out = []
        for s in range(0, len(c), self.max_masks_per_pass):
            emb = self.quantizer.embed_codes(c[s:s + self.max_masks_per_pass])
            logits = self.decode_logits(feats, emb)[0]
            out.append(self.upsample(logits, (h, w)) > self.config.mask_threshold)
        return torch.cat(out).cpu()

    def check_codes(self, codes) -> torch.Tensor:
        """``codes`` as a new LongTensor [N, depth] repaired by the codec's rules (see ``decode``)."""
        try:
            c = torch.as_tensor(np.asarray(codes) if isinstance(codes, (list, tuple)) else codes)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"codes must be an integer array [N, 2]: {e}") from None
        if c.ndim == 1 and c.numel() == 0:
            c = c.reshape(0, self.config.codebook_depth)
        if c.ndim != 2 or c.shape[1] < 1:
            raise ValueError(f"codes must be [N, 2] (or [N, 1]), got shape {tuple(c.shape)}")
        if c.dtype.is_floating_point or c.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {c.dtype}")
        c = c.long()[:, : self.config.codebook_depth]
        if c.shape[1] < self.config.codebook_depth:
            c = torch.cat([c, c.new_full((len(c), self.config.codebook_depth - c.shape[1]), -1)], 1)
        k = self.config.codebook_size
        bad = torch.nonzero((c[:, 0] < 0) | (c[:, 0] >= k)).flatten().tolist()
        if bad:
            raise ValueError(f"level-1 codes must be in 0..{k - 1}; rows {bad} have {c[bad, 0].tolist()}")
        return torch.where((c >= 0) & (c < k), c, -1)

    # ------------------------------------------------------------------ building blocks (also used by training)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """Official preprocessing: direct (aspect-changing) resize to the square model size, /255, ImageNet norm."""
        s = self.config.image_size
        if pixels.shape[:2] != (s, s):
            pixels = np.array(Image.fromarray(pixels).resize((s, s), Image.BICUBIC))
        x = torch.from_numpy(np.array(pixels, copy=True)).to(self.device).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]
        return ((x - mean) / std)[None].to(self.dtype)

    def image_features(self, pixels: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Frozen image-encoder output (three FPN levels, strides 4/8/16) for an RGB uint8 array, cached.

        The key is a digest of the pixels with their shape, so two images share an entry only if they
        are identical. The cache holds features of the frozen encoder only; it is emptied whenever
        weights change (``load_state_dict``, ``.to()``) and bypassed while training.
        """
        key = (hashlib.blake2b(pixels.tobytes(), digest_size=32).hexdigest(), pixels.shape, str(pixels.dtype))
        if key in self._cache and not self.training:
            self.cache_hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.cache_misses += 1
        with torch.no_grad():
            # (the FPN's top-down path upcasts to float32; bring every level back to the model's dtype)
            feats = tuple(f.to(self.dtype) for f in self.sam.image_encoder(self.preprocess(pixels))["backbone_fpn"])
        if not self.training and self.config.cache_size > 0:
            self._cache[key] = feats
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return feats

    def clear_cache(self) -> None:
        self._cache.clear()

    def cache_info(self) -> dict:
        return {"hits": self.cache_hits, "misses": self.cache_misses, "size": len(self._cache),
                "max_size": self.config.cache_size}

    def scale_boxes(self, boxes: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """Pixel boxes of the original image -> model-input coordinates (the image is resized to a square):
        xyxy / (W, H, W, H) * image_size, as officially (the inclusive far corner is not shifted)."""
        h, w = hw
        scale = np.array([w, h, w, h], dtype=np.float64)
        return torch.from_numpy(boxes / scale * self.config.image_size).float().to(self.device)

    def image_embedding(self, feats) -> torch.Tensor:
        # Single-frame SAM2: the no-memory embedding is added to the stride-16 features.
        return feats[2] + self.sam.no_mem_embed.reshape(1, -1, 1, 1)

    def embed_masks(self, feats, masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Latent z [N, D] of masks [N, H, W] (any size) with boxes [N, 4] in model-input pixels.

        ``feats`` has batch 1 (one image for all masks) or N (one image per mask).
        """
        pe = self.sam.sam_prompt_encoder
        prompt = F.interpolate(masks[:, None].to(self.device, torch.float32), size=pe.mask_input_size,
                               mode="bilinear", align_corners=False, antialias=True)
        labels = torch.tensor([[2, 3]], device=self.device).expand(len(masks), -1)
        sparse, dense = pe(points=(boxes.reshape(-1, 2, 2), labels), boxes=None, masks=prompt.to(self.dtype))
        z = self.sam.sam_mask_encoder(self.image_embedding(feats), pe.get_dense_pe().to(self.dtype),
                                     sparse.to(self.dtype), dense)
        return z.reshape(len(masks), -1)

    def decode_logits(self, feats, code_embeddings: torch.Tensor, all_candidates: bool = False):
        """Best low-res mask logits [N, 4e, 4e] and its predicted IoU [N] (or all three candidates)."""
        n = len(code_embeddings)
        pe, dec = self.sam.sam_prompt_encoder, self.sam.sam_mask_decoder
        # No points: SAM2 pads with one "not a point" token (plus the prompt encoder's own padding).
        points = (torch.zeros(n, 1, 2, device=self.device), -torch.ones(n, 1, dtype=torch.int32, device=self.device))
        sparse, dense = pe(points=points, boxes=None, masks=None)
        sparse = torch.cat([sparse.to(self.dtype), code_embeddings[:, None].to(self.dtype)], 1)
        high_res = [dec.conv_s0(feats[0]), dec.conv_s1(feats[1])]
        emb = self.image_embedding(feats)
        if emb.shape[0] == 1 and n > 1:
            emb, high_res = emb.expand(n, -1, -1, -1), [f.expand(n, -1, -1, -1) for f in high_res]
        logits, iou, _, _ = dec(image_embeddings=emb, image_pe=pe.get_dense_pe().to(self.dtype), sparse_prompt_embeddings=sparse,
                                dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False,
                                high_res_features=high_res)
        logits, iou = logits.float(), iou.float()
        if all_candidates:
            return logits, iou
        best = iou.argmax(1)
        rows = torch.arange(n, device=logits.device)
        return logits[rows, best], iou[rows, best]

    @staticmethod
    def upsample(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(logits[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]

    # ------------------------------------------------------------------ cache invalidation

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()  # .to(device/dtype) would leave features of the old dtype/device behind
        out = super()._apply(fn, *args, **kwargs)
        # sam2's random-Fourier point encoding multiplies float32 coordinates by this matrix, so it
        # must stay float32 when the rest of the model goes to bf16.
        pe = self.sam.sam_prompt_encoder.pe_layer
        pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, path) -> None:
        """``config.json`` + ``model.safetensors`` in ``path``; each file is written then renamed into place."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / "model.safetensors.tmp"), metadata={"format": "pt"})
        self.config.save(path / "config.json.tmp")
        os.replace(path / "model.safetensors.tmp", path / "model.safetensors")
        os.replace(path / "config.json.tmp", path / "config.json")

    @classmethod
    def from_pretrained(cls, path, device=None) -> MaskTokenizer:
        from safetensors.torch import load_file

        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} not found: not a saved MaskTokenizer directory")
        model = cls(TokenizerConfig.load(path / "config.json"))
        _load_strict(model, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
        return (model.to(device) if device is not None else model).eval()

    @classmethod
    def load_official(cls, mask_tokenizer_ckpt, sam2_ckpt, sam2_config: str = "sam2.1_hiera_l",
                      image_size: int = 1024) -> MaskTokenizer:
        """The released tokenizer from ``mask_tokenizer_256x2.pth`` and ``sam2.1_hiera_large.pt``.

        SAM2's weights are read first (under ``model.sam2_model.``), then the tokenizer's state dict on
        top of them (it may hold SAM2's weights as well). Only SAM2's video-tracking parts
        (``VIDEO_ONLY_KEYS``) may be left over; any other missing or unexpected key is an error listing them.
        """
        model = cls(from_sam2(sam2_config, image_size))
        state = {SAM2_PREFIX + k: v for k, v in _read_checkpoint(sam2_ckpt).items()}
        state.update(_read_checkpoint(mask_tokenizer_ckpt))
        state = {k: v for k, v in state.items()
                 if not (k.startswith(SAM2_PREFIX) and k[len(SAM2_PREFIX):].startswith(VIDEO_ONLY_KEYS))}
        _load_strict(model, state, f"{mask_tokenizer_ckpt} + {sam2_ckpt}")
        return model.eval()


# ---------------------------------------------------------------------- helpers


def to_rgb_array(image) -> np.ndarray:
    """An RGB uint8 HxWx3 array from a PIL image or a uint8 array.

    Documented conversions: grayscale (HxW, HxWx1, PIL "L"/"I"/...) is replicated to three channels;
    RGBA drops its alpha channel (the pixels are used as they are, not composited).
    """
    if isinstance(image, Image.Image):
        image = image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be a PIL image or a uint8 array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"image has no pixels: shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def _as_masks(masks, hw: tuple[int, int]) -> np.ndarray:
    m = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {m.shape}")
    if tuple(m.shape[1:]) != tuple(hw):
        raise ValueError(f"masks are {m.shape[1]}x{m.shape[2]} but the image is {hw[0]}x{hw[1]}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"masks must be boolean (or 0/1), got dtype {m.dtype} with other values")
        m = m.astype(bool)
    return m


def _as_boxes(boxes, masks: np.ndarray) -> np.ndarray:
    if boxes is None:
        return np.array([mask_to_box(m) for m in masks], dtype=np.float64)
    b = boxes.detach().cpu().numpy() if isinstance(boxes, torch.Tensor) else np.asarray(boxes, dtype=np.float64)
    if b.shape != (len(masks), 4):
        raise ValueError(f"boxes must be [N, 4] = [{len(masks)}, 4] xyxy, got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boxes contain NaN or infinity")
    return b.astype(np.float64)


def _read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    # Containers seen in practice: {"model": sd} (SAM2), {"state_dict": sd} (mmengine), a bare sd.
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and not torch.is_tensor(obj[key]):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _load_strict(model: nn.Module, state: dict, source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            problems.append(f"{label} keys: {shown}")
    if problems:
        raise ValueError(f"cannot load {source}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)

