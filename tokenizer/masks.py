"""Binary-mask helpers shared by the tokenizer, the rewards and the environments: COCO RLE, boxes, IoU.

RLE is validated in Python before pycocotools sees it: pycocotools' C decoder trusts its input and a
corrupt ``counts`` string can crash the whole process instead of raising.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask) -> dict:
    """COCO RLE of a boolean HxW mask, with ``counts`` as ``str`` so it is JSON-serialisable."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def validate_rle(rle) -> tuple[int, int]:
    """Check that ``rle`` is a well-formed COCO RLE and return its ``(H, W)``; ``ValueError`` says what is wrong.

    Accepts compressed (``counts`` as str/bytes) and uncompressed (``counts`` as a list of run lengths)
    RLE. The compressed form is decoded here, in Python, to check that the runs add up to H*W.
    """
    if not isinstance(rle, dict):
        raise ValueError(f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    size, counts = rle.get("size"), rle.get("counts")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in size)
    ):
        raise ValueError(f"RLE 'size' must be [H, W] non-negative integers, got {size!r}")
    h, w = int(size[0]), int(size[1])
    if isinstance(counts, list):
        runs = counts
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in runs):
            raise ValueError("RLE 'counts' list must hold non-negative integers")
    elif isinstance(counts, (str, bytes)):
        runs = _decode_counts(counts.encode("ascii", "replace") if isinstance(counts, str) else counts)
    else:
        raise ValueError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
    total = sum(int(r) for r in runs)
    if total != h * w:
        raise ValueError(f"RLE runs cover {total} pixels but size {h}x{w} has {h * w}")
    return h, w


def _decode_counts(s: bytes) -> list[int]:
    # COCO's compressed counts: 5-bit groups with a continuation bit, offset by 48, each run after the
    # second stored as a difference to the run two before (see pycocotools' rleFrString).
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("RLE 'counts' string is truncated")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE 'counts' has an invalid character at position {p}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError("RLE 'counts' decodes to a negative run length")
        runs.append(x)
    return runs


def decode_rle(rle, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean HxW mask from a COCO RLE, validated first; ``shape`` (H, W) is checked when given."""
    h, w = validate_rle(rle)
    if shape is not None and (h, w) != tuple(shape):
        raise ValueError(f"RLE size {h}x{w} does not match the expected {shape[0]}x{shape[1]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        coco = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        coco = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coco).astype(bool)


def compact_rle(rle) -> dict:
    """``rle`` in the form we store: ``{"size": [H, W], "counts": str}`` (list counts are compressed).

    Compressed counts are not re-validated here (it is called on every stored mask); validate untrusted
    input with ``validate_rle`` first.
    """
    counts = rle["counts"]
    if isinstance(counts, list):
        return encode_rle(decode_rle(rle))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts if isinstance(counts, str) else counts.decode("ascii")}


def polygons_to_rle(polygons, h: int, w: int) -> dict:
    """The union of COCO polygons (lists of x, y coordinates) as a stored RLE."""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def mask_to_box(mask) -> tuple[float, float, float, float]:
    """Tight box ``(x0, y0, x1, y1)`` in pixels, **inclusive**: x1/y1 are the last column/row that hold the
    mask (a one-pixel mask has x0 == x1); ``ValueError`` for an empty mask.

    This is the box prompt of the mask tokenizer, in the official convention: torchvision's
    ``masks_to_boxes``, which the SAMTok group's encode scripts use, and SAM2's own ``mask_to_box`` both
    put the far corner on the last pixel, not one past it (an exclusive corner moves the latent by about
    2%). Add 1 to x1/y1 for the pixel extent (COCO's ``x + w``).
    """
    m = np.asarray(mask, dtype=bool)
    ys = np.flatnonzero(m.any(axis=1))
    xs = np.flatnonzero(m.any(axis=0))
    if len(xs) == 0:
        raise ValueError("cannot take the box of an empty mask")
    return float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])


def masks_iou(a, b) -> np.ndarray:
    """Pairwise IoU between boolean masks ``a`` [N,H,W] and ``b`` [M,H,W] -> [N, M]; empty vs empty is 0."""
    a = np.asarray(a, dtype=bool).reshape(len(a), -1).astype(np.float32)
    b = np.asarray(b, dtype=bool).reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
