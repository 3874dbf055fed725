"""Held-out evaluation during GRPO (``monitor:``): official metrics and rollout grids, logged with the rewards."""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from envs import get_task, is_generated
from envs import task_of as env_task

log = logging.getLogger(__name__)

METRIC_PREFIX = "eval_metrics/"  # TensorBoard and W&B show these as eval/metrics/<name> (transformers' rewrite_logs)
IMAGE_TAG = "eval/rollouts"
BATCH_SIZE = 16  # prompts per generate call, as the demo's evaluation


class MonitorError(ValueError):
    """A monitored run that cannot be monitored here (ZeRO-3)."""


def task_of(recipe) -> str:
    """The name of the recipe's task (``gres``, ``gcg``), from ``data.env``."""
    return env_task(recipe.data.env).name


def enabled(recipe) -> bool:
    m = recipe.monitor
    return m.eval_steps > 0 or m.image_steps > 0


def zero3_requested(recipe) -> bool:
    """Whether this process is set up for DeepSpeed ZeRO-3 (accelerate launch environment, or a ``grpo.deepspeed``
    config), found before anything is loaded."""
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return True
    configs = [os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") if _env_true("ACCELERATE_USE_DEEPSPEED") else None,
               recipe.grpo.get("deepspeed")]
    for config in configs:
        if isinstance(config, str) and Path(config).is_file():
            try:
                config = json.loads(Path(config).read_text())
            except ValueError:
                continue
        if isinstance(config, dict) and str((config.get("zero_optimization") or {}).get("stage")) == "3":
            return True
    return False


def zero3_problem(recipe) -> str | None:
    """The refusal message when monitoring is on under ZeRO-3, else None."""
    if enabled(recipe) and zero3_requested(recipe):
        return ZERO3_MESSAGE
    return None


ZERO3_MESSAGE = (
    "monitor.eval_steps/image_steps: the held-out monitor does not run under DeepSpeed ZeRO-3 (the parameters are "
    "partitioned over the ranks, and only rank 0 generates); set monitor.eval_steps=0 monitor.image_steps=0, or "
    "train with ZeRO-2 and evaluate checkpoints with `samtok-rl eval`"
)


@contextmanager
def preserved_rng():
    """Python, NumPy and torch (CPU and CUDA) RNG states restored on exit, so that whatever runs inside leaves
    the rollouts that training samples afterwards unchanged."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def held_out_rows(recipe, n: int, mask_tokenizer) -> list[dict]:
    """The first ``n`` held-out rows: the shapes world's ``val`` split, or the recipe's ``data.eval`` dataset."""
    if is_generated(recipe.data.env):
        from rl.grpo.data import shapes_rows

        return shapes_rows(recipe, "val", n, mask_tokenizer)[:n]
    if not recipe.data.eval:  # the recipe validation refuses this already
        raise MonitorError(f"monitor: env {recipe.data.env!r} needs held-out rows in data.eval")
    from rl.grpo.data import load_prepared

    ds = load_prepared(recipe.data.eval, recipe.data.image_root)
    return [ds[i] for i in range(min(n, len(ds)))]


class HeldOutEval(TrainerCallback):
    """Greedy evaluation of the current policy on a fixed held-out slice, every ``monitor.eval_steps`` GRPO steps
    (and once at step 0, before the first update, as the baseline), with the task's official metrics in percent
    (GRES: gIoU, cIoU, N-acc, T-acc; GCG: AP50, mIoU, recall, as ``envs.task.Task.score`` computes them); and every
    ``monitor.image_steps`` steps a grid of the first ``monitor.image_samples`` greedy rollouts (GT | predicted
    masks, ``rl.eval.evaluate.render_grid``).

    Where it goes: the metrics through ``Trainer.log`` (so every ``report_to`` backend gets them, as
    ``eval_metrics/<name>`` in ``trainer.state.log_history``; TensorBoard and W&B name them
    ``eval/metrics/<name>``), plus ``eval_metrics/seconds`` (the evaluation's wall time); the grid to TensorBoard
    (``add_image`` on the TensorBoard callback's writer, tag ``eval/rollouts``) and to W&B (``wandb.Image``)
    when they are active. On disk: ``<run>/monitor/step_<N>.png`` and ``<run>/monitor/metrics.jsonl`` (one line
    per evaluation, every metric the scorer returns). A fresh run starts the file anew; a resumed run keeps
    the lines up to its checkpoint's step.

    The slice is built once, at construction: the shapes world's ``val`` split (``rl.grpo.data.shapes_rows``), or
    the first rows of ``data.eval``; predicted masks are decoded with ``data.mask_tokenizer``. Generation is HF
    ``generate`` on the unwrapped policy (LoRA adapters active), in eval mode under ``torch.no_grad``, train mode
    restored afterwards; vLLM is not used. The Python, NumPy and torch RNG states are saved and restored around
    everything the monitor does, so a monitored run samples exactly the rollouts of an unmonitored one (same
    losses and rewards, tested).

    Distributed: only the world's rank 0 generates, scores and logs; the other ranks go on to the next step
    and wait for it at the next collective (an evaluation must fit in the process group's timeout). ZeRO-3 is
    refused at startup (``MonitorError``): its parameters are partitioned, so a rank-0-only ``generate`` would
    hang the others.

    Cost: one evaluation of 32 samples on the tiny policy, 1 CPU thread, takes 1.3-2.2 s, about one GRPO step
    of ``recipes/shapes_gres.yaml`` (measurements in ``rl.recipe.config.Monitor``).
    """

    def __init__(self, trainer, recipe, rows: list[dict] | None = None, mask_tokenizer=None):
        if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise MonitorError(ZERO3_MESSAGE)
        cfg = recipe.monitor
        self.trainer = trainer
        self.task = task_of(recipe)
        self.eval_steps, self.image_steps = cfg.eval_steps, cfg.image_steps
        self.eval_samples = cfg.eval_samples if cfg.eval_steps else 0
        self.image_samples = cfg.image_samples if cfg.image_steps else 0
        self.max_new_tokens = cfg.max_new_tokens or get_task(self.task).max_new_tokens
        self.out_dir = Path(trainer.args.output_dir) / "monitor"
        self.main = trainer.is_world_process_zero()
        self.rows: list[dict] = []
        self.mask_tokenizer = None
        if not self.main:
            return
        if not is_generated(recipe.data.env) and recipe.data.mask_tokenizer in ("tiny", "random"):
            log.warning("monitor: predicted masks are decoded with data.mask_tokenizer=%s; for a real policy set it "
                        "to its SAMTok tokenizer folder, or the metrics mean nothing", recipe.data.mask_tokenizer)
        with preserved_rng():  # a "random" mask tokenizer seeds torch's global RNG
            if mask_tokenizer is None:
                from tokenizer.load import load_mask_tokenizer

                mask_tokenizer = load_mask_tokenizer(recipe.data.mask_tokenizer)
            self.mask_tokenizer = mask_tokenizer
            n = max(self.eval_samples, self.image_samples)
            self.rows = list(rows[:n]) if rows is not None else held_out_rows(recipe, n, mask_tokenizer)
        if not self.rows:
            raise MonitorError("monitor: the held-out slice is empty")
        log.info("monitor: %d held-out rows (%s), eval every %s steps, images every %s steps", len(self.rows),
                 self.task, self.eval_steps or "-", self.image_steps or "-")

    # ------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.main:
            return
        self._trim_history(state.global_step)
        if state.global_step == 0:
            self.run(0, do_eval=bool(self.eval_steps), do_image=bool(self.image_steps))

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        do_eval = bool(self.eval_steps) and step % self.eval_steps == 0
        do_image = bool(self.image_steps) and step % self.image_steps == 0
        if self.main and (do_eval or do_image):
            self.run(step, do_eval, do_image)

    # ------------------------------------------------------------ evaluation

    def run(self, step: int, do_eval: bool, do_image: bool) -> dict:
        """Evaluate now (rank 0 only), log and save; returns the logged scalars."""
        start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = self.rows[: max(self.eval_samples if do_eval else 0, self.image_samples if do_image else 0)]
        with preserved_rng():
            texts = self.generate(rows)
            logs = {}
            if do_eval:
                rows_e, texts_e = rows[: self.eval_samples], texts[: self.eval_samples]
                metrics = self.score(rows_e, texts_e)
                seconds = time.perf_counter() - start
                logs = {f"{METRIC_PREFIX}{k}": float(metrics[k]) for k in self.metric_names() if k in metrics}
                logs[f"{METRIC_PREFIX}seconds"] = seconds
                record = {"step": step, "task": self.task, "samples": len(rows_e), **metrics,
                          "seconds": round(seconds, 3)}
                with open(self.out_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                self._log(logs)
            if do_image:
                self.log_image(self.render(rows, texts, step), step)
        summary = ", ".join(f"{k[len(METRIC_PREFIX):]} {v:.2f}" for k, v in logs.items()) or "image"
        log.info("monitor step %d: %s (%.1f s)", step, summary, time.perf_counter() - start)
        return logs

    def _log(self, logs: dict) -> None:
        # Trainer.log, not GRPOTrainer.log: that one would flush GRPO's pending reward means into these logs. The
        # callback handler's on_log clears control.should_log, which the step's own log (right after on_step_end)
        # still needs.
        pending = self.trainer.control.should_log
        Trainer.log(self.trainer, dict(logs))
        self.trainer.control.should_log = self.trainer.control.should_log or pending

    def generate(self, rows) -> list[str]:
        from rl.eval.generation import generate

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        device = next(model.parameters()).device
        if isinstance(self.mask_tokenizer, torch.nn.Module) and next(self.mask_tokenizer.parameters()).device != device:
            self.mask_tokenizer.to(device)  # here, not at construction: DeepSpeed moves the policy in train()
        was_training = model.training
        try:
            with torch.no_grad():
                return generate(model, self.trainer.processing_class, rows, self.max_new_tokens, BATCH_SIZE)
        finally:
            model.train(was_training)

    def score(self, rows, texts) -> dict:
        with tempfile.TemporaryDirectory(prefix="monitor-", dir=self.out_dir) as tmp:  # predictions: not kept
            return get_task(self.task).score(rows, texts, self.mask_tokenizer, Path(tmp), with_captions=False)

    def metric_names(self) -> tuple[str, ...]:
        return get_task(self.task).metrics

    def render(self, rows, texts, step: int) -> Path:
        from rl.eval.evaluate import decode_predictions, render_grid

        n = min(self.image_samples, len(rows))
        preds = decode_predictions(texts[:n], rows[:n], self.mask_tokenizer)
        return render_grid(rows[:n], preds, texts[:n], self.out_dir / f"step_{step}.png", n)

    def log_image(self, path: Path, step: int) -> None:
        """The grid to TensorBoard (the TensorBoard callback's writer) and W&B (when a run is active)."""
        from PIL import Image
        from transformers.integrations import TensorBoardCallback, WandbCallback

        from rl.grpo.seam import tensorboard_writer, wandb_module

        for cb in self.trainer.callback_handler.callbacks:
            if isinstance(cb, TensorBoardCallback):
                writer = tensorboard_writer(cb, self.trainer.args)
                if writer is not None:
                    with Image.open(path) as im:
                        pixels = np.asarray(im.convert("RGB"))
                    writer.add_image(IMAGE_TAG, pixels, step, dataformats="HWC")
                    writer.flush()
            elif isinstance(cb, WandbCallback) and (wandb := wandb_module(cb)) is not None:
                wandb.log({IMAGE_TAG: wandb.Image(str(path), caption=f"step {step}: GT | predicted"),
                           "train/global_step": step})

    def _trim_history(self, step: int) -> None:
        """metrics.jsonl: empty for a fresh run; for a run resumed at ``step``, the lines up to that step."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        if step > 0:
            keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in keep))


class VllmSyncCheck(TrainerCallback):
    """Every ``steps`` steps, the largest per-token gap between the policy's log-probs of the sampled completions and
    vLLM's own, logged as ``sampling/vllm_sync_max_logp_gap``; above ``tolerance`` nats a warning says the vLLM
    engine may be running stale weights. TRL logs the gap of every step (``sampling/sampling_logp_difference/max``,
    from its importance-sampling correction); this reads it, so the check costs nothing."""

    SOURCE = "sampling/sampling_logp_difference/max"

    def __init__(self, steps: int, tolerance: float):
        self.steps, self.tolerance = steps, tolerance
        self.flagged: list[tuple[int, float]] = []  # (step, gap) of every warning

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or self.SOURCE not in logs or state.global_step % self.steps:
            return
        gap = float(logs[self.SOURCE])
        logs["sampling/vllm_sync_max_logp_gap"] = gap
        if not gap <= self.tolerance:  # NaN too
            self.flagged.append((state.global_step, gap))
            log.warning("step %d: vLLM's log-probs of its own samples differ from the policy's by up to %.3g nats "
                        "(monitor.vllm_sync_tolerance %.3g): the vLLM engine may hold stale weights after a sync "
                        "(huggingface/trl#5312); check vllm_mode and the weight-sync logs", state.global_step, gap,
                        self.tolerance)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
