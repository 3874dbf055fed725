"""``samtok-rl``: one console script, one subcommand per job; each job's module is imported only when used."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("rl.train", "GRPO training from a recipe: samtok-rl train RECIPE.yaml [key=value ...] [--dry-run]"),
    "eval": ("rl.evaluate", "generate with a policy over an environment split and report the official metrics"),
    "prepare": ("envs.prepare", "encode a dataset's ground-truth masks into SAMTok answers for RL"),
    "tokenizer": ("rl.tokenizer_cli", "train or evaluate a SAMTok mask tokenizer (tokenizer train|eval)"),
    "demo": ("rl.demo", "the CPU default run: tiny policy, shapes world, SFT then GRPO, SFT-vs-RL report"),
    "env": ("rl.env_report", "versions, GPUs and what a recipe needs that this environment lacks (for bug reports)"),
    "experiment": ("rl.experiment",
                   "variants x seeds of SFT then GRPO from a plan, evaluated on held-out data: mean ± std report"),
}


def _usage() -> str:
    lines = ["usage: samtok-rl COMMAND [args ...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'samtok-rl COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"samtok-rl: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
