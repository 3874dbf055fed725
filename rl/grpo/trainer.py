"""GRPO on TRL: ``GRPOConfig`` and the rewards from a recipe, and TRL's ``GRPOTrainer`` with small hooks.

What ``SamtokGRPOTrainer`` adds to TRL, each in a public hook that ``rl.grpo.seam`` (the one place that touches
TRL's internals) calls: checkpoints are staged and renamed when complete (``rl.grpo.checkpoint``, which also saves
the final merged policy) and carry the trainable mask-token rows of a LoRA run (``rl.policy.trainable``; under
ZeRO-3 gathered from the partitions); the completion log gets the raw text, the parsed masks and the row id of each
completion, and its prompts as text (TRL's VLM message lists make wandb raise); colocated vLLM rollouts get one
image placeholder per image (``rl.grpo.vllm_rollout``); non-finite steps are skipped; prompts are drawn by
``rl.grpo.sampling``'s samplers, and with dynamic sampling (``dynamic_rollout``) generation rounds are refilled.
The policy itself is ``rl.policy.model``'s.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from trl import GRPOConfig

from rl.grpo import checkpoint, sampling, vllm_rollout
from rl.grpo import seam as trl_seam
from rl.grpo.batch import join, take, trim_padding
from rl.grpo.checkpoint import CheckpointError
from rl.grpo.distributed import barrier, gathered
from rl.grpo.preemption import OutOfMemoryStop
from rl.grpo.seam import (
    SeamTrainer,
    enable_compiled_decoding,
    split_pixel_values_by_grid,
    unsplit_pixel_values_by_grid,
    wrap_vllm_generate,
)
from rl.grpo.timing import PhaseTimer
from rl.policy.trainable import ROWS_FILE, load_rows, row_trained, save_rows
from rl.recipe.config import Recipe, Rollout, Sampling
from rl.recipe.schema import between_generation_blocks

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- config and rewards


def grpo_config(recipe: Recipe, run_dir: str | os.PathLike) -> GRPOConfig:
    """``GRPOConfig`` from the recipe's ``grpo:`` section plus the fields the recipe owns elsewhere."""
    kwargs = dict(recipe.grpo)
    kwargs.setdefault("remove_unused_columns", False)  # reward functions read the answer/masks columns
    kwargs.setdefault("ddp_timeout", math.ceil(recipe.run.dist_timeout_s))
    kwargs.setdefault("logging_steps", 1)
    kwargs.setdefault("save_total_limit", recipe.run.keep_checkpoints)
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)
    kwargs["reward_weights"] = [r.weight for r in recipe.rewards]
    report_to = [r for r in recipe.run.report_to if r != "none"]
    if "wandb" in report_to and not _wandb_available():
        log.warning("run.report_to asks for wandb, which is not installed: logging to the other backends only")
        report_to.remove("wandb")
    return GRPOConfig(output_dir=str(run_dir), seed=recipe.run.seed, report_to=report_to or "none", **kwargs)


def _wandb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def build_rewards(recipe: Recipe, tokenizer, raw_text=None) -> list:
    """Registry rewards wrapped by the robust runtime: raw-text decoding of ``completion_ids`` (mask and
    object-ref tokens kept; ``raw_text``, a ``rewards.RawText``, shares the decoded batch), None on failure or
    timeout, failure-rate stop, time per call logged."""
    from rewards import build_rewards as registry_rewards
    from rewards import wrap_rewards

    funcs, _ = registry_rewards(reward_items(recipe))  # weights: GRPOConfig's
    rt = recipe.reward_runtime
    return wrap_rewards(funcs, tokenizer=tokenizer, timeout_s=rt.timeout_s, max_failure_rate=rt.max_failure_rate,
                        isolation=rt.isolation, raw_text=raw_text)


def reward_items(recipe: Recipe) -> list[dict]:
    """The recipe's rewards as registry items; every reward that decodes masks gets ``data.mask_tokenizer`` (the
    tokenizer that encoded the answers; recipe validation refuses a reward that names another)."""
    import dataclasses

    from rewards.registry import needs_mask_tokenizer

    items = [dataclasses.asdict(r) for r in recipe.rewards]
    for item in items:
        if needs_mask_tokenizer(item["name"]):
            item["params"] = {**item["params"], "mask_tokenizer": recipe.data.mask_tokenizer}
    return items


# ---------------------------------------------------------------- trainer


class SamtokGRPOTrainer(SeamTrainer):
    """TRL's GRPOTrainer with staged (atomic) checkpoints that also carry trainable mask-token rows, skipped
    non-finite steps, the project's prompt samplers and dynamic sampling, a richer completion log, one image
    placeholder per image for colocated vLLM, micro-steps without padding-only columns, and compiled decoding on
    request.

    ``sampling`` is the recipe's ``sampling:`` section, ``rollout`` its ``rollout:`` section; ``raw_text`` the
    ``rewards.RawText`` the rewards decode completions with (the completion log reuses its decoded batch)."""

    def __init__(self, *args, sampling: Sampling | None = None, max_nonfinite_steps: int = 3, raw_text=None,
                 rollout: Rollout | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sampling = sampling or Sampling()
        if (rollout or Rollout()).compile:
            enable_compiled_decoding(self.generation_config)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.raw_text = raw_text
        self.sampler = None  # the prompt sampler, built with the train dataloader
        self.round_rewards = None  # every rank's rewards of the last generation round (dynamic sampling reads them)
        self.nonfinite_skipped = 0  # steps skipped for non-finite gradients, in this process
        self._nonfinite_in_a_row = 0
        self._staging = None
        # timing_s/*: where each step's time goes (rl.grpo.timing); the hooks open its spans.
        self.phase_timer = PhaseTimer(self.all_metrics)
        self.add_callback(self.phase_timer)
        if self.use_vllm and self.vllm_mode == "colocate":
            pad = self.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            wrap_vllm_generate(self, lambda generate: vllm_rollout.one_placeholder_per_image(generate, pad))

    def phase(self, name: str, into: str | None = None):
        return self.phase_timer.span(name, into=into) if into else self.phase_timer.span(name)

    # ---------------------------------------------------------------- steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # TRL pads each micro-step's slice to its whole generation batch's longest prompt and completion; the columns
        # that are padding in every row of the slice cost forward and backward work and change nothing.
        return super().compute_loss(model, trim_padding(inputs), return_outputs, num_items_in_batch)

    def check_grad_norm(self, model, norm):
        # Called once per optimizer step, just before optimizer.step(), with the global gradient norm.
        # Dropping every gradient (None) makes torch's optimizers skip each parameter: weights, moments and
        # step counts stay as they were. DeepSpeed keeps gradients in its own buffers and steps its own way.
        if norm is None or math.isfinite(float(norm)):
            self._nonfinite_in_a_row = 0
            return norm
        if self.is_deepspeed_enabled:
            raise NonFiniteError(f"step {self.state.global_step + 1}: the gradient norm is {norm} under DeepSpeed, "
                                 "where the step cannot be skipped safely; lower the learning rate or check the data")
        model.zero_grad(set_to_none=True)
        self.nonfinite_skipped += 1
        self._nonfinite_in_a_row += 1
        log.warning("step %d: gradient norm %s, step skipped (%d in a row)", self.state.global_step + 1, norm,
                    self._nonfinite_in_a_row)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteError(f"{self._nonfinite_in_a_row} optimizer steps in a row had non-finite gradients "
                                 f"(up to step {self.state.global_step + 1}); stopping with the last checkpoint intact. "
                                 "Lower grpo.learning_rate, set grpo.max_grad_norm, or check rewards and data.")
        return norm

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Generation and the loss both run inside: an OOM in either is caught before the optimizer steps.
        try:
            with self.phase_timer.span("training_step"):
                return super().training_step(model, inputs, num_items_in_batch)
        except torch.OutOfMemoryError as e:
            raise self._out_of_memory(e) from e

    def _out_of_memory(self, error) -> OutOfMemoryStop:
        """Drop this step's partial gradients (no partial update), save the state of the last complete step when
        that is safe, and say what to lower."""
        self.model.zero_grad(set_to_none=True)
        self.drop_buffered_rollouts()  # the rollouts of a failed generation block are not trained on
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        step, a = self.state.global_step, self.args
        run_dir = Path(self.run_dir())
        saved = run_dir / f"checkpoint-{step}"
        if (saved / checkpoint.MARKER).exists() or step == 0:
            note = f"the last checkpoint is {checkpoint.last_checkpoint(run_dir) or 'none'}"
        elif self.accelerator.num_processes > 1:
            note = ("not checkpointed now (another rank may be inside a collective); resume from "
                    f"{checkpoint.last_checkpoint(run_dir) or 'the start'}")
        elif not between_generation_blocks(step, a.gradient_accumulation_steps, a.steps_per_generation,
                                           self.num_iterations):
            note = f"not checkpointed (step {step} is inside a generation block); resume from the last checkpoint"
        else:
            self.checkpoint_now()
            note = f"saved {saved} (the state after step {step}); resume with run.resume=true"
        return OutOfMemoryStop(
            f"out of memory in step {step + 1} ({error}). This step's update was not applied; {note}. Lower "
            f"grpo.per_device_train_batch_size ({a.per_device_train_batch_size}, with gradient_accumulation_steps "
            f"raised to keep the batch), grpo.max_completion_length ({a.max_completion_length}), or num_generations "
            f"({a.num_generations}); or set grpo.gradient_checkpointing=true, model.finetune=lora, or ZeRO-3.")

    # ---------------------------------------------------------------- prompts and rollouts

    def prompt_sampler(self, trl_sampler, dataset):
        s = trl_sampler
        layout = (s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle, s.seed)
        cfg = self.sampling
        if cfg.balance:
            self.sampler = sampling.BalancedRepeatSampler(*layout, kinds=sampling.dataset_kinds(dataset),
                                                          shares=cfg.balance, stratify=cfg.stratify)
        else:
            self.sampler = sampling.EpochSeededRepeatSampler(*layout)
            if cfg.stratify:
                self.sampler.kinds = sampling.dataset_kinds(dataset)
        return self.sampler

    def rollout(self, inputs, generate):
        if not self.sampling.dynamic.enabled or not self.model.training:
            return generate(inputs)
        return self.dynamic_rollout(inputs, generate)

    def dynamic_rollout(self, inputs: list[dict], generate) -> dict:
        """One generation batch with the groups whose reward spread is below ``sampling.dynamic.min_std`` replaced.

        ``generate`` is TRL's generate-and-score; ``round_rewards`` holds the rewards of its last call (every rank's,
        as TRL gathers them). Groups that pass are kept; while any rank is short of a full batch and fewer than
        ``max_rounds`` extra rounds ran, every rank generates for fresh prompts (all ranks make the same number of
        calls: TRL's generation holds collectives). A batch still short after the last round is completed with
        dropped groups, whose advantages are zero (they add no gradient, only keep the batch shape).
        """
        cfg, acc, g = self.sampling.dynamic, self.accelerator, self.num_generations
        n = len(inputs)
        if n % g:
            raise ValueError(f"dynamic sampling: this rank's generation batch of {n} completions is not whole groups "
                             f"of num_generations {g}; make per_device_train_batch_size x steps_per_generation a "
                             "multiple of num_generations, so that each group's completions stay on one rank")
        need = n // g
        kept, dropped, first_filtered, round_ = [], [], None, 0
        batch_inputs = inputs
        while True:
            out = split_pixel_values_by_grid(generate(batch_inputs))
            local = slice(acc.process_index * n, (acc.process_index + 1) * n)
            spread = sampling.group_spread(self.round_rewards[local], self.reward_weights, g)
            passed = (spread >= cfg.min_std) & ~torch.isnan(spread)
            if first_filtered is None:
                first_filtered = acc.gather((~passed).float().sum().reshape(1)).sum().item()
            for j, ok in enumerate(passed.tolist()):
                (kept if ok else dropped).append((out, j))
            short = torch.tensor([float(max(0, need - len(kept)))], device=acc.device)
            if acc.gather(short).max().item() == 0 or round_ >= cfg.max_rounds:
                break
            round_ += 1
            gen = torch.Generator().manual_seed(sampling.round_seed(self.args.seed, self.state.global_step, round_,
                                                                    acc.process_index))
            rows = sampling.draw_prompts(self.sampler, need, gen)
            batch_inputs = [self.train_dataset[i] for i in rows for _ in range(g)]
        chosen = kept[:need] + dropped[: need - min(need, len(kept))]
        batch = join([take(b, list(range(j * g, (j + 1) * g))) for b, j in chosen], self.pad_token_id)
        loss_mask = (batch["completion_mask"] if batch.get("tool_mask") is None
                     else batch["completion_mask"] * batch["tool_mask"])
        batch["num_items_in_batch"] = acc.gather(loss_mask.sum()).sum()
        effective = acc.gather(torch.tensor([float(min(need, len(kept)))], device=acc.device)).sum().item()
        total_groups = need * acc.num_processes
        metrics = self.metrics("train")
        metrics["sampling/frac_filtered"].append(first_filtered / total_groups)
        metrics["sampling/extra_rounds"].append(float(round_))
        metrics["sampling/effective_batch"].append(effective * g)  # completions with a learning signal, all ranks
        return unsplit_pixel_values_by_grid(batch)  # TRL's _prepare_inputs splits it again

    # ---------------------------------------------------------------- rewards and the completion log

    def after_rewards(self, inputs, rewards, completion_ids) -> None:
        self.round_rewards = rewards
        # TRL gives a completion that every reward scored None (NaN here) zero advantage; count them, and the
        # groups made only of such completions (a prompt that taught nothing), so that a broken reward shows.
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        unscorable = torch.isnan(rewards).all(1)
        metrics = self.metrics(mode)
        if g and len(unscorable) % g == 0:
            metrics["rewards/unscorable_groups"].append(unscorable.view(-1, g).all(1).sum().item())
        metrics["rewards/unscorable_completions"].append(unscorable.sum().item())
        self._log_reward_by_kind(mode, inputs, rewards)
        if self.args.log_completions and self.raw_text is not None and completion_ids is not None:
            self._log_completion_columns(inputs, completion_ids)

    def _log_completion_columns(self, inputs, completion_ids) -> None:
        """``raw_completion`` (the text the rewards read, special tokens kept, from the batch they decoded),
        ``pred_masks`` (the codes parsed from it) and ``row_id`` (the dataset row), beside TRL's columns: what
        ``samtok-rl rewards probe --completions`` rescores."""
        from tokenizer.codec import parse_masks

        texts = self.raw_text.texts(completion_ids)
        self.log_completion_column("pred_masks", [str(parse_masks(t)) for t in texts])
        self.log_completion_column("raw_completion", list(texts))
        if inputs and all("id" in x for x in inputs):
            self.log_completion_column("row_id", [str(x["id"]) for x in inputs])

    def _log_reward_by_kind(self, mode: str, inputs, rewards) -> None:
        """``reward_by_kind/<kind>``: the weighted total reward of this process's completions per answer kind (GRES:
        no_target / single / multi), so that learning shows within a kind whatever the batch's mix of kinds."""
        if not inputs or not all("no_target" in x and "masks" in x for x in inputs):
            return
        start = self.accelerator.process_index * len(inputs)  # TRL gathers every process's rewards in rank order
        local = rewards[start : start + len(inputs)]
        total = (local * self.reward_weights.to(local.device)).nansum(1)
        by_kind: dict[str, list[float]] = {}
        for x, value, scorable in zip(inputs, total.tolist(), (~torch.isnan(local).all(1)).tolist()):
            if scorable:
                by_kind.setdefault(sampling.answer_kind(bool(x["no_target"]), len(x["masks"] or [])), []).append(value)
        metrics = self.metrics(mode)
        for kind, values in by_kind.items():
            metrics[f"reward_by_kind/{kind}"].append(sum(values) / len(values))

    def log(self, logs: dict, start_time: float | None = None) -> None:
        # A W&B Table needs one type per column, and a VLM prompt's content mixes {"type": "image"} with
        # {"type": "text", "text": ...} parts: TRL logs the messages as they are and wandb raises, which
        # stops training at the first log. The logged prompts become plain text for every backend.
        if "loss" in logs:
            logs["nonfinite_skipped"] = float(self.nonfinite_skipped)
        prompts = self.logged_prompts()
        if self.log_completions and prompts:
            flat = [messages_text(p) for p in prompts]
            prompts.clear()
            prompts.extend(flat)
        super().log(logs, start_time)

    # ---------------------------------------------------------------- checkpoints

    def resume_micro_step(self, checkpoint: str) -> int:
        # TRL counts micro-steps to know when to generate, from 0 in a new process, so a run resumed inside a
        # generation block would generate where the straight run reused its buffer: restart the count where it was.
        a = self.args
        if not between_generation_blocks(self.state.global_step, a.gradient_accumulation_steps,
                                         a.steps_per_generation, self.num_iterations):
            block = a.steps_per_generation * self.num_iterations
            raise CheckpointError(
                f"{checkpoint}: saved inside a generation block (step {self.state.global_step}, "
                f"{block} micro-steps per block), whose rollouts are not checkpointed; it cannot be resumed "
                "exactly. Save at steps where grpo.save_steps x gradient_accumulation_steps is a multiple of "
                "steps_per_generation x num_iterations.")
        return self.state.global_step * a.gradient_accumulation_steps

    def staging_dir(self) -> str | None:
        return self._staging

    def save_checkpoint(self, save, run_dir: str) -> None:
        bad = [n for n, p in self.model.named_parameters() if p.numel() and not torch.isfinite(p).all()]
        if bad:  # a checkpoint of a broken state would replace a good one in the rotation
            raise NonFiniteError(f"step {self.state.global_step}: non-finite weights in {bad[:5]}; not checkpointed")
        name = f"checkpoint-{self.state.global_step}"
        self._staging = checkpoint.staging_dir(run_dir)
        try:
            with self.phase_timer.span("checkpoint", into="carry"):
                save()
                self._save_rows(os.path.join(self._staging, name))  # every rank: gathering is collective
        finally:
            self._staging = None
        barrier()  # every rank's part (DeepSpeed partitions, RNG state) is written before the marker is
        if self.args.should_save:
            checkpoint.commit(run_dir, name)
            checkpoint.rotate(run_dir, self.args.save_total_limit)
        barrier()

    def load_checkpoint(self, path: str, model, load) -> None:
        # The Trainer loads a full checkpoint with a plain load_state_dict(strict=False), but save_pretrained
        # writes the checkpoint-format names (Qwen-VL: ``visual.*``, ``model.layers.*``), which differ from the
        # module names transformers 5 builds (``model.visual.*``, ``model.language_model.*``): every key
        # missed, a warning was logged, and training went on from the initial weights.
        target = model if model is not None else self.model
        if checkpoint.has_full_weights(path) and not hasattr(target, "peft_config"):
            checkpoint.load_full_weights(target, path)
        else:
            load()
            if hasattr(target, "peft_config"):
                checkpoint.check_adapter_loaded(target, path)
        weights = row_trained(self.model)
        if not weights:
            return
        if not os.path.isfile(os.path.join(path, ROWS_FILE)):
            raise CheckpointError(f"{path}: no {ROWS_FILE}; the trained mask-token rows of this LoRA run would be lost")
        load_rows(weights, path, next(iter(weights.values()))._samtok_rows)

    def _save_rows(self, ckpt_dir: str) -> None:
        weights = row_trained(self.model)
        if not weights:
            return
        with gathered(weights.values()):
            if self.args.should_save:
                save_rows(weights, ckpt_dir)

    def get_decay_parameter_names(self, model) -> list[str]:
        # Decoupled weight decay would shrink the frozen (zero-gradient) rows of a row-trained embedding.
        rows = {id(p) for p in row_trained(model).values()}
        names = super().get_decay_parameter_names(model)
        return [n for n, p in model.named_parameters() if n in set(names) and id(p) not in rows]


class NonFiniteError(RuntimeError):
    """Training cannot go on: gradients non-finite too many steps in a row, or weights non-finite at a save."""


def messages_text(messages) -> str:
    """``role: text`` lines of a conversation, images written ``<image>``; a string is returned as is."""
    if isinstance(messages, str):
        return messages
    lines = []
    for m in messages:
        content = m.get("content", "")
        if not isinstance(content, str):
            content = "".join(p.get("text") or "" if p.get("type") == "text" else f"<{p.get('type')}>" for p in content)
        lines.append(f"{m.get('role', '?')}: {content}")
    return "\n".join(lines)


def build_trainer(recipe: Recipe, run_dir: str | os.PathLike, train_dataset, eval_dataset, model, processor,
                  callbacks=(), args: GRPOConfig | None = None):
    """The configured trainer for ``model`` (``rl.policy.model.prepare_policy`` makes one from the recipe).

    Under ZeRO-3, build ``args`` (``grpo_config``) before loading the model: transformers then partitions
    the weights while loading instead of materialising the whole model on every rank first.
    """
    args = args or grpo_config(recipe, run_dir)
    from rewards import RawText

    raw_text = RawText(processor.tokenizer)  # one decode of each batch, for the rewards and the completion log
    trl_seam.install_dense_lm_head()
    return SamtokGRPOTrainer(
        model=model, reward_funcs=build_rewards(recipe, processor.tokenizer, raw_text), args=args,
        train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processor, callbacks=list(callbacks),
        sampling=recipe.sampling, max_nonfinite_steps=recipe.run.max_nonfinite_steps, raw_text=raw_text,
        rollout=recipe.rollout,
    )
