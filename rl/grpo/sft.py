"""Warm start with TRL's ``SFTTrainer`` on the GT answers: teaches the answer format and a first guess of
the codes, so that GRPO's rollouts are well-formed and its groups have reward variance.

The default run stops this stage early on purpose (few steps): a saturated SFT model leaves RL nothing to
improve, and the point of the demo is to watch RL improve it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from datasets import Dataset

from rl.recipe.schema import OWNED_BY_RUN, SFT_DEFAULTS, Recipe

log = logging.getLogger("samtok_rl.train")



def sft_rows(dataset) -> Dataset:
    """Prompt-completion rows (TRL trains on the completion only) from GRPO rows with an ``answer``."""
    keep = [c for c in dataset.column_names if c not in ("prompt", "image", "answer")]
    ds = dataset.remove_columns(keep)
    return ds.map(lambda r: {"completion": [{"role": "assistant", "content": r["answer"]}]}, remove_columns=["answer"])


def run_sft(recipe: Recipe, model, processor, train_dataset, output_dir: str | os.PathLike, callbacks=()):
    """Fine-tune ``model`` in place on ``train_dataset``'s answers; returns the trainer's log history."""
    from trl import SFTConfig, SFTTrainer

    from rl.grpo import seam as trl_seam

    trl_seam.install_dense_lm_head()

    kwargs = {**SFT_DEFAULTS, **recipe.sft.args}
    for key in OWNED_BY_RUN:
        kwargs.pop(key, None)
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)
    report_to = [r for r in recipe.run.report_to if r not in ("none", "wandb")]  # wandb: GRPO only, one run
    args = SFTConfig(output_dir=str(output_dir), seed=recipe.run.seed, report_to=report_to or "none", **kwargs)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows(train_dataset), processing_class=processor,
                         callbacks=list(callbacks))
    trainer.train()
    return trainer.state.log_history


def sft_stage(recipe: Recipe, run_dir: Path, train_ds) -> Path:
    """The SFT policy directory, trained now unless a previous run of this recipe already saved it."""
    from accelerate import PartialState

    from rl.policy.model import initial_policy, save_policy

    sft_dir = run_dir / "sft"
    if (sft_dir / "config.json").is_file():
        log.info("SFT policy found at %s: skipping the SFT stage", sft_dir)
        return sft_dir
    model, processor = initial_policy(recipe)
    run_sft(recipe, model, processor, train_ds, run_dir / "sft-work")
    if PartialState().is_main_process:
        save_policy(model, processor, sft_dir)
    PartialState().wait_for_everyone()
    return sft_dir
