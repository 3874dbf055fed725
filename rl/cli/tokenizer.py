"""``samtok-rl tokenizer train|eval``: train a mask tokenizer, or report its reconstruction mIoU.

It lives in ``rl/`` because it reads the shapes world (``envs.shapes``), which ``tokenizer/`` may not import.

The defaults are the first stage of the committed tiny tokenizer's recipe; the whole recipe (three
warm-started runs) is in ``tokenizer/weights/tiny/README.md``. Evaluate with::

    samtok-rl tokenizer eval --weights tokenizer/weights/tiny --data shapes --split val
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The tiny recipe (see ``tokenizer.config.tiny`` for the model's sizes).
TINY_RECIPE = dict(scenes=4000, steps=2400, batch_images=8, lr=1e-3, loss_size=128, continuous_steps=300,
                   kmeans_init=True, train_prompt_encoder=True)


@dataclass
class Options:
    """``samtok-rl tokenizer train|eval``'s options and their defaults (the command line: ``rl.cli.app``)."""

    out: str | None = None  # train: required
    data: str = "shapes"  # shapes | coco
    annotations: str | None = None
    images: str | None = None
    max_images: int | None = None
    scene_size: int = 112
    seed: int = 0
    threads: int = 1
    official_ckpt: str | None = None
    sam2_ckpt: str | None = None
    sam2_config: str = "sam2.1_hiera_l"
    config: str = "tiny"
    codebook_size: int | None = None  # codes per level (2..256); default the config's (256)
    init: str | None = None
    scenes: int | None = None  # train: TINY_RECIPE's; eval: 200
    steps: int = TINY_RECIPE["steps"]
    batch_images: int = TINY_RECIPE["batch_images"]
    lr: float = TINY_RECIPE["lr"]
    loss_size: int = TINY_RECIPE["loss_size"]
    continuous_steps: int | None = None  # TINY_RECIPE's from scratch, 0 when fine-tuning
    kmeans_init: bool | None = None  # on from scratch, off when fine-tuning
    point_loss: bool = False
    kmeans_masks: int = 2048
    train_prompt_encoder: bool | None = None  # on from scratch, off when fine-tuning
    ckpt_every: int = 250
    no_resume: bool = False
    no_progress: bool = False
    eval_scenes: int = 200
    weights: str = "tiny"
    split: str = "val"


def _load_data(args, n: int, split: str):
    if args.data == "coco":
        if not args.annotations or not args.images:
            raise SystemExit("--data coco needs --annotations and --images")
        from tokenizer.train import CocoMasks

        return CocoMasks(args.annotations, args.images, args.max_images)
    from envs.shapes import make_scenes

    return [(s["image"], s["masks"]) for s in make_scenes(n, args.seed, args.scene_size, split=split)]


def _official(args):
    from tokenizer import MaskTokenizer

    if bool(args.official_ckpt) != bool(args.sam2_ckpt):
        raise SystemExit("--official-ckpt and --sam2-ckpt go together")
    if args.official_ckpt:
        return MaskTokenizer.load_official(args.official_ckpt, args.sam2_ckpt, args.sam2_config)
    return None


def _build(args):
    import torch

    from tokenizer import MaskTokenizer, config

    model = _official(args)
    if args.codebook_size is not None and (model is not None or args.init):
        raise ValueError("--codebook-size sets a new tokenizer's codebooks; a --init or official tokenizer keeps its own")
    if model is not None:
        return model, True
    if args.init:
        return MaskTokenizer.from_pretrained(args.init), True
    factories = {"tiny": config.tiny, "hiera_t": config.hiera_t, "official": config.official}
    if args.config in factories:
        cfg = factories[args.config]()
    elif Path(args.config).is_file():
        cfg = config.TokenizerConfig.load(args.config)
    else:
        raise SystemExit(f"--config must be one of {sorted(factories)} or a config.json path, got {args.config!r}")
    if args.codebook_size is not None:
        cfg = dataclasses.replace(cfg, codebook_size=args.codebook_size)  # validated by the config itself
    torch.manual_seed(args.seed)
    return MaskTokenizer(cfg), False


def _train(args) -> int:
    from tokenizer.train import TrainArgs, reconstruction_miou, train

    model, pretrained = _build(args)
    if args.point_loss:
        model.config.loss_sample_points = True
    data = _load_data(args, args.scenes, "train")
    targs = TrainArgs(
        out_dir=args.out, steps=args.steps, batch_images=args.batch_images, lr=args.lr, loss_size=args.loss_size,
        continuous_steps=args.continuous_steps if args.continuous_steps is not None else
        (0 if pretrained else TINY_RECIPE["continuous_steps"]),
        kmeans_init=args.kmeans_init if args.kmeans_init is not None else not pretrained, kmeans_masks=args.kmeans_masks,
        train_prompt_encoder=args.train_prompt_encoder if args.train_prompt_encoder is not None else not pretrained,
        ckpt_every=args.ckpt_every, seed=args.seed, resume=not args.no_resume, progress=not args.no_progress)
    t0 = time.time()
    train(model, data, targs)
    seconds = time.time() - t0
    # The run finished and its weights are saved: the resume checkpoints have served their purpose.
    shutil.rmtree(Path(args.out) / "checkpoints", ignore_errors=True)
    report = {"train_seconds": round(seconds, 1), "steps": args.steps, "threads": args.threads}
    if args.data == "shapes" and args.eval_scenes > 0:
        held_out = _load_data(args, args.eval_scenes, "val")
        report["val"] = reconstruction_miou(model, held_out)
    (Path(args.out) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def _eval(args) -> int:
    from tokenizer.load import load_mask_tokenizer
    from tokenizer.train import reconstruction_miou

    data = _load_data(args, args.scenes, args.split)  # bad data fails before the model is loaded
    model = _official(args)
    if model is None:
        model = load_mask_tokenizer(args.weights)
    t0 = time.time()
    result = reconstruction_miou(model, data)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result))
    return 0


def command(cmd: str, **options) -> int:
    """``samtok-rl tokenizer train|eval`` with ``options`` (``Options``' fields). The exit status."""
    import torch

    args = Options(**options)
    if args.scenes is None:
        args.scenes = TINY_RECIPE["scenes"] if cmd == "train" else 200
    torch.set_num_threads(max(1, args.threads))
    try:
        return _train(args) if cmd == "train" else _eval(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"samtok-rl tokenizer {cmd}: {e}", file=sys.stderr)
        return 2
