"""Configuration of the SAMTok mask tokenizer (VQ-SAM2): one dataclass, plus factories for known sizes.

``official()`` reproduces the released tokenizer (SAM2.1 Hiera-L at 1024 px, 256x2 unshared codebooks);
``hiera_t()`` is the same model with SAM2.1's smallest trunk (for benchmarks); ``tiny()`` is the CPU
configuration that the tests and the default run use (see its docstring for why each size was chosen).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tokenizer.codec import CODEBOOK_DEPTH, CODEBOOK_SIZE


@dataclass
class TrunkConfig:
    """SAM2's Hiera trunk (``sam2.modeling.backbones.hieradet.Hiera`` arguments)."""

    embed_dim: int = 144
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 6, 36, 4)
    global_att_blocks: tuple[int, ...] = (23, 33, 43)
    window_spec: tuple[int, ...] = (8, 4, 16, 8)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)

    @property
    def channel_list(self) -> list[int]:
        # Hiera doubles the width at every stage; the FPN neck lists them from the deepest stage down.
        return [self.embed_dim * 2**i for i in reversed(range(len(self.stages)))]


@dataclass
class TokenizerConfig:
    image_size: int = 1024
    hidden_dim: int = 256  # SAM2 prompt/decoder width; also the latent (VQ) dimension, as officially
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    # SAM2 mask decoder and the separate mask encoder (both two-way transformers)
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    encoder_depth: int = 2
    encoder_heads: int = 8
    encoder_mlp_dim: int = 2048
    mask_in_chans: int = 16
    # Residual VQ
    codebook_size: int = CODEBOOK_SIZE
    codebook_depth: int = CODEBOOK_DEPTH
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    restart_unused_codes: bool = True
    dead_code_threshold: float = 1.0  # EMA count below which a code is restarted (officially 1.0)
    # Inference
    mask_threshold: float = 0.5  # on the upsampled logits, as the official inference code does
    # The box prompt's far corner as this tokenizer was trained: "inclusive" (the last pixel row/column, the
    # official convention, torchvision masks_to_boxes) or "exclusive" (one past it). Codes depend on it: a
    # tokenizer prompted in a convention it was not trained with encodes every mask slightly off, and policies
    # learn those codes worse (the committed tiny tokenizer was trained with exclusive boxes).
    box_convention: str = "inclusive"
    cache_size: int = 4  # image-feature cache entries (LRU)
    # Training losses (official weights)
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    vq_loss_weight: float = 0.25
    iou_loss_weight: float = 0.0  # 0: IoU head frozen, as officially; >0: SAM-style IoU regression
    loss_sample_points: bool = False
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75

    def __post_init__(self):
        if isinstance(self.trunk, dict):
            self.trunk = TrunkConfig(**self.trunk)
        for name in ("stages", "global_att_blocks", "window_spec", "window_pos_embed_bkg_spatial_size"):
            setattr(self.trunk, name, tuple(getattr(self.trunk, name)))
        # Hiera downsamples 4 times by 2 after a stride-4 patch embedding; the FPN then upsamples the
        # stride-32 map by 2 and adds it to the stride-16 one, so odd sizes there would not line up.
        if self.box_convention not in ("inclusive", "exclusive"):
            raise ValueError(f"box_convention must be 'inclusive' or 'exclusive', got {self.box_convention!r}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        # The text format has CODEBOOK_SIZE tokens per level; a smaller codebook uses the first codebook_size of
        # them and never produces the rest (coarser codes shared by more masks, as SAMTok's are: see
        # tokenizer/weights/tiny16/README.md). The depth is fixed: a mask is always two codes.
        if self.codebook_depth != CODEBOOK_DEPTH or not 2 <= self.codebook_size <= CODEBOOK_SIZE:
            raise ValueError(
                f"the mask-token text format fixes {CODEBOOK_DEPTH} codebooks of 2..{CODEBOOK_SIZE} codes, "
                f"got {self.codebook_depth}x{self.codebook_size}"
            )

    @property
    def embedding_size(self) -> int:
        """Side of the stride-16 image embedding the decoders attend to."""
        return self.image_size // 16

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer config fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TokenizerConfig:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


# SAM2.1 trunks by their config name, as in sam2's configs/sam2.1/*.yaml.
SAM2_TRUNKS = {
    "sam2.1_hiera_t": TrunkConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "sam2.1_hiera_s": TrunkConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "sam2.1_hiera_b+": TrunkConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "sam2.1_hiera_l": TrunkConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}


def from_sam2(name: str = "sam2.1_hiera_l", image_size: int = 1024) -> TokenizerConfig:
    """The released tokenizer's layout on top of the named SAM2.1 trunk."""
    name = name.removesuffix(".yaml").split("/")[-1]
    if name not in SAM2_TRUNKS:
        raise ValueError(f"unknown SAM2 config {name!r}; known: {sorted(SAM2_TRUNKS)}")
    return TokenizerConfig(image_size=image_size, trunk=dataclasses.replace(SAM2_TRUNKS[name]))


def official() -> TokenizerConfig:
    """The released ``mask_tokenizer_256x2.pth``: SAM2.1 Hiera-L, 1024 px."""
    return from_sam2("sam2.1_hiera_l")


def hiera_t(image_size: int = 1024) -> TokenizerConfig:
    return from_sam2("sam2.1_hiera_t", image_size)


def tiny(codebook_size: int = CODEBOOK_SIZE) -> TokenizerConfig:
    """CPU configuration for tests and the shapes world (``codebook_size`` codes per level).

    * 256 px model input (the shapes world draws 112 px scenes): the decoder predicts logits at
      stride 4, i.e. a 64x64 grid, under 2 source pixels per cell, which small (16 px) shapes need to
      reach a high IoU; 128 px (3.5 px per cell) loses too much at their edges.
    * 64-d prompt/decoder width, a 4-stage Hiera of width 16 with one block per stage: the image
      encoder is frozen (and may stay random), so it only has to carry colour and position, which
      random features at stride 4 and 8 do; the trained parts (mask encoder, decoder, codebooks) stay
      small enough to train on a CPU (the committed weights took ~30 min on one thread, see
      ``tokenizer/weights/tiny/README.md``). A 384 px input trained no better in the same number of
      steps (held-out mIoU 0.754 vs 0.751) at ~2.5x the cost; 2 instead of 4 heads changed nothing.
    * The IoU head is trained (``iou_loss_weight=1``): with random weights it cannot pick the best of
      the three candidate masks, which the official model relies on.
    * Dead-code threshold 0.02 instead of 1.0: with batches of ~64 masks instead of the official
      1024, a healthy code's EMA count is far below 1 (see ``tokenizer.vq.VQEmbedding``).
    """
    return TokenizerConfig(
        image_size=256,
        hidden_dim=64,
        trunk=TrunkConfig(16, 1, (1, 1, 2, 1), (3,), (8, 4, 8, 8), (4, 4)),
        decoder_heads=4,
        decoder_mlp_dim=256,
        iou_head_hidden_dim=64,
        encoder_heads=4,
        encoder_mlp_dim=256,
        iou_loss_weight=1.0,
        dead_code_threshold=0.02,
        codebook_size=codebook_size,
    )
