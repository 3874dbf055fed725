"""Training of the mask tokenizer: reconstruction through the 2-code bottleneck.

Losses are the official ones: BCE (weight 2.0) + Dice (0.5) on the decoded mask, optionally on
importance-sampled points, plus the VQ commitment loss (0.25); the codebooks move by EMA. The image
encoder and the prompt encoder are frozen (the prompt encoder may train when it starts random, see
``TrainArgs``); the mask encoder and the mask decoder train (the decoder's object-score head never, its
IoU head only when ``config.iou_loss_weight > 0``).

Samples are ``(image, masks)`` pairs: an RGB image (PIL or uint8 array) and bool masks [N, H, W]. The
data is any sequence (``len`` and indexing); each step draws ``batch_images`` of them with an RNG seeded by
``(seed, step)``, so a resumed run sees exactly the batches an uninterrupted one would.

Checkpoints: ``<out>/checkpoints/step_XXXXXXX/`` holds the weights, the optimizer/scheduler state and, written
last, a ``COMMITTED`` marker; resuming picks the newest committed one and ignores the others.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tokenizer.masks import decode_rle, masks_iou, polygons_to_rle, validate_rle
from tokenizer.model import MaskTokenizer, to_rgb_array


@dataclass
class TrainArgs:
    out_dir: str
    steps: int = 2000
    batch_images: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    loss_size: int = 0  # side of the grid the loss is computed on; 0 = the decoder's low-res grid (official)
    # From scratch, the encoder's latents start out nearly identical and a VQ trained on them collapses to
    # one code. So: train ``continuous_steps`` without quantising, then k-means the codebooks on
    # ``kmeans_masks`` latents. Fine-tuning released weights uses neither (0 / False).
    continuous_steps: int = 0
    kmeans_init: bool = False
    kmeans_masks: int = 2048
    # Officially the prompt encoder is SAM2's pretrained one and frozen. A randomly initialised one (the
    # tiny recipe) carries the mask and box far worse; training it lifted held-out mIoU after 200 steps
    # from 0.30 to 0.51 in our runs.
    train_prompt_encoder: bool = False
    train_image_encoder: bool = False  # likewise for a random image encoder (never for SAM2's pretrained one)
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0
    resume: bool = True
    progress: bool = True


def freeze_for_training(model: MaskTokenizer, train_prompt_encoder: bool = False,
                        train_image_encoder: bool = False) -> list[torch.nn.Parameter]:
    """Freeze what the official recipe freezes and return the parameters to optimise."""
    sam = model.sam
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [sam.sam_mask_encoder, sam.sam_mask_decoder]
    if train_prompt_encoder:
        trainable.append(sam.sam_prompt_encoder)
    if train_image_encoder:
        trainable.append(sam.image_encoder)
        sam.no_mem_embed.requires_grad_(True)
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    dec = sam.sam_mask_decoder
    frozen_heads = [dec.pred_obj_score_head, dec.obj_score_token]
    if model.config.iou_loss_weight <= 0:
        frozen_heads.append(dec.iou_prediction_head)
    for module in frozen_heads:
        for p in module.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def mask_losses(logits: torch.Tensor, target: torch.Tensor, cfg, generator: torch.Generator | None = None):
    """Per-mask ``(bce, dice)`` of logits [N, h, w] against float targets [N, H, W] (sizes may differ).

    Dense: logits are bilinearly resized to the target grid. Point-sampled (``cfg.loss_sample_points``):
    Mask2Former's importance sampling of uncertain points, with the target sampled at the same points.
    """
    if cfg.loss_sample_points:
        coords = _uncertain_points(logits, cfg, generator)
        pred = _point_sample(logits, coords)
        tgt = _point_sample(target, coords)
    else:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        pred, tgt = logits.flatten(1), target.flatten(1)
    bce = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(1)
    prob = pred.sigmoid()
    # Official "naive" Dice with eps 1.0: 1 - (2|P.T| + 1) / (|P| + |T| + 1)
    dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
    return bce, dice


def _point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    # x [N, H, W], coords [N, P, 2] in [0, 1] (x, y) -> [N, P]
    return F.grid_sample(x[:, None], 2 * coords[:, None] - 1, align_corners=False)[:, 0, 0]


def _uncertain_points(logits, cfg, generator) -> torch.Tensor:
    n, p = len(logits), cfg.num_points
    k = int(p * cfg.oversample_ratio)
    cand = torch.rand(n, k, 2, generator=generator, device="cpu").to(logits.device)
    with torch.no_grad():
        uncertainty = -_point_sample(logits.detach(), cand).abs()
    n_imp = int(cfg.importance_sample_ratio * p)
    idx = uncertainty.topk(n_imp, dim=1).indices
    picked = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    rest = torch.rand(n, p - n_imp, 2, generator=generator, device="cpu").to(logits.device)
    return torch.cat([picked, rest], 1)


def _latents(model: MaskTokenizer, batch: list):
    """Per-mask image features and latents z for a batch of ``(image, masks)``: one image-encoder pass."""
    pixels = [to_rgb_array(image) for image, _ in batch]
    trains_encoder = any(p.requires_grad for p in model.sam.image_encoder.parameters())
    with torch.set_grad_enabled(trains_encoder and torch.is_grad_enabled()):
        levels = model.sam.image_encoder(torch.cat([model.preprocess(p) for p in pixels]))["backbone_fpn"]
    owner = torch.cat([torch.full((len(m),), i) for i, (_, m) in enumerate(batch)]).to(model.device)
    feats = [f.to(model.dtype)[owner] for f in levels]
    masks = [torch.from_numpy(m)[:, None].float() for _, m in batch]
    size = model.sam.sam_prompt_encoder.mask_input_size
    prompts = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]
                         for m in masks])
    boxes = torch.cat([model.scale_boxes(model.prompt_boxes(None, m), p.shape[:2]) for p, (_, m) in zip(pixels, batch)])
    return feats, model.embed_masks(feats, prompts.to(model.device), boxes)


def train_step(model: MaskTokenizer, batch: list, loss_size: int, generator=None,
               quantize: bool = True) -> tuple[torch.Tensor, dict]:
    """Loss of one batch of ``(image, masks)`` samples (masks already checked, none empty)."""
    cfg = model.config
    size = loss_size or cfg.embedding_size * 4
    # Bilinear (area-weighted when shrinking) rather than the official nearest: soft edge pixels keep the
    # object's true boundary when the loss grid does not divide the mask's size.
    target = torch.cat([F.interpolate(torch.from_numpy(m)[:, None].float(), size=(size, size), mode="bilinear",
                                      align_corners=False, antialias=True)[:, 0] for _, m in batch]).to(model.device)
    feats, z = _latents(model, batch)
    if quantize:
        zq, commit, codes = model.quantizer(z, update=True)
    else:
        zq, commit, codes = z, z.new_zeros(()), torch.zeros(len(z), 1, dtype=torch.long)
    logits, iou_pred = model.decode_logits(feats, zq, all_candidates=True)
    n, k = logits.shape[:2]
    bce, dice = mask_losses(logits.flatten(0, 1), target.repeat_interleave(k, 0), cfg, generator)
    recon = (cfg.bce_weight * bce + cfg.dice_weight * dice).view(n, k)
    rows = torch.arange(n, device=logits.device)
    if cfg.iou_loss_weight > 0:
        # SAM's recipe: train the best candidate and teach the IoU head to recognise it.
        pick = recon.detach().argmin(1)
        with torch.no_grad():
            up = logits if logits.shape[-1] == size else F.interpolate(logits, size=(size, size), mode="bilinear")
            hard = up > cfg.mask_threshold
            inter = (hard & (target[:, None] > 0.5)).flatten(2).sum(2)
            union = (hard | (target[:, None] > 0.5)).flatten(2).sum(2)
            true_iou = inter / union.clamp_min(1)
        iou_loss = F.mse_loss(iou_pred, true_iou)
    else:
        pick = iou_pred.detach().argmax(1)  # official: the candidate the (frozen) IoU head prefers
        iou_loss = logits.new_zeros(())
    recon_loss = recon[rows, pick].mean()
    loss = recon_loss + cfg.vq_loss_weight * commit + cfg.iou_loss_weight * iou_loss
    used = torch.unique(codes[:, 0]).numel()
    return loss, {"loss": loss.item(), "recon": recon_loss.item(), "commit": commit.item(),
                  "iou_loss": iou_loss.item(), "masks": n, "level1_codes_in_batch": used}


def train(model: MaskTokenizer, data: Sequence, args: TrainArgs) -> MaskTokenizer:
    """Train ``model`` in place on ``data`` and save it to ``args.out_dir`` (resuming when possible)."""
    if len(data) == 0:
        raise ValueError("no training samples")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    params = freeze_for_training(model, args.train_prompt_encoder, args.train_image_encoder)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    warm = max(1, int(args.warmup_frac * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    start = _resume(model, opt, sched, out / "checkpoints") if args.resume else 0
    (out / "train_args.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    model.train()
    log = open(out / "train_log.jsonl", "a")
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not args.progress, desc="tokenizer")
    t0 = time.time()
    for step in bar:
        if args.kmeans_init and step == args.continuous_steps:
            init_codebooks(model, data, args)
        batch = _draw_batch(data, step, args)
        if not batch:
            continue
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        loss, stats = train_step(model, batch, args.loss_size, gen, quantize=step >= args.continuous_steps)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}: {stats}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            stats.update(step=step, lr=sched.get_last_lr()[0], elapsed_s=round(time.time() - t0, 1))
            log.write(json.dumps(stats) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{stats['loss']:.3f}", codes=stats["level1_codes_in_batch"])
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            _save_checkpoint(model, opt, sched, step + 1, out / "checkpoints", args.keep_checkpoints)
    log.close()
    model.eval()
    model.save_pretrained(out)
    return model


@torch.no_grad()
def init_codebooks(model: MaskTokenizer, data: Sequence, args: TrainArgs) -> None:
    """k-means initialisation of the codebooks on the latents of about ``args.kmeans_masks`` masks."""
    zs, batches = [], 0
    max_batches = 4 * -(-len(data) // args.batch_images)  # a small dataset: at most 4 passes over it
    while sum(len(z) for z in zs) < args.kmeans_masks and batches < max_batches:
        # Batches from a stream the training batches never use (negative step numbers).
        batch = _draw_batch(data, -1 - batches, args)
        batches += 1
        if batch:
            zs.append(_latents(model, batch)[1])
    if not zs:
        raise ValueError("no non-empty masks to initialise the codebooks with")
    model.quantizer.kmeans_init(torch.cat(zs), batches, seed=args.seed)


def _draw_batch(data: Sequence, step: int, args: TrainArgs) -> list:
    rng = np.random.default_rng([args.seed, step & 0xFFFFFFFF, int(step < 0)])
    batch = []
    for i in rng.choice(len(data), size=min(args.batch_images, len(data)), replace=False):
        image, masks = data[int(i)]
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"sample {i}: masks must be [N, H, W], got shape {masks.shape}")
        masks = masks[masks.any(axis=(1, 2))]  # empty masks have nothing to reconstruct
        if len(masks):
            batch.append((image, masks))
    return batch


def _save_checkpoint(model, opt, sched, step: int, root: Path, keep: int) -> None:
    d = root / f"step_{step:07d}"
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(d)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state()}, d / "trainer_state.pt")
    (d / "COMMITTED").write_text(str(step))
    for old in _committed(root)[:-keep]:  # rotate only after the new one is committed
        shutil.rmtree(old)


def _committed(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step_*") if (p / "COMMITTED").is_file())


def _resume(model, opt, sched, root: Path) -> int:
    ckpts = _committed(root)
    if not ckpts:
        return 0
    d = ckpts[-1]
    loaded = MaskTokenizer.from_pretrained(d)
    if loaded.config != model.config:
        raise ValueError(f"{d}: checkpoint config differs from the model being trained; use a new --out")
    model.load_state_dict(loaded.state_dict())
    state = torch.load(d / "trainer_state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


# ---------------------------------------------------------------------- evaluation and data


@torch.no_grad()
def reconstruction_miou(model: MaskTokenizer, data: Sequence) -> dict:
    """Mean per-mask IoU of ``decode(encode(mask))`` against the mask, over every non-empty mask in ``data``,
    and how the masks share codes (``code_sharing``)."""
    model.eval()
    ious, codes = [], []
    for image, masks in data:
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
        masks = masks[masks.any(axis=(1, 2))]
        if len(masks) == 0:
            continue
        c = model.encode(image, masks)
        rec = model.decode(image, c).numpy()
        ious.extend(float(masks_iou(a[None], b[None])[0, 0]) for a, b in zip(masks, rec))
        codes.extend(map(tuple, c.tolist()))
    if not ious:
        raise ValueError("no non-empty masks to evaluate")
    return {"miou": float(np.mean(ious)), "masks": len(ious), "frac_iou_ge_0.9": float(np.mean(np.array(ious) >= 0.9)),
            **code_sharing(codes)}


def code_sharing(codes) -> dict:
    """How many masks share each code pair, from the ``(c1, c2)`` of a set of masks.

    SAMTok's released tokenizer has ~3,200 training masks per pair: its codes are coarse and the decoder, which
    sees the image, draws the exact boundary, so one pair serves many objects and exact-match rewards can fire.
    ``masks_per_pair``: masks / distinct pairs used; ``frac_unique``: the share of masks whose pair no other mask
    has; ``level1_used`` / ``level2_used``: distinct codes per level.
    """
    from collections import Counter

    counts = Counter(tuple(c) for c in codes)
    n = sum(counts.values())
    if n == 0:
        return {"pairs_used": 0, "masks_per_pair": 0.0, "frac_unique": 0.0, "level1_used": 0, "level2_used": 0}
    return {"pairs_used": len(counts), "masks_per_pair": n / len(counts),
            "frac_unique": sum(1 for k in counts.values() if k == 1) / n,
            "level1_used": len({c[0] for c in counts}), "level2_used": len({c[1] for c in counts})}


class CocoMasks:
    """``(image, masks)`` samples from a COCO-style annotation file (polygons or RLE), images read lazily.

    Every annotation is checked once, up front; a bad one is an error naming the file, annotation id and
    field. Crowd annotations (``iscrowd=1``) are skipped: they mark groups, not objects.
    """

    def __init__(self, annotation_file, image_root, max_images: int | None = None):
        from PIL import Image  # noqa: F401  (fail early if PIL is missing)

        self.path, self.root = Path(annotation_file), Path(image_root)
        try:
            coco = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.path}: cannot read annotations ({e})") from None
        images = {}
        for im in coco.get("images", []):
            for f in ("id", "file_name", "height", "width"):
                if f not in im:
                    raise ValueError(f"{self.path}: image entry {im.get('id', '?')} lacks '{f}'")
            images[im["id"]] = im
        self.anns: dict = {}
        for a in coco.get("annotations", []):
            aid = a.get("id", "?")
            if a.get("image_id") not in images:
                raise ValueError(f"{self.path}: annotation {aid} refers to unknown image_id {a.get('image_id')!r}")
            if a.get("iscrowd", 0):
                continue
            im = images[a["image_id"]]
            self._check_segmentation(a, im)
            self.anns.setdefault(a["image_id"], []).append(a)
        self.ids = sorted(self.anns)[:max_images]
        self.images = images
        if not self.ids:
            raise ValueError(f"{self.path}: no non-crowd annotations")

    def _check_segmentation(self, ann: dict, im: dict) -> None:
        seg, aid = ann.get("segmentation"), ann.get("id", "?")
        where = f"{self.path}: annotation {aid} field 'segmentation'"
        if isinstance(seg, dict):
            try:
                h, w = validate_rle(seg)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if (h, w) != (im["height"], im["width"]):
                raise ValueError(f"{where}: RLE size {h}x{w} differs from the image's {im['height']}x{im['width']}")
        elif isinstance(seg, list) and seg:
            for poly in seg:
                if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or \
                        not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):
                    raise ValueError(f"{where}: each polygon must be a flat list of >= 3 finite (x, y) pairs")
        else:
            raise ValueError(f"{where}: expected a polygon list or an RLE dict, got {type(seg).__name__}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        from PIL import Image
        im = self.images[self.ids[i]]
        path = self.root / im["file_name"]
        try:
            image = Image.open(path).convert("RGB")
        except OSError as e:
            raise ValueError(f"{path}: cannot read image ({e})") from None
        h, w = im["height"], im["width"]
        if image.size != (w, h):
            raise ValueError(f"{path}: image is {image.size[1]}x{image.size[0]}, annotations say {h}x{w}")
        masks = []
        for a in self.anns[self.ids[i]]:
            seg = a["segmentation"]
            if isinstance(seg, dict):
                masks.append(decode_rle(seg, (h, w)))
            else:
                masks.append(decode_rle(polygons_to_rle(seg, h, w)))
        return image, np.stack(masks)
