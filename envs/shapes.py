"""The shapes world: procedurally drawn scenes with exact masks, the data of the CPU default run.

A scene has 0-4 flat-coloured objects (shape, colour, size, position) on a plain grey background.
Objects never overlap (their boxes are kept apart by a margin), so every mask is exactly the set
of pixels painted in the object's colour: there is no occlusion to reason about and no
anti-aliasing, which keeps the ground truth exact and the world learnable by a tiny VLM.

The language is deliberately small and regular (3 shapes, 4 colours, 2 sizes):

* GRES expressions select objects by attributes: ``"the red circle"``, ``"all red shapes"``,
  ``"the big square"``, ``"all circles"``. An expression hits one object, several, or none;
  about 20% of the samples are no-target.
* GCG captions list the objects left to right (``"a big red circle, a small blue square and a
  green triangle."``); each object's phrase is one grounded span with one mask.

Everything is deterministic by ``seed`` (numpy ``default_rng`` seeded with integers only), and the
train/val/test splits draw from independent streams of the same seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
SIZES = ("small", "big")
BACKGROUND = (128, 128, 128)
SPLITS = ("train", "val", "test")
NO_TARGET_RATE = 0.2

# Object count distribution: empty scenes exist but are rare (they are always no-target for GRES).
_COUNT_PROBS = (0.05, 0.30, 0.25, 0.20, 0.20)


def make_scenes(n: int, seed: int, image_size: int = 112, split: str = "train") -> list[dict]:
    """``n`` scenes: ``{"image": PIL RGB, "masks": bool [N,H,W], "objects": [{"shape","color","size","box"}]}``.

    ``box`` is the mask's tight box ``(x0, y0, x1, y1)`` in pixels with inclusive ``x1, y1`` (its last
    column and row; ``tokenizer.masks.mask_to_box``, the official convention).
    Objects are listed in drawing order; masks[i] belongs to objects[i].
    """
    rng = _rng(seed, split, "scenes")
    return [_make_scene(rng, image_size) for _ in range(n)]


def make_gres_samples(n: int, seed: int, split: str = "train", image_size: int = 112) -> list[dict]:
    """``n`` referring-expression samples, one expression per scene.

    Each sample: ``{"image", "masks" [K,H,W] (the referred objects, K=0 for no-target), "boxes",
    "expression", "no_target", "scene_id"}``.
    """
    rng = _rng(seed, split, "gres")
    scenes = make_scenes(n, seed, image_size, split)
    out = []
    for i, scene in enumerate(scenes):
        expr, hits = _expression(rng, scene["objects"])
        masks = scene["masks"][hits] if hits else np.zeros((0, image_size, image_size), bool)
        out.append({
            "image": scene["image"],
            "masks": masks,
            "boxes": [scene["objects"][j]["box"] for j in hits],
            "expression": expr,
            "no_target": not hits,
            "scene_id": f"shapes-{split}-{seed}-{i}",
        })
    return out


def make_gcg_samples(n: int, seed: int, split: str = "train", image_size: int = 112) -> list[dict]:
    """``n`` grounded-caption samples (scenes with at least one object).

    Each sample: ``{"image", "masks" [K,H,W], "boxes", "caption", "spans" [(start, end)] (the
    character span of each phrase, one per mask), "phrases", "scene_id"}``.
    """
    rng = _rng(seed, split, "gcg")
    out = []
    while len(out) < n:
        scene = _make_scene(rng, image_size, min_objects=1)
        order = sorted(range(len(scene["objects"])), key=lambda j: _centre(scene["objects"][j]["box"]))
        phrases = [_describe(scene["objects"][j], article="a") for j in order]
        caption, spans = _join_phrases(phrases)
        phrases = [caption[a:b] for a, b in spans]
        out.append({
            "image": scene["image"],
            "masks": scene["masks"][order],
            "boxes": [scene["objects"][j]["box"] for j in order],
            "caption": caption,
            "spans": spans,
            "phrases": phrases,
            "scene_id": f"shapes-gcg-{split}-{seed}-{len(out)}",
        })
    return out


def _rng(seed: int, split: str, stream: str) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # Integer entropy only: str hashes are randomised per process.
    return np.random.default_rng([int(seed), SPLITS.index(split), ("scenes", "gres", "gcg").index(stream)])


def _make_scene(rng: np.random.Generator, size: int, min_objects: int = 0) -> dict:
    from tokenizer.masks import mask_to_box

    probs = np.array(_COUNT_PROBS[min_objects:]) / sum(_COUNT_PROBS[min_objects:])
    count = min_objects + int(rng.choice(len(probs), p=probs))
    placed: list[tuple[int, int, int, int]] = []
    objects, masks = [], []
    for _ in range(count):
        obj = {"shape": SHAPES[rng.integers(3)], "color": list(COLORS)[rng.integers(4)], "size": SIZES[rng.integers(2)]}
        half = _half_extent(obj["size"], size)
        spot = _free_spot(rng, half, size, placed)
        if spot is None:  # crowded scene: fewer objects rather than overlapping ones
            continue
        placed.append(spot)
        mask = _draw(obj["shape"], spot, size)
        obj["box"] = mask_to_box(mask)
        objects.append(obj)
        masks.append(mask)
    pixels = np.empty((size, size, 3), np.uint8)
    pixels[:] = BACKGROUND
    for obj, mask in zip(objects, masks):
        pixels[mask] = COLORS[obj["color"]]
    return {
        "image": Image.fromarray(pixels, "RGB"),
        "masks": np.stack(masks) if masks else np.zeros((0, size, size), bool),
        "objects": objects,
    }


def _half_extent(size_name: str, image_size: int) -> int:
    # At 112 px: small objects span 16 px, big ones 30 px; one merged image token covers 28 x 28 px.
    return max(2, round(image_size * (0.07 if size_name == "small" else 0.135)))


def _free_spot(rng, half: int, size: int, placed, tries: int = 50):
    margin = max(1, size // 56)
    for _ in range(tries):
        cx, cy = (int(v) for v in rng.integers(half + margin, size - half - margin, size=2))
        box = (cx - half, cy - half, cx + half, cy + half)
        if all(box[2] + margin <= p[0] or p[2] + margin <= box[0] or box[3] + margin <= p[1] or p[3] + margin <= box[1]
               for p in placed):
            return box
    return None


def _draw(shape: str, box, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    corners = [x0, y0, x1 - 1, y1 - 1]
    if shape == "circle":
        draw.ellipse(corners, fill=255)
    elif shape == "square":
        draw.rectangle(corners, fill=255)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    return np.asarray(canvas) > 0


def _centre(box) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def _describe(obj: dict, article: str) -> str:
    return f"{article} {obj['size']} {obj['color']} {obj['shape']}"


# GRES queries: attribute filters. Each kind names the attributes it constrains.
_QUERY_KINDS = (("color", "shape"), ("color",), ("shape",), ("size", "shape"), ("size", "color", "shape"))
_VALUES = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES}


def _expression(rng: np.random.Generator, objects: list[dict]) -> tuple[str, list[int]]:
    """A referring expression and the indices of the objects it hits (empty = no target)."""
    # Empty scenes are no-target already; the rest make up the difference to NO_TARGET_RATE overall.
    want_target = bool(objects) and rng.random() >= (NO_TARGET_RATE - _COUNT_PROBS[0]) / (1 - _COUNT_PROBS[0])
    # Random attribute queries rarely hit several objects; ask for that case on purpose, when the
    # scene allows it, so that "all red shapes"-style answers are common enough to learn.
    want_several = want_target and len(objects) > 1 and rng.random() < 0.4
    for attempt in range(100):
        kind = _QUERY_KINDS[rng.integers(len(_QUERY_KINDS))]
        if want_target:  # take the attributes from a real object, so the query hits at least it
            anchor = objects[rng.integers(len(objects))]
            query = {a: anchor[a] for a in kind}
        else:
            query = {a: _VALUES[a][rng.integers(len(_VALUES[a]))] for a in kind}
        hits = [i for i, o in enumerate(objects) if all(o[a] == v for a, v in query.items())]
        if want_several and len(hits) < 2 and attempt < 50:
            continue
        if bool(hits) == want_target:
            plural = len(hits) > 1 if hits else bool(rng.random() < 0.5)
            return _phrase(query, plural), hits
    raise RuntimeError("could not draw a no-target query")  # unreachable: 3*4*2 combos vs <= 4 objects


def _phrase(query: dict, plural: bool) -> str:
    words = [query[a] for a in ("size", "color") if a in query]
    noun = query.get("shape", "shape")
    if plural:
        return "all " + " ".join(words + [noun + "s"])
    return "the " + " ".join(words + [noun])


def _join_phrases(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a, b and c."`` with the character span of each phrase."""
    caption, spans = "", []
    for i, p in enumerate(phrases):
        if i:
            caption += " and " if i == len(phrases) - 1 else ", "
        text = p[0].upper() + p[1:] if i == 0 else p
        spans.append((len(caption), len(caption) + len(text)))
        caption += text
    return caption + ".", spans


# ------------------------------------------------------------------------------- environment glue
def gres_samples(split: str, n: int, seed: int = 0, image_size: int = 112) -> list[dict]:
    """Shapes GRES samples in the common sample schema of ``envs.base`` (instances in answer order)."""
    from envs.base import sort_instances
    from envs.gres import EVAL_TEMPLATE
    from tokenizer.masks import encode_rle

    out = []
    for s in make_gres_samples(n, seed, split, image_size):
        order = sort_instances(s["boxes"])
        out.append({
            "id": s["scene_id"], "image_id": s["scene_id"], "task": "gres", "image": s["image"],
            "masks": [encode_rle(s["masks"][k]) for k in order],
            "question": EVAL_TEMPLATE.format(expr=s["expression"]),
            "expression": s["expression"], "no_target": s["no_target"],
        })
    return out


def gcg_samples(split: str, n: int, seed: int = 0, image_size: int = 112) -> list[dict]:
    """Shapes GCG samples in the common sample schema of ``envs.base``."""
    from envs.gcg import EVAL_QUESTION
    from tokenizer.masks import encode_rle

    return [
        {
            "id": s["scene_id"], "image_id": s["scene_id"], "task": "gcg", "image": s["image"],
            "masks": [encode_rle(m) for m in s["masks"]], "question": EVAL_QUESTION,
            "caption": s["caption"], "spans": s["spans"], "phrases": s["phrases"],
        }
        for s in make_gcg_samples(n, seed, split, image_size)
    ]


def shapes_env(task: str = "gres", train_size: int = 2000, eval_size: int = 200, seed: int = 0, image_size: int = 112):
    """The shapes world as an ``Environment``: ``train_size`` train samples, ``eval_size`` val and test."""
    from envs.base import Environment

    make = {"gres": gres_samples, "gcg": gcg_samples}
    if task not in make:
        raise ValueError(f"shapes task must be 'gres' or 'gcg', got {task!r}")
    sizes = {"train": train_size, "val": eval_size, "test": eval_size}

    def samples(split: str, bad_rows=None):
        if split not in sizes:
            raise ValueError(f"shapes has no split {split!r}; choose from {SPLITS}")
        return make[task](split, sizes[split], seed, image_size)

    return Environment(name=f"shapes_{task}", task=task, splits=SPLITS, samples=samples)
