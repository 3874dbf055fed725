"""Seconds per SFT and GRPO step of the tiny policy with TRL's fused LM head vs ``rl.grpo.lm_head``'s dense CPU
stand-in, same recipe, data and seed, measured side by side in one run (alternating rounds, so machine load
drifts hit both alike).

    python bench/lm_head.py [--sft-steps 40] [--grpo-steps 8] [--rounds 2]

Prints the median s/step of each, the ratio ours / TRL's, and the final SFT loss of each (they must agree).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from trainer import StepTimer  # noqa: E402  (bench/trainer.py: seconds per step, the same callback)


def _recipe(run_dir, sft_steps, grpo_steps):
    from rl.recipe.config import load_recipe

    return load_recipe(ROOT / "recipes" / "shapes_gres.yaml", [
        f"run.output_dir={run_dir}", "run.report_to=[none]", "data.shapes.n_train=256", "data.mask_tokenizer=random",
        f"sft.args.max_steps={sft_steps}", "sft.args.logging_steps=1000", f"grpo.max_steps={grpo_steps}",
        "grpo.save_strategy=no", "grpo.logging_steps=1000", "grpo.log_completions=false",
    ])


def one_round(dense: bool, sft_steps: int, grpo_steps: int) -> tuple[float, float, float]:
    """(SFT s/step, GRPO s/step, final SFT loss) with or without the dense head."""
    import trl.trainer.utils as trl_utils
    from trl.kernels import ChunkedLogProbFunction
    from trl.kernels.chunked_logprob import _use_triton

    from rl.grpo import data as rl_data
    from rl.grpo import seam as trl_seam
    from rl.grpo import trainer as tr
    from rl.grpo.sft import run_sft
    from rl.policy import model as rl_policy

    # Start from TRL's own hooks each round; install ours on top for the dense rounds only.
    trl_utils._ChunkedLogProbFunction, trl_utils._use_triton = ChunkedLogProbFunction, _use_triton
    trl_seam._dense_lm_head = False
    install = trl_seam.install_dense_lm_head
    if not dense:
        trl_seam.install_dense_lm_head = lambda: False
    try:
        with tempfile.TemporaryDirectory() as d:
            recipe = _recipe(d, sft_steps, grpo_steps)
            torch.manual_seed(0)
            model, processor = rl_policy.prepare_policy(recipe, d)
            data = rl_data.shapes_dataset(recipe, "train", recipe.data.shapes.n_train)
            sft_timer, grpo_timer = StepTimer(), StepTimer()
            history = run_sft(recipe, model, processor, data, Path(d) / "sft", [sft_timer])
            trainer = tr.build_trainer(recipe, d, data, None, model, processor, [grpo_timer])
            trainer.train()
    finally:
        trl_seam.install_dense_lm_head = install
    skip = 3  # the first steps warm caches up
    loss = next(h["train_loss"] for h in reversed(history) if "train_loss" in h)
    return statistics.median(sft_timer.times[skip:]), statistics.median(grpo_timer.times[1:]), loss


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=40)
    ap.add_argument("--grpo-steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    got = {True: [], False: []}
    for _ in range(args.rounds):
        for dense in (False, True):
            got[dense].append(one_round(dense, args.sft_steps, args.grpo_steps))
    for stage, i in (("SFT", 0), ("GRPO", 1)):
        trl_s, ours = (statistics.median(r[i] for r in got[d]) for d in (False, True))
        print(f"{stage:<5} s/step: TRL fused head {trl_s:.3f}, dense CPU head {ours:.3f}, ratio ours/TRL {ours / trl_s:.2f}")
    print(f"final SFT loss: TRL {got[False][0][2]:.6f}, ours {got[True][0][2]:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
