"""What every environment shares: the sample and row schemas, answers, bad-row handling, row building.

An environment turns a source dataset into *samples* (``envs.task`` holds what its task shares). A sample
is a dict with ``id``, ``image_id``, ``task``, ``image`` (PIL image or checked path), ``masks`` (COCO RLE
per instance, in answer order), ``question``, and ``expression`` + ``no_target`` (GRES) or
``caption`` + ``spans`` + ``phrases`` (GCG); loaders add ``source`` (``file[index]``) for error
messages. ``build_rows`` turns the samples of one image into training rows by encoding their GT
masks with a ``MaskTokenizer`` into the GT answers. Rows are plain dicts that ``datasets`` stores and TRL's
``GRPOTrainer`` consumes directly; every environment writes the same columns, so GRES and GCG rows can be
concatenated into one mixed dataset:

=========== ===================================================================================
prompt      ``[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]``
image       PIL image (a path in a ``datasets`` ``Image`` column, decoded on access)
answer      GT answer text with mask tokens (GRES JSON list / ``No target.``, or the GCG caption)
masks       GT instance masks as COCO RLE (``{"size": [H, W], "counts": str}``), answer order;
            empty for no-target; ``merged_mask`` gives their union (the GRES metric's GT)
task        the task's name (``envs.task``: ``"gres"`` or ``"gcg"``)
no_target   True when the expression refers to nothing (GRES)
id          stable sample id; ``image_id`` the source image id (GCG eval files are per image)
question    the question text; ``expression`` (GRES) / ``caption`` (GCG, no tokens) / ``phrases`` (GCG)
=========== ===================================================================================
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tokenizer.codec import CODEBOOK_SIZE, NO_TARGET, OBJ_END, OBJ_START, format_mask, parse_masks
from tokenizer.masks import compact_rle, decode_rle, mask_to_box


@dataclass(frozen=True)
class Task:
    """What every environment of one task shares (``envs.task`` defines GRES and GCG and says what each field is for)."""

    name: str
    metrics: tuple[str, ...]  # reported, in percent, headline first
    mask_metric: str  # rises only when the masks themselves get better
    max_new_tokens: int  # greedy completion budget of the demo, experiments and monitor
    recommended_rewards: tuple[str, ...]  # rewards.registry names: what a recipe that lists none trains with
    answer: Callable[[dict, list[str]], str]  # (sample, its masks' token texts in answer order) -> GT answer
    score: Callable[..., dict]  # (rows, texts, mask_tokenizer, out_dir, embed=, with_captions=) -> metrics
    kind: Callable[[dict], str]  # a row's answer kind (the probe reports per kind)
    exact: Callable[[str, str], bool]  # (completion, GT answer): the paper's binary reward gives full marks
    iou_mode: str  # the rewards.iou.MaskIoU mode that measures a completion's masks against the GT
    gain_sources: tuple[tuple[str, str], ...]  # (what a rise means, metric), in the order reports name them
    mask_flag_reason: Callable[[dict], str]  # why a headline gain without a mask-metric gain is suspect
    trade_metric: str | None = None  # falls when targets are traded for "No target." (GRES: T-acc)
    no_target_kind: str | None = None  # the kind whose GT is "No target." (the probe's collapse warning)
    reward_terms: str = ""  # how the demo describes the answer_match terms it reports beside the metrics
    score_note: Callable[[], str] | None = None  # a line every report of this task's metrics carries
    demo_target: float | None = None  # the headline gain the demo is expected to reach, if one was set

    @property
    def headline(self) -> str:
        return self.metrics[0]


TASKS: dict[str, Task] = {}  # filled by envs.task (GRES, GCG) and by plugins


def register_task(task: Task) -> Task:
    TASKS[task.name] = task
    return task


def get_task(task: str | Task) -> Task:
    """The task called ``task`` (a ``Task`` is returned as it is); unknown names list the valid ones."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


@dataclass(frozen=True)
class Environment:
    """Data + prompts + answers of one task on one source.

    ``samples(split, bad_rows)`` returns sample dicts (see above); ``task`` names an ``envs.task.Task``, which
    holds the metric, the answer format and the recommended rewards.
    """

    name: str
    task: str
    splits: tuple[str, ...]
    samples: Callable[..., Iterable[dict]]

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"environment {self.name!r}: task must be one of {tuple(TASKS)}, got {self.task!r}")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"environment {self.name!r} has no split {split!r}; choose from {self.splits}")


def load_json(path, kind: type | None = None):
    """JSON from ``path``; unreadable files and (with ``kind``) the wrong top-level type name the file."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON: {e}") from None
    if kind is not None and not isinstance(data, kind):
        raise ValueError(f"{path}: expected a JSON {kind.__name__} at the top level, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------- bad rows
class BadRowError(ValueError):
    """A malformed source row; the message names the file and the index."""


@dataclass
class BadRows:
    """Strict mode raises on the first bad row (before training starts); lenient mode skips and counts."""

    strict: bool = True
    skipped: list[dict] = field(default_factory=list)

    def report(self, file, index, reason: str) -> None:
        if self.strict:
            raise BadRowError(f"{file}[{index}]: {reason}")
        self.skipped.append({"file": str(file), "index": index, "source": f"{file}[{index}]", "reason": reason})


def safe_image_path(root, relative) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` tricks that leave ``root`` (``ValueError``)."""
    if not isinstance(relative, str) or not relative:
        raise ValueError(f"image path must be a non-empty string, got {relative!r}")
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"image path {relative!r} escapes the image root {str(root)!r}")
    return path


# ----------------------------------------------------------------------------------------- answers
def sort_instances(boxes) -> list[int]:
    """Instance order of SAMTok's answers: box centre x, then y (``sort_mask_indices(..., "ltr-ttb")``).

    The official sort takes inclusive boxes (``masks_to_boxes``); exclusive ones (COCO's ``x + w``) shift
    every centre by the same half pixel, so either gives the same order.
    """
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
    return sorted(range(len(boxes)), key=lambda i: centres[i])


def gres_answer(mask_texts: list[str], label: str) -> str:
    """The GRES GT answer: a fenced JSON list of ``{"mask_2d": <mask tokens>, "label": ...}``, or ``No target.``.

    The mask is written unquoted and the label is the expression itself (SAMTok's v1 variant); the
    answer-matching reward only reads mask groups, so the label variant does not change rewards.
    """
    if not mask_texts:
        return NO_TARGET
    items = [f'{{"mask_2d": {m}, "label": {json.dumps(label, ensure_ascii=False)}}}' for m in mask_texts]
    return "```json\n[" + ",\n".join(items) + "]\n```"


def gcg_answer(caption: str, spans, mask_texts: list[str]) -> str:
    """The caption with each phrase span written ``<|object_ref_start|> phrase <|object_ref_end|> <mask>``.

    This is GLaMM's ``<p> phrase </p> [SEG]`` with Qwen's object-ref tokens and the SAMTok mask in place of
    ``[SEG]``. Spans are ``(start, end)`` character offsets in caption order, one per mask, so that the
    answer's masks come in the same order as the row's ``masks`` column (rewards align them by position).
    """
    if len(spans) != len(mask_texts):
        raise ValueError(f"{len(spans)} phrase spans but {len(mask_texts)} masks")
    out, pos = [], 0
    for (start, end), mask_text in zip(spans, mask_texts):
        if not pos <= start < end <= len(caption):
            raise ValueError(f"phrase span {(start, end)} is out of caption order, overlaps another or lies outside the caption")
        out += [caption[pos:start], f"{OBJ_START} {caption[start:end]} {OBJ_END} {mask_text}"]
        pos = end
    return "".join(out + [caption[pos:]])


def chat_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


# -------------------------------------------------------------------------------------- row building
def load_image(image) -> Image.Image:
    """A sample's image as RGB PIL (samples carry either a PIL image or a checked path)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {str(image)!r}: {e}") from None


def decode_masks(rles, shape) -> np.ndarray:
    """GT masks as bool [K,H,W], validated: RLE well-formed, size equal to the image's, not empty."""
    masks = [decode_rle(rle) for rle in rles]
    for m in masks:
        if m.shape != tuple(shape):
            raise ValueError(f"a GT mask is {m.shape[0]}x{m.shape[1]} but the image is {shape[0]}x{shape[1]}")
        if not m.any():
            raise ValueError("a GT mask is empty")
    return np.stack(masks) if masks else np.zeros((0, *shape), bool)


def merged_mask(masks_rle, shape) -> np.ndarray:
    """The union of a row's GT instance masks (GRES scores against this); all False for no-target."""
    union = np.zeros(tuple(shape), bool)
    for rle in masks_rle:
        union |= decode_rle(rle, shape)
    return union


def predicted_masks(text: str, row: dict, mask_tokenizer) -> np.ndarray:
    """bool [N,H,W]: one mask per mask group of a completion, decoded on the row's image (N may be 0)."""
    image = load_image(row["image"])
    codes = parse_masks(text, getattr(mask_tokenizer, "codebook_size", CODEBOOK_SIZE))
    if not codes:
        return np.zeros((0, image.height, image.width), bool)
    return np.asarray(mask_tokenizer.decode(image, codes), dtype=bool)


def unique_masks(samples: list[dict]) -> dict:
    """The distinct GT masks of some samples, keyed by their RLE (in first-seen order)."""
    return {_rle_key(r): r for s in samples for r in s["masks"]}


def _rle_key(rle: dict):
    return (tuple(rle["size"]), compact_rle(rle)["counts"])


def build_rows(samples: list[dict], mask_tokenizer, image: Image.Image | None = None) -> list[dict]:
    """Rows for samples that share one image: its distinct GT masks are encoded in one batch.

    An instance shared by several samples (every sentence of a gRefCOCO ref, say) is encoded once.
    ``mask_tokenizer=None`` builds evaluation rows without encoding: their ``answer`` is empty (the
    metrics compare decoded masks with the GT RLE, not answer strings).
    """
    if not samples:
        return []
    image = image if image is not None else load_image(samples[0]["image"])
    rles = unique_masks(samples)
    masks = decode_masks(list(rles.values()), (image.height, image.width))
    texts = dict.fromkeys(rles, "")
    if mask_tokenizer is not None and len(masks):
        # The box prompt in the official convention (inclusive far corner, torchvision's masks_to_boxes).
        codes = mask_tokenizer.encode(image, masks, [mask_to_box(m) for m in masks])
        codes = np.asarray(codes.cpu() if hasattr(codes, "cpu") else codes).reshape(len(masks), -1)
        texts = dict(zip(rles, (format_mask(c) for c in codes.tolist())))
    rows = [_row(s, [texts[_rle_key(r)] for r in s["masks"]]) for s in samples]
    return rows if mask_tokenizer is not None else [{**r, "answer": ""} for r in rows]


def _row(sample: dict, mask_texts: list[str]) -> dict:
    """The training row of one sample whose masks were encoded to ``mask_texts`` (same order)."""
    task = sample["task"]
    answer = get_task(task).answer(sample, mask_texts)
    return {
        "id": str(sample["id"]),
        "image_id": str(sample.get("image_id", sample["id"])),
        "task": task,
        "prompt": chat_prompt(sample["question"]),
        "image": sample["image"] if isinstance(sample["image"], Image.Image) else str(sample["image"]),
        "answer": answer,
        "masks": [compact_rle(r) for r in sample["masks"]],
        "no_target": bool(sample.get("no_target", False)),
        "question": sample["question"],
        "expression": sample.get("expression", ""),
        "caption": sample.get("caption", ""),
        "phrases": list(sample.get("phrases", [])),
    }



def row_features():
    """``datasets.Features`` of a row (explicit, so empty mask lists and mixed tasks keep one schema)."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    content = {"type": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"),
        "image_id": Value("string"),
        "task": Value("string"),
        "prompt": List({"role": Value("string"), "content": List(content)}),
        "image": ImageFeature(),
        "answer": Value("string"),
        "masks": List({"size": List(Value("int64")), "counts": Value("string")}),
        "no_target": Value("bool"),
        "question": Value("string"),
        "expression": Value("string"),
        "caption": Value("string"),
        "phrases": List(Value("string")),
    })


def rows_to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows, features=row_features())


def group_by_image(samples: Iterable[dict]) -> Iterable[list[dict]]:
    """Consecutive samples that share an image, so that each image is read and encoded once."""
    batch: list[dict] = []
    for s in samples:
        if batch and _image_key(s) != _image_key(batch[0]):
            yield batch
            batch = []
        batch.append(s)
    if batch:
        yield batch


def _image_key(sample: dict):
    im = sample["image"]
    return ("obj", id(im)) if isinstance(im, Image.Image) else ("path", str(im))
