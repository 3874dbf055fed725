"""IoU reward from SAMTok decoding: the predicted codes are decoded into masks on the row's image and
compared with the row's ground-truth masks (dataset column ``masks``: a list of COCO RLE dicts).

Modes:

* ``gres``: IoU of the union of the predicted masks against the merged GT, with ReLA's no-target rule: no
  predicted mask on a no-target row -> 1, any mask on a no-target row -> 0, no mask on a target row -> 0.
* ``instances``: one-to-one Hungarian matching of predicted and GT masks on IoU; the sum of the matched
  IoUs / max(N_pred, N_gt) (both empty -> 1, one empty -> 0), so extra or missing instances cost.
* ``gcg``: the same matching restricted to pairs with the same (normalised) phrase; predicted pairs are the
  mask groups that directly follow ``<|object_ref_start|>phrase<|object_ref_end|>``; GT phrases come from the
  ``answer`` column in order, aligned with ``masks``.

Predicted groups are repaired as the official decoding path does (``tokenizer.codec.mask_groups``, in every
mode): e.g. a start and one code that end the output or are followed by text decode as ``(c1, -1)``, a group
with text between its tokens or a bad first code is dropped. In ``gcg`` mode a phrase predicts the repaired
group that starts right after it (after optional whitespace).

Cost and memory: per call (TRL calls a reward once per generation batch), one image-encoder pass per distinct
image and batched decoder passes for every distinct code of every completion of that image, across all the groups
of the batch (``MaskIoU.decode_batch``; the ``num_generations`` completions of a prompt share its image).

Every decoder pass holds exactly ``pass_size`` masks (the last pass of an image is filled up by repeating its last
code, whose extra masks are dropped). A batched decoder's float sums depend on how many masks share a pass (on a
CPU, passes of 1, 2 and 3 masks give a code logits that differ by up to 1e-5), so with passes of any size a mask
could gain or lose a pixel at the threshold, and a completion's reward would depend on which other completions
shared its call. With one pass shape a code's mask is a function of the code and the image alone, and decoding
the whole batch at once gives the rewards of decoding completion by completion to the last bit.

Decoding runs on the tokenizer's device (the GPU when there is one); ``MaskTokenizer.decode``
returns the masks on the CPU, where the IoU is computed: per completion, N predicted and M GT masks of
H x W take (N + M) * H * W bytes as booleans plus 4 * (N + M) * H * W bytes as float32 during the IoU
product, e.g. about 40 MB for N = M = 4 on a 1024 x 1024 image, freed after each completion. On the
device: the tokenizer's weights, its cached image features (``cache_size`` images, default 4; at 1024 px
the three FPN levels are 256 x (256^2 + 128^2 + 64^2) floats = 84 MiB per image in fp32, measured with the
hiera_t config, and the same for Hiera-L since the neck width sets it) and one decoder pass at a time.
Measured by ``bench/rewards.py --tokenizer hiera_t`` on an H200: peak 889 MiB of GPU memory allocated for
8 groups of 8 completions at 640 x 480 (random weights).
"""

from __future__ import annotations

from rewards.parsing import completion_text, gcg_pred, gt_gcg
from tokenizer.codec import CODEBOOK_SIZE, parse_masks

MODES = ("gres", "instances", "gcg")
# Masks per decoder pass by default. On a CPU a pass costs in proportion to its masks (tiny tokenizer, one
# thread: 2.9 ms for 1 mask, 5.5 ms for 4, 15.5 ms for 16), so a pass filled up from 1 to 4 masks costs little
# and larger ones waste more. On a GPU a pass of the SAM decoder is expected to cost its kernel launches more
# than its masks, so fewer, larger passes should be cheaper: an expectation until bench/rewards.py --pass-size
# measures it there.
PASS_SIZE = {"cpu": 4, "accelerator": 16}


def _load_tokenizer(mask_tokenizer, device):
    import torch

    from tokenizer.load import load_mask_tokenizer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(mask_tokenizer, str):
        return load_mask_tokenizer(mask_tokenizer, device)
    if not hasattr(mask_tokenizer, "decode"):
        raise TypeError(f"mask_tokenizer must have a decode(image, codes) method, got {type(mask_tokenizer).__name__}")
    return mask_tokenizer  # a ready object stays where its owner put it


def _matched_iou(iou, allowed=None) -> float:
    """Sum of Hungarian-matched IoUs / max(N_pred, N_gt); ``allowed`` masks out pairs (different phrases)."""
    from scipy.optimize import linear_sum_assignment

    n_pred, n_gt = iou.shape
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    if allowed is not None:
        iou = iou * allowed
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return float(iou[rows, cols].sum()) / max(n_pred, n_gt)


def _gt_masks(rles, shape, cache):
    import numpy as np

    from tokenizer.masks import decode_rle

    if rles is None:
        rles = []
    if not isinstance(rles, (list, tuple)):
        raise ValueError(f"column 'masks' must be a list of COCO RLE dicts, got {type(rles).__name__}")
    if not rles:
        return np.zeros((0, *shape), dtype=bool)
    # The completions of a prompt carry equal copies of its masks: decode them once per call.
    key = (shape, tuple(r.get("counts") if isinstance(r, dict) and isinstance(r.get("counts"), str) else None
                        for r in rles))
    if None in key[1]:
        return np.stack([decode_rle(r, shape=shape) for r in rles])
    if key not in cache:
        cache.clear()  # consecutive rows share masks; keep one entry
        cache[key] = np.stack([decode_rle(r, shape=shape) for r in rles])
    return cache[key]


def _image_shape(image):
    if hasattr(image, "shape") and len(image.shape) in (2, 3):  # an HxW or HxWxC array
        return int(image.shape[0]), int(image.shape[1])
    if hasattr(image, "size") and isinstance(image.size, tuple):  # PIL: size is (W, H)
        return image.size[1], image.size[0]
    raise ValueError(f"column 'image' must be a PIL image or an HxW(xC) array, got {type(image).__name__}")


def _iou_matrix(pred, gt):
    import torch

    dev = pred.device
    p = pred.reshape(len(pred), -1).float()
    g = torch.as_tensor(gt, device=dev).reshape(len(gt), -1).float()
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).cpu().numpy()


class MaskIoU:
    """The decoded-mask IoU reward as a callable (TRL's contract). It pickles with its mask tokenizer (a torch
    module), so a process pool or trl's async trainer can ship it to workers."""

    __name__ = "mask_iou"
    builds_model = True  # recipe validation binds its parameters without building it

    def __init__(self, mode: str = "gres", mask_tokenizer="tiny16", device=None, max_pred_masks: int = 64,
                 batch_decode: bool = True, pass_size: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(max_pred_masks, int) or max_pred_masks < 1:
            raise ValueError(f"max_pred_masks must be a positive integer, got {max_pred_masks!r}")
        if pass_size is not None and (not isinstance(pass_size, int) or isinstance(pass_size, bool) or pass_size < 1):
            raise ValueError(f"pass_size must be a positive integer or null, got {pass_size!r}")
        self.mode, self.max_pred_masks, self.batch_decode = mode, max_pred_masks, batch_decode
        self.mask_tokenizer = _load_tokenizer(mask_tokenizer, device)
        limit = getattr(self.mask_tokenizer, "max_masks_per_pass", None)
        if pass_size is not None and limit is not None and pass_size > limit:
            # The tokenizer would split such a pass in two of other sizes, the variation pass_size removes.
            raise ValueError(f"pass_size {pass_size} is above the mask tokenizer's max_masks_per_pass ({limit})")
        self.pass_size = pass_size
        # Groups are parsed as this tokenizer decodes them: a code past a smaller codebook names no mask.
        self.codebook_size = getattr(self.mask_tokenizer, "codebook_size", CODEBOOK_SIZE)

    def decode(self, image, codes):
        """Masks [len(codes), H, W] (None for no codes), each distinct code decoded once."""
        import torch

        if not codes:
            return None
        masks = self.decode_distinct(image, list(dict.fromkeys(codes)))
        return torch.stack([masks[c] for c in codes])

    def masks_per_pass(self) -> int:
        """``pass_size``, or the default for the device the tokenizer runs on now (``PASS_SIZE``)."""
        if self.pass_size is not None:
            return self.pass_size
        on_cpu = getattr(getattr(self.mask_tokenizer, "device", None), "type", "cpu") == "cpu"
        size = PASS_SIZE["cpu" if on_cpu else "accelerator"]
        return min(size, getattr(self.mask_tokenizer, "max_masks_per_pass", size))

    def decode_distinct(self, image, codes) -> dict:
        """``{code: mask}`` for distinct ``codes``, in decoder passes of exactly ``masks_per_pass()`` masks."""
        import torch

        size, out = self.masks_per_pass(), {}
        for s in range(0, len(codes), size):
            chunk = codes[s:s + size]
            padded = chunk + [chunk[-1]] * (size - len(chunk))
            out.update(zip(chunk, torch.as_tensor(self.mask_tokenizer.decode(image, padded)).bool()))
        return out

    def parse(self, completion, answer):
        """``(codes, predicted phrases or None)`` of a completion, read as this tokenizer decodes them."""
        text = completion_text(completion)
        if self.mode == "gcg":
            pred_phrases, codes = gcg_pred(text, self.codebook_size)
            return codes, pred_phrases
        return parse_masks(text, self.codebook_size), None

    def score(self, completion, image, rles, answer, cache, decoded=None) -> float:
        """One completion's reward; ``decoded``: its masks already decoded (``{code: mask}``, the batched path)."""
        import numpy as np
        import torch

        if image is None:
            raise ValueError("mask_iou needs the dataset column 'image'")
        gt = _gt_masks(rles, _image_shape(image), cache)
        codes, pred_phrases = self.parse(completion, answer)
        if self.mode == "gcg":
            gt_phrases = gt_gcg(answer if isinstance(answer, str) else "")[1]
            if len(gt_phrases) != len(gt):
                raise ValueError(f"row has {len(gt_phrases)} phrases in 'answer' but {len(gt)} masks in 'masks'")
        if len(set(codes)) > self.max_pred_masks:
            return 0.0
        if decoded is None:
            pred = self.decode(image, codes)
        else:
            pred = torch.stack([decoded[c] for c in codes]) if codes else None
        if self.mode == "gres":
            if not gt.any():  # no-target row
                return 1.0 if pred is None else 0.0
            if pred is None:
                return 0.0
            merged = torch.as_tensor(gt.any(0, keepdims=True))
            return float(_iou_matrix(pred.any(0, keepdim=True), merged)[0, 0])
        n_pred = 0 if pred is None else len(pred)
        iou = np.zeros((n_pred, len(gt))) if pred is None or len(gt) == 0 else _iou_matrix(pred, gt)
        if self.mode == "instances":
            return _matched_iou(iou)
        allowed = np.array([[p == g for g in gt_phrases] for p in pred_phrases], dtype=float).reshape(iou.shape)
        return _matched_iou(iou, allowed)

    def decode_batch(self, completions, images, answers) -> list[dict | None]:
        """Every completion's masks, ``{code: mask}``, decoded per distinct image: one image-encoder pass and
        decoder passes of ``masks_per_pass()`` masks for all the distinct codes of all the completions of that image,
        across the groups of a generation batch. None for a completion that is not decoded here (no
        image, or more distinct masks than ``max_pred_masks``: ``score`` handles it)."""
        import hashlib

        import numpy as np

        wanted: dict = {}  # image key -> (image, distinct codes)
        keys = []
        for c, im, a in zip(completions, images, answers):
            codes, _ = self.parse(c, a)
            if im is None or len(set(codes)) > self.max_pred_masks:
                keys.append(None)
                continue
            pixels = np.asarray(im)
            key = (hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest(), pixels.shape)
            entry = wanted.setdefault(key, (im, {}))
            entry[1].update(dict.fromkeys(codes))
            keys.append(key)
        masks = {key: self.decode_distinct(im, list(codes)) for key, (im, codes) in wanted.items()}
        return [None if k is None else masks[k] for k in keys]

    def __call__(self, prompts=None, completions=(), completion_ids=None, image=None, masks=None, answer=None,
                 **columns):
        import torch

        n = len(completions)
        images = [None] * n if image is None else image
        rles = [None] * n if masks is None else masks
        answers = [None] * n if answer is None else answer
        cache = {}
        with torch.no_grad():
            decoded = self.decode_batch(completions, images, answers) if self.batch_decode else [None] * n
            return [self.score(c, im, r, a, cache, d)
                    for c, im, r, a, d in zip(completions, images, rles, answers, decoded, strict=True)]


def mask_iou(mode: str = "gres", mask_tokenizer="tiny16", device=None, max_pred_masks: int = 64,
             batch_decode: bool = True, pass_size: int | None = None) -> MaskIoU:
    """The decoded-mask IoU reward (a ``MaskIoU``).

    ``mask_tokenizer``: a ``tokenizer.MaskTokenizer`` (or any object with ``decode(image, codes)`` returning
    a bool tensor [N, H, W] at the image's size), or a ``tokenizer.load`` spec (``tiny16``, ``tiny``, a folder).
    In a recipe it is ``data.mask_tokenizer``, which encoded the answers. ``device`` (for a name or path): where the tokenizer runs; default the GPU when there is one.
    ``max_pred_masks`` bounds memory: a completion with more distinct predicted masks scores 0 undecoded
    (a degenerate rollout; a few hundred full-size masks would not fit). Repeated codes are decoded once.
    Needs the dataset columns ``image`` and ``masks`` (and ``answer`` for ``gcg``). ``batch_decode`` (default):
    decode every distinct code of a call's completions per distinct image at once (``MaskIoU.decode_batch``);
    False decodes completion by completion (the same rewards; kept for ``bench/rewards.py``'s comparison).
    ``pass_size``: masks per decoder pass, fixed so that rewards do not depend on how completions are batched
    (module docstring); at most the tokenizer's ``max_masks_per_pass``; None: 4 on a CPU, 16 on a GPU.
    """
    return MaskIoU(mode, mask_tokenizer, device, max_pred_masks, batch_decode, pass_size)


mask_iou.builds_model = True
