"""``samtok-rl``: the one place command lines are parsed; each command is the ``command()`` of its ``rl.cli`` module.

Every subcommand's options are declared here (names, types, help) and passed to ``command(**options)`` of its
module in this wing, which calls the job (``rl.grpo.train.run``, ``rl.eval.evaluate``, ``envs.prepare`` ...) and turns
its errors into exit statuses and one-line messages; an option left off the command line is not passed at all, so
the function's own signature is the one place its defaults live. The job modules import no argparse and are
imported only when their command runs. ``python -m rl.cli train`` (what ``accelerate launch`` runs on every rank)
comes here too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # the rl.cli module whose command() runs it
    help: str
    arguments: Callable  # (parser, module) -> None
    about: str = ""  # the module whose docstring is the --help description (default: ``module``)
    intermixed: bool = False  # positional overrides may follow options (parse_intermixed_args)
    raw_description: bool = False  # the module docstring's layout is kept in --help


def _train(p, module) -> None:
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. grpo.learning_rate=1e-5 run.resume=true")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print it, and exit")
    p.add_argument("--no-file-checks", action="store_true",
                   help="with --dry-run: do not require local files (data, model folder) to exist yet")


def _eval(p, module) -> None:
    p.add_argument("--policy", required=True,
                   help="saved policy folder (a LoRA checkpoint is merged), hub id, or 'tiny' (untrained, smoke tests)")
    p.add_argument("--env", required=True, help="shapes_gres, shapes_gcg, grefcoco, grandf")
    p.add_argument("--split", help="default: val")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="environment option")
    p.add_argument("--tokenizer", help="mask tokenizer that decodes predictions: tiny16 (default: the shapes recipes') | tiny | random | folder")
    p.add_argument("--tokenizer-device", help="where masks are decoded (default: the GPU when there is one)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="evaluate the first N samples only")
    p.add_argument("--batch-size", type=int, help="HF backend: prompts per generate call, default 8 (vLLM batches itself)")
    p.add_argument("--max-new-tokens", type=int, help="default 256")
    p.add_argument("--grid", type=int, help="samples in grid.png, default 16 (0: none)")
    p.add_argument("--no-captions", action="store_true", help="GCG: skip METEOR/CIDEr (they need Java)")
    p.add_argument("--bert", help="GCG recall: local bert-base-uncased folder (else SAMTOK_RL_BERT)")
    p.add_argument("--lenient", action="store_true", help="skip bad source rows instead of failing")
    p.add_argument("--backend", choices=("auto", "hf", "vllm"),
                   help="auto (default): vLLM when it is installed and a GPU is visible, else HF generate")
    p.add_argument("--device", help="HF backend: device of the policy")
    v = p.add_argument_group("vLLM backend")
    v.add_argument("--dtype", help="weights dtype for vLLM (default auto: the checkpoint's)")
    v.add_argument("--max-model-len", type=int, help="prompt + completion tokens (default: the model's)")
    v.add_argument("--gpu-memory-utilization", type=float,
                   help="fraction of GPU memory for vLLM (default 0.9; on CPU a fixed 1 GiB KV cache)")
    v.add_argument("--tensor-parallel-size", type=int, help="default 1")


def _prepare(p, module) -> None:
    p.add_argument("--env", required=True, help="environment name: shapes_gres, shapes_gcg, grefcoco, grandf")
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="environment option, e.g. root=data/grefcoco image_root=data/coco/train2014 train_size=2000")
    p.add_argument("--tokenizer",
                   help="tiny16 (default) | tiny (2x256) | random (untrained, for smoke tests) | a saved MaskTokenizer folder")
    p.add_argument("--shard-size", type=int, help="rows per shard, default 1000")
    p.add_argument("--lenient", action="store_true", help="skip and report bad rows instead of failing")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--no-progress", action="store_true")


def _tokenizer(p, module) -> None:
    recipe = module.TINY_RECIPE
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "eval"):
        s = sub.add_parser(name, argument_default=argparse.SUPPRESS)
        s.add_argument("--data", choices=["shapes", "coco"], help="the shapes world (default) or COCO-style files")
        s.add_argument("--annotations", help="COCO-style annotation JSON (--data coco)")
        s.add_argument("--images", help="image folder the annotations' file_name are relative to (--data coco)")
        s.add_argument("--max-images", type=int)
        s.add_argument("--scene-size", type=int, help="shapes-world image side in pixels (default 112)")
        s.add_argument("--seed", type=int, help="default 0")
        s.add_argument("--threads", type=int, help="torch CPU threads (default 1: fastest on a busy machine)")
        s.add_argument("--official-ckpt", help="mask_tokenizer_256x2.pth (with --sam2-ckpt)")
        s.add_argument("--sam2-ckpt", help="sam2.1_hiera_large.pt (with --official-ckpt)")
        s.add_argument("--sam2-config", help="default sam2.1_hiera_l")
    t = sub.choices["train"]
    t.add_argument("--out", required=True, help="output folder (weights, log, checkpoints while running)")
    t.add_argument("--config",
                   help="tiny (default) | hiera_t | official | path to a config.json (ignored with --init/--official-ckpt)")
    t.add_argument("--codebook-size", type=int,
                   help="codes per level of a new tokenizer, 2..256 (default 256); fewer codes are shared by more masks")
    t.add_argument("--init", help="start from a saved MaskTokenizer folder (fine-tuning)")
    t.add_argument("--scenes", type=int, help=f"shapes-world training scenes (default {recipe['scenes']})")
    t.add_argument("--steps", type=int, help=f"default {recipe['steps']}")
    t.add_argument("--batch-images", type=int, help=f"default {recipe['batch_images']}")
    t.add_argument("--lr", type=float, help=f"default {recipe['lr']}")
    t.add_argument("--loss-size", type=int, help=f"default {recipe['loss_size']}; 0 = the decoder's grid")
    t.add_argument("--continuous-steps", type=int,
                   help=f"steps before quantising (default {recipe['continuous_steps']} from scratch, 0 when fine-tuning)")
    t.add_argument("--kmeans-init", action=argparse.BooleanOptionalAction,
                   help="k-means the codebooks when quantisation starts (default: on from scratch, off when fine-tuning)")
    t.add_argument("--point-loss", action="store_true",
                   help="compute the mask losses on importance-sampled points (Mask2Former-style, as officially optional)")
    t.add_argument("--kmeans-masks", type=int, help="latents the k-means initialisation uses (default 2048)")
    t.add_argument("--train-prompt-encoder", action=argparse.BooleanOptionalAction,
                   help="also train the prompt encoder (default: on from scratch, off when fine-tuning)")
    t.add_argument("--ckpt-every", type=int, help="default 250")
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--eval-scenes", type=int, help="held-out shapes scenes to report mIoU on (default 200)")
    e = sub.choices["eval"]
    e.add_argument("--weights", help="saved MaskTokenizer folder, or 'tiny' (default) for the committed one")
    e.add_argument("--scenes", type=int, help="default 200")
    e.add_argument("--split", choices=["val", "test"], help="default val")


def _demo(p, module) -> None:
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    p.add_argument("--task", choices=tuple(module.RECIPES), help="gres (default) or gcg")
    p.add_argument("--recipe", help="recipe YAML (default: recipes/shapes_<task>.yaml)")
    p.add_argument("--out", help="run directory, replaced (default runs/demo)")
    p.add_argument("--test-samples", type=int, help="held-out test samples to evaluate (default 200)")


def _env(p, module) -> None:
    p.add_argument("--recipe", help="also check what this recipe needs")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (with --recipe)")


def _experiment(p, module) -> None:
    p.add_argument("plan", help="experiment plan YAML (see recipes/experiments/)")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides applied to every variant")
    p.add_argument("--seeds", type=int, nargs="+", help="run.seed values (default: 0 1 2)")
    p.add_argument("--out", required=True, help="output directory; a re-run with the same one skips finished cells")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="run and report only these variants of the plan (default: all)")


def _rewards(p, module) -> None:
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("probe", argument_default=argparse.SUPPRESS,
                       help="what a recipe's rewards will teach GRPO, measured on sampled completions at step 0")
    s.add_argument("recipe", help="recipe YAML, or an experiment plan (every variant probed and ranked)")
    s.add_argument("overrides", nargs="*", help="key=value recipe overrides, e.g. \"rewards=[{name: answer_match}]\"")
    s.add_argument("--policy", help="policy folder to sample from (default: the recipe's start: its SFT policy in "
                                     "run.output_dir/sft, trained if missing)")
    s.add_argument("--prompts", type=int, help="prompts to sample, num_generations completions each (default 64)")
    s.add_argument("--reward", action="append", metavar="SPEC",
                   help='another reward to score beside the recipe\'s: a name, module:function or file.py:function, '
                        'optionally with JSON params: \'answer_match{"grading": "binary"}\' (repeatable)')
    s.add_argument("--completions", help="rescore a run's logged completions (its folder or its completions/) "
                                         "instead of sampling")
    s.add_argument("--out", help="output folder for probe.json and probe.png (default run.output_dir/probe)")
    s.add_argument("--against", help="with a plan: a finished experiment's summary.json, to rank its measured deltas "
                                     "beside the signal scores")


COMMANDS = {
    "train": Command("rl.cli.train", "GRPO training from a recipe: samtok-rl train RECIPE.yaml [key=value ...] [--dry-run]",
                     _train, about="rl.grpo.train"),
    "eval": Command("rl.cli.eval", "generate with a policy over an environment split and report the official metrics",
                    _eval, about="rl.eval.evaluate"),
    "prepare": Command("rl.cli.prepare", "encode a dataset's ground-truth masks into SAMTok answers for RL", _prepare,
                       about="envs.prepare"),
    "tokenizer": Command("rl.cli.tokenizer", "train or evaluate a SAMTok mask tokenizer (tokenizer train|eval)",
                         _tokenizer, raw_description=True),
    "demo": Command("rl.cli.demo", "the CPU default run: tiny policy, shapes world, SFT then GRPO, SFT-vs-RL report",
                    _demo, about="rl.experiments.demo"),
    "env": Command("rl.cli.env", "versions, GPUs and what a recipe needs that this environment lacks (for bug reports)",
                   _env),
    "rewards": Command("rl.cli.rewards", "reward lab: rewards probe RECIPE measures what its rewards will teach GRPO",
                       _rewards, raw_description=True, about="rl.experiments.probe"),
    "experiment": Command("rl.cli.experiment",
                          "variants x seeds of SFT then GRPO from a plan, evaluated on held-out data: mean ± std report",
                          _experiment, intermixed=True,  # overrides may follow --out, as the usage line shows
                          about="rl.experiments.experiment"),
}


def parser(name: str, module=None) -> argparse.ArgumentParser:
    """The argument parser of command ``name`` (the docstring of the module that does its job is the description)."""
    cmd = COMMANDS[name]
    module = module or importlib.import_module(cmd.module)
    doc = importlib.import_module(cmd.about).__doc__ if cmd.about else module.__doc__
    doc = doc or ""
    p = argparse.ArgumentParser(
        prog=f"samtok-rl {name}", description=doc if cmd.raw_description else doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter if cmd.raw_description else argparse.HelpFormatter,
        argument_default=argparse.SUPPRESS)
    cmd.arguments(p, module)
    return p


def _usage() -> str:
    lines = ["usage: samtok-rl [--debug] COMMAND [args ...]", "", "commands:"]
    lines += [f"  {name:<10} {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "Run 'samtok-rl COMMAND --help' for a command's options. Bad input ends in one line naming what is "
              "wrong; --debug (or SAMTOK_RL_DEBUG=1) shows the traceback too."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--debug":  # tracebacks for bad input too (rl.cli.errors), for this command only
        import os

        from rl.cli.errors import DEBUG_ENV

        before = os.environ.get(DEBUG_ENV)
        os.environ[DEBUG_ENV] = "1"  # the environment, so that launched subprocesses see it too
        try:
            return main(argv[1:])
        finally:  # main() called in-process (tests, notebooks) must not leave every later command in debug mode
            if before is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = before
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"samtok-rl: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name].module)
    p = parser(name, module)
    options = p.parse_intermixed_args(rest) if COMMANDS[name].intermixed else p.parse_args(rest)
    return int(module.command(**vars(options)) or 0)


def console() -> int:
    """The ``samtok-rl`` console script: ``main``, quiet when a reader such as ``head`` closes the pipe early."""
    try:
        code = main()
        sys.stdout.flush()  # inside the try: a closed pipe shows at the flush
        return code
    except BrokenPipeError:
        import os

        # Python's recipe: point stdout at devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
