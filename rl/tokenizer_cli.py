"""``samtok-rl tokenizer train|eval``: train a mask tokenizer, or report its reconstruction mIoU.

It lives in ``rl/`` because it reads the shapes world (``envs.shapes``), which ``tokenizer/`` may not import.

The defaults are the first stage of the committed tiny tokenizer's recipe; the whole recipe (three
warm-started runs) is in ``tokenizer/weights/tiny/README.md``. Evaluate with::

    samtok-rl tokenizer eval --weights tokenizer/weights/tiny --data shapes --split val
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

# The tiny recipe (see ``tokenizer.config.tiny`` for the model's sizes).
TINY_RECIPE = dict(scenes=4000, steps=2400, batch_images=8, lr=1e-3, loss_size=128, continuous_steps=300,
                   kmeans_init=True, train_prompt_encoder=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samtok-rl tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "eval"):
        s = sub.add_parser(name)
        s.add_argument("--data", choices=["shapes", "coco"], default="shapes")
        s.add_argument("--annotations", help="COCO-style annotation JSON (--data coco)")
        s.add_argument("--images", help="image folder the annotations' file_name are relative to (--data coco)")
        s.add_argument("--max-images", type=int, default=None)
        s.add_argument("--scene-size", type=int, default=112, help="shapes-world image side in pixels")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
        s.add_argument("--official-ckpt", help="mask_tokenizer_256x2.pth (with --sam2-ckpt)")
        s.add_argument("--sam2-ckpt", help="sam2.1_hiera_large.pt (with --official-ckpt)")
        s.add_argument("--sam2-config", default="sam2.1_hiera_l")
    t = sub.choices["train"]
    t.add_argument("--out", required=True, help="output folder (weights, log, checkpoints while running)")
    t.add_argument("--config", default="tiny",
                   help="tiny | hiera_t | official | path to a config.json (ignored with --init/--official-ckpt)")
    t.add_argument("--init", help="start from a saved MaskTokenizer folder (fine-tuning)")
    t.add_argument("--scenes", type=int, default=TINY_RECIPE["scenes"], help="shapes-world training scenes")
    t.add_argument("--steps", type=int, default=TINY_RECIPE["steps"])
    t.add_argument("--batch-images", type=int, default=TINY_RECIPE["batch_images"])
    t.add_argument("--lr", type=float, default=TINY_RECIPE["lr"])
    t.add_argument("--loss-size", type=int, default=TINY_RECIPE["loss_size"], help="0 = the decoder's grid")
    t.add_argument("--continuous-steps", type=int, default=None,
                   help=f"steps before quantising (default {TINY_RECIPE['continuous_steps']} from scratch, 0 when fine-tuning)")
    t.add_argument("--kmeans-init", action=argparse.BooleanOptionalAction, default=None,
                   help="k-means the codebooks when quantisation starts (default: on from scratch, off when fine-tuning)")
    t.add_argument("--point-loss", action="store_true",
                   help="compute the mask losses on importance-sampled points (Mask2Former-style, as officially optional)")
    t.add_argument("--kmeans-masks", type=int, default=2048, help="latents the k-means initialisation uses")
    t.add_argument("--train-prompt-encoder", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the prompt encoder (default: on from scratch, off when fine-tuning)")
    t.add_argument("--ckpt-every", type=int, default=250)
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--eval-scenes", type=int, default=200, help="held-out shapes scenes to report mIoU on")
    e = sub.choices["eval"]
    e.add_argument("--weights", default="tiny", help="saved MaskTokenizer folder, or 'tiny' for the committed one")
    e.add_argument("--scenes", type=int, default=200)
    e.add_argument("--split", choices=["val", "test"], default="val")
    return p


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
    from tokenizer import MaskTokenizer
    from tokenizer.train import reconstruction_miou

    data = _load_data(args, args.scenes, args.split)  # bad data fails before the model is loaded
    model = _official(args)
    if model is None:
        model = MaskTokenizer.tiny_pretrained() if args.weights == "tiny" else MaskTokenizer.from_pretrained(args.weights)
    t0 = time.time()
    result = reconstruction_miou(model, data)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        return _train(args) if args.cmd == "train" else _eval(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"samtok-rl tokenizer {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
