"""GRPO on TRL: ``GRPOConfig`` and the rewards from a recipe, and TRL's ``GRPOTrainer`` with small hooks.

What ``SamtokGRPOTrainer`` adds to TRL: checkpoints are staged and renamed when complete (``rl.checkpoint``) and
carry the trainable mask-token rows of a LoRA run (``rl.trainable``; under ZeRO-3 gathered from the partitions,
and ``save_final`` rebuilds the policy whole on rank 0 from the gathered state to merge LoRA, since the Trainer
would save the adapter alone and lose the rows); the completions logged for W&B carry prompts as text (TRL's
VLM message lists make wandb raise); colocated vLLM rollouts get one image placeholder per image
(``rl.vllm_rollout``); non-finite steps are skipped; prompts are drawn by ``rl.sampling``'s samplers, and with
dynamic sampling generation rounds are refilled there. The policy itself is ``rl.policy``'s.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer

from rl import checkpoint, lm_head, sampling, vllm_rollout
from rl.checkpoint import CheckpointError, between_generation_blocks
from rl.config import Recipe
from rl.distributed import barrier, gathered, without_zero3_init
from rl.preemption import OutOfMemoryStop
from rl.timing import PhaseTimer
from rl.trainable import ROWS_FILE, load_rows, row_trained, save_rows

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


def build_rewards(recipe: Recipe, tokenizer) -> list:
    """Registry rewards wrapped by the robust runtime: raw-text decoding of ``completion_ids`` (mask and
    object-ref tokens kept), None on failure or timeout, failure-rate stop, time per call logged."""
    from rewards import build_rewards as registry_rewards
    from rewards import wrap_rewards

    funcs, _ = registry_rewards(reward_items(recipe))  # weights: GRPOConfig's
    rt = recipe.reward_runtime
    wrapped = wrap_rewards(funcs, tokenizer=tokenizer, timeout_s=rt.timeout_s, max_failure_rate=rt.max_failure_rate,
                           isolation=rt.isolation)
    wrapped[0] = LogDecodedMasks(wrapped[0], tokenizer)
    return wrapped


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


class LogDecodedMasks:
    """Adds columns to TRL's completion logs (console sample, parquet files, W&B table) when ``grpo.log_completions``
    is on: ``pred_masks`` (the codes parsed from each raw completion), and ``raw_completion`` (the text the rewards
    read, special tokens kept) with ``row_id`` (the dataset row), which ``samtok-rl rewards probe --completions``
    rescores. Delegates scoring."""

    def __init__(self, reward, tokenizer):
        self.reward, self.tokenizer = reward, tokenizer
        self.__name__ = reward.__name__

    def __call__(self, *args, completion_ids=None, log_extra=None, **kwargs):
        if callable(log_extra) and completion_ids is not None:
            from rewards import decode_raw
            from tokenizer.codec import parse_masks

            texts = decode_raw(completion_ids, self.tokenizer)
            log_extra("pred_masks", [str(parse_masks(t)) for t in texts])
            log_extra("raw_completion", texts)
            if kwargs.get("id") is not None:
                log_extra("row_id", [str(i) for i in kwargs["id"]])
        return self.reward(*args, completion_ids=completion_ids, log_extra=log_extra, **kwargs)


# ---------------------------------------------------------------- trainer


class SamtokGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with staged (atomic) checkpoints that also carry trainable mask-token rows, text
    prompts in the completion logs (W&B), and one image placeholder per image for colocated vLLM."""

    _staging_root: str | None = None
    max_nonfinite_steps = 3  # set from run.max_nonfinite_steps by build_trainer
    balance: dict | None = None  # set from sampling.balance by build_trainer
    stratify = False  # sampling.stratify, set by build_trainer
    dynamic = None  # sampling.dynamic (rl.config.Dynamic), set by build_trainer
    prompt_sampler = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nonfinite_skipped = 0  # steps skipped for non-finite gradients, in this process
        self._nonfinite_in_a_row = 0
        # timing_s/*: where each step's time goes (rl.timing); the hooks below open its spans.
        self.phase_timer = PhaseTimer(self._metrics)
        self.add_callback(self.phase_timer)
        self._in_rollout = False
        if self.use_vllm and self.vllm_mode == "colocate":
            pad = self.processing_class.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            self.vllm_generation.generate = vllm_rollout.one_placeholder_per_image(self.vllm_generation.generate, pad)

    def _get_grad_norm(self, model, grad_norm=None):
        # Called once per optimizer step, just before optimizer.step(), with the global gradient norm.
        # Dropping every gradient (None) makes torch's optimizers skip each parameter: weights, moments and
        # step counts stay as they were. DeepSpeed keeps gradients in its own buffers and steps its own way.
        norm = super()._get_grad_norm(model, grad_norm)
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

    def _get_train_sampler(self, dataset=None):
        s = super()._get_train_sampler(dataset)
        layout = (s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle, s.seed)
        data = dataset if dataset is not None else self.train_dataset
        if self.balance:
            self.prompt_sampler = sampling.BalancedRepeatSampler(*layout, kinds=sampling.dataset_kinds(data),
                                                                 shares=self.balance, stratify=self.stratify)
        else:
            self.prompt_sampler = sampling.EpochSeededRepeatSampler(*layout)
            if self.stratify:
                self.prompt_sampler.kinds = sampling.dataset_kinds(data)
        return self.prompt_sampler

    def _generate(self, prompts):
        with self.phase_timer.span("generation"):
            return super()._generate(prompts)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if not self._in_rollout:  # the loss's own forward pass: part of forward_backward
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with self.phase_timer.span("logprobs"):  # old-policy and reference log-probs of the rollouts
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.phase_timer.span("rewards"):
            return self._rewards_and_counts(inputs, prompts, completions, completion_ids_list)

    def _rewards_and_counts(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._round_rewards = rewards  # every rank's rewards of this generation round, for dynamic sampling
        # TRL gives a completion that every reward scored None (NaN here) zero advantage; count them, and the
        # groups made only of such completions (a prompt that taught nothing), so that a broken reward shows.
        mode = "train" if self.model.training else "eval"
        g = self.num_generations if mode == "train" else self.num_generations_eval
        unscorable = torch.isnan(rewards).all(1)
        if g and len(unscorable) % g == 0:
            self._metrics[mode]["rewards/unscorable_groups"].append(unscorable.view(-1, g).all(1).sum().item())
        self._metrics[mode]["rewards/unscorable_completions"].append(unscorable.sum().item())
        self._log_reward_by_kind(mode, inputs, rewards)
        return rewards

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
        for kind, values in by_kind.items():
            self._metrics[mode][f"reward_by_kind/{kind}"].append(sum(values) / len(values))

    def _generate_and_score_completions(self, inputs):
        self._in_rollout = True
        try:
            with self.phase_timer.span("rollout"):
                if self.dynamic is None or not self.dynamic.enabled or not self.model.training:
                    return super()._generate_and_score_completions(inputs)
                return sampling.dynamic_generation(self, inputs, super()._generate_and_score_completions)
        finally:
            self._in_rollout = False

    def _load_rng_state(self, checkpoint):
        # Called once, at the resumed step, just before the first batch. TRL counts micro-steps in ``_step``
        # to know when to generate; it starts from 0 in a new process, so a run resumed inside a generation
        # block would generate where the straight run reused its buffer. Restart the count where it was.
        a = self.args
        micro = self.state.global_step * a.gradient_accumulation_steps
        # (``checkpoint`` is named as TRL's parameter, so the module is not reachable by that name here.)
        if not between_generation_blocks(self.state.global_step, a.gradient_accumulation_steps,
                                         a.steps_per_generation, self.num_iterations):
            block = a.steps_per_generation * self.num_iterations
            raise CheckpointError(
                f"{checkpoint}: saved inside a generation block (step {self.state.global_step}, "
                f"{block} micro-steps per block), whose rollouts are not checkpointed; it cannot be resumed "
                "exactly. Save at steps where grpo.save_steps x gradient_accumulation_steps is a multiple of "
                "steps_per_generation x num_iterations.")
        self._step = micro
        super()._load_rng_state(checkpoint)

    def _get_output_dir(self, trial):
        return self._staging_root or super()._get_output_dir(trial)

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
        self._buffered_inputs = None  # the rollouts of a failed generation block are not trained on
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        step, a = self.state.global_step, self.args
        run_dir = Path(super()._get_output_dir(None))
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
            self._save_checkpoint(self.model, None)
            note = f"saved {saved} (the state after step {step}); resume with run.resume=true"
        return OutOfMemoryStop(
            f"out of memory in step {step + 1} ({error}). This step's update was not applied; {note}. Lower "
            f"grpo.per_device_train_batch_size ({a.per_device_train_batch_size}, with gradient_accumulation_steps "
            f"raised to keep the batch), grpo.max_completion_length ({a.max_completion_length}), or num_generations "
            f"({a.num_generations}); or set grpo.gradient_checkpointing=true, model.finetune=lora, or ZeRO-3.")

    def _save_checkpoint(self, model, trial):
        bad = [n for n, p in self.model.named_parameters() if p.numel() and not torch.isfinite(p).all()]
        if bad:  # a checkpoint of a broken state would replace a good one in the rotation
            raise NonFiniteError(f"step {self.state.global_step}: non-finite weights in {bad[:5]}; not checkpointed")
        run_dir = super()._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self._staging_root = checkpoint.staging_dir(run_dir)
        try:
            with self.phase_timer.span("checkpoint", into="carry"):
                super()._save_checkpoint(model, trial)
                self._save_rows(os.path.join(self._staging_root, name))  # every rank: gathering is collective
        finally:
            self._staging_root = None
        barrier()  # every rank's part (DeepSpeed partitions, RNG state) is written before the marker is
        if self.args.should_save:
            checkpoint.commit(run_dir, name)
            checkpoint.rotate(run_dir, self.args.save_total_limit)
        barrier()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # The Trainer loads a full checkpoint with a plain load_state_dict(strict=False), but save_pretrained
        # writes the checkpoint-format names (Qwen-VL: ``visual.*``, ``model.layers.*``), which differ from the
        # module names transformers 5 builds (``model.visual.*``, ``model.language_model.*``): every key
        # missed, a warning was logged, and training went on from the initial weights.
        target = model if model is not None else self.model
        if checkpoint.has_full_weights(resume_from_checkpoint) and not hasattr(target, "peft_config"):
            checkpoint.load_full_weights(target, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            if hasattr(target, "peft_config"):
                checkpoint.check_adapter_loaded(target, resume_from_checkpoint)
        weights = row_trained(self.model)
        if not weights:
            return
        if not os.path.isfile(os.path.join(resume_from_checkpoint, ROWS_FILE)):
            raise CheckpointError(f"{resume_from_checkpoint}: no {ROWS_FILE}; the trained mask-token rows "
                                  "of this LoRA run would be lost")
        load_rows(weights, resume_from_checkpoint, next(iter(weights.values()))._samtok_rows)

    def _save_rows(self, ckpt_dir: str) -> None:
        weights = row_trained(self.model)
        if not weights:
            return
        with gathered(weights.values()):
            if self.args.should_save:
                save_rows(weights, ckpt_dir)

    def log(self, logs: dict, start_time: float | None = None) -> None:
        # A W&B Table needs one type per column, and a VLM prompt's content mixes {"type": "image"} with
        # {"type": "text", "text": ...} parts: TRL logs the messages as they are and wandb raises, which
        # stops training at the first log. The logged prompts become plain text for every backend.
        if "loss" in logs:
            logs["nonfinite_skipped"] = float(self.nonfinite_skipped)
        prompts = self._logs["prompt"]
        if self.log_completions and prompts:
            flat = [messages_text(p) for p in prompts]
            prompts.clear()
            prompts.extend(flat)
        super().log(logs, start_time)

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


def build_trainer(recipe: Recipe, run_dir: str | os.PathLike, train_dataset, eval_dataset=None,
                  model=None, processor=None, callbacks=(), args: GRPOConfig | None = None):
    """The configured trainer. ``model``/``processor`` default to ``rl.policy.prepare_policy(recipe, run_dir)``.

    Under ZeRO-3, build ``args`` (``grpo_config``) before loading the model: transformers then partitions
    the weights while loading instead of materialising the whole model on every rank first.
    """
    args = args or grpo_config(recipe, run_dir)
    if model is None:
        from rl.policy import prepare_policy

        model, processor = prepare_policy(recipe, run_dir)
    funcs = build_rewards(recipe, processor.tokenizer)
    lm_head.install()
    trainer = SamtokGRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=processor, callbacks=list(callbacks),
    )
    trainer.max_nonfinite_steps = recipe.run.max_nonfinite_steps
    trainer.balance = recipe.sampling.balance
    trainer.stratify = recipe.sampling.stratify
    trainer.dynamic = recipe.sampling.dynamic
    return trainer


def save_final(trainer, processor, path: str | os.PathLike) -> Path:
    """Save a plain (merged) policy that ``rl.policy.load_policy`` reads: LoRA is merged into the weights."""
    from rl.policy import save_policy

    path = Path(path)
    model = trainer.accelerator.unwrap_model(trainer.model)
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if zero3 and not hasattr(model, "merge_and_unload"):
        # Parameters are partitioned: the Trainer gathers them (stage3_gather_16bit_weights_on_model_save).
        trainer.save_model(str(path))
        if trainer.accelerator.is_main_process:
            processor.save_pretrained(str(path))
    elif zero3:
        # The Trainer would save the adapter alone and lose the trained mask-token rows: gather everything
        # (collective), then rank 0 rebuilds the LoRA policy whole, merges and saves it.
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
        if trainer.accelerator.is_main_process:
            save_policy(_merged_from_state(model, state), processor, path)
    else:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            save_policy(model, processor, path)
    barrier()
    return path


def _merged_from_state(peft_model, state: dict):
    """An unpartitioned copy of ``peft_model`` holding ``state`` (its gathered state dict), LoRA merged."""
    import copy

    from peft import get_peft_model

    from rl.policy import load_policy

    with without_zero3_init():
        base, _ = load_policy(peft_model.get_base_model().name_or_path)
    model = get_peft_model(base, copy.deepcopy(peft_model.peft_config["default"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embedding
    others = [name for name in peft_model.peft_config if name != "default"]  # TRL's frozen "ref" adapter (beta > 0)
    unexpected = [k for k in unexpected if not any(f".{name}." in k for name in others)]
    if missing or unexpected:
        raise RuntimeError(f"gathered LoRA state does not fit the policy: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.merge_and_unload()
