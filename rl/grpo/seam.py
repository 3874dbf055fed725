"""The seam with TRL and transformers: every touch of their internals, in one room, each with its reason.

``SamtokGRPOTrainer`` (``rl.grpo.trainer``) says what the project adds to GRPO in public hook methods; this module's
``SeamTrainer`` is the only place that overrides TRL's or the Trainer's private methods, reads or writes their
private state, or patches their modules, and it forwards each to one of those hooks. When TRL moves a private
name, ``tests/test_trl_contract.py`` fails naming it (it reads ``PRIVATE_HOOKS``, ``PRIVATE_STATE`` and
``TRL_HELPERS`` below), and this file is the one to mend.

Private hooks, and why each is overridden:

=====================================  ===============================================================================
``_get_grad_norm``                     the one call per optimizer step that sees the global gradient norm before
                                       ``optimizer.step()``: a non-finite step is skipped there (``check_grad_norm``)
``_get_train_sampler``                 TRL builds its ``RepeatSampler`` here; the project's samplers keep its layout
                                       (``prompt_sampler``)
``_generate``                          generation alone, for ``timing_s/generation``
``_get_per_token_logps_and_entropies`` old-policy and reference log-probs of a rollout, for ``timing_s/logprobs``
``_calculate_rewards``                 every rank's rewards of one round: timing, unscorable counts, reward by kind and
                                       dynamic sampling's filter read them (``after_rewards``)
``_generate_and_score_completions``    one generation batch: dynamic sampling replaces groups here (``rollout``)
``_load_rng_state``                    called once at the resumed step before the first batch: TRL's micro-step count
                                       is restored there (``resume_micro_step``)
``_get_output_dir``                    checkpoints are written into a staging folder, then renamed when whole
``_save_checkpoint``                   staging, the trained mask-token rows and the completion marker
                                       (``save_checkpoint``)
``_load_from_checkpoint``              full checkpoints of Qwen-VL load under transformers 5's names; the rows of a
                                       LoRA run come back (``load_checkpoint``)
=====================================  ===============================================================================
"""

from __future__ import annotations

import contextlib

from trl import GRPOTrainer

# trl.trainer.utils helpers the project calls (no public home in TRL 1.16): the prompt sampler's layout, and
# the padding and image-batch splitting that dynamic sampling needs to join groups from several rounds.
from trl.trainer.utils import RepeatSampler, pad, split_pixel_values_by_grid, unsplit_pixel_values_by_grid

PRIVATE_HOOKS = ("_calculate_rewards", "_generate", "_generate_and_score_completions", "_get_grad_norm",
                 "_get_output_dir", "_get_per_token_logps_and_entropies", "_get_train_sampler",
                 "_load_from_checkpoint", "_load_rng_state", "_save_checkpoint")

# Private methods of GRPOTrainer called here (not overridden), and why.
PRIVATE_CALLS = {
    "_log_completion_extra": "the completion log's extra columns, which TRL offers only to reward functions",
}

# Private state of GRPOTrainer read or written here, and why it cannot go through a public API.
PRIVATE_STATE = {
    "_metrics": "timing_s/*, reward_by_kind/*, dynamic sampling and unscorable counts are logged through TRL's metrics",
    "_step": "a resumed run restarts TRL's micro-step count, so that it generates where the straight run did",
    "_buffered_inputs": "an out-of-memory stop drops the rollouts of a failed generation block",
    "_logs": "logged prompts become text (W&B tables refuse VLM message lists); completion columns are added",
    "_tokenizer": "dynamic sampling pads the groups it keeps with TRL's tokenizer",
}

# trl.trainer.utils names used here, with the constructor parameters the project relies on (None: any).
TRL_HELPERS = {
    "RepeatSampler": ["self", "data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed"],
    "pad": None, "split_pixel_values_by_grid": None, "unsplit_pixel_values_by_grid": None,
    "_ChunkedLogProbFunction": None, "_use_triton": None,
}

__all__ = ["PRIVATE_CALLS", "PRIVATE_HOOKS", "PRIVATE_STATE", "TRL_HELPERS", "RepeatSampler", "SeamTrainer",
           "enable_compiled_decoding", "install_dense_lm_head",
           "pad", "split_pixel_values_by_grid", "tensorboard_writer", "unsplit_pixel_values_by_grid",
           "wandb_module", "without_zero3_init"]


class SeamTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with each private hook the project needs forwarded to a public method (no-ops here)."""

    # ---------------------------------------------------------------- hooks a subclass overrides

    def phase(self, name: str, into: str | None = None):
        """A context that times one phase of the step (``rl.grpo.timing``)."""
        return contextlib.nullcontext()

    def check_grad_norm(self, model, norm):
        """The global gradient norm, before ``optimizer.step()``; returning after zeroing gradients skips the step."""
        return norm

    def prompt_sampler(self, trl_sampler: RepeatSampler, dataset):
        """The sampler to train with, given TRL's (whose layout it keeps)."""
        return trl_sampler

    def after_rewards(self, inputs, rewards, completion_ids) -> None:
        """Every rank's rewards of one generation round ([completions, rewards], NaN = unscored), with this
        rank's inputs and completion ids (the list object every reward received)."""

    def rollout(self, inputs, generate):
        """One generation batch; ``generate(inputs)`` is TRL's generate-and-score."""
        return generate(inputs)

    def resume_micro_step(self, checkpoint: str) -> int:
        """TRL's micro-step count at the resumed step (called once, before the first batch)."""
        return self.state.global_step * self.args.gradient_accumulation_steps

    def staging_dir(self) -> str | None:
        """Where the checkpoint being saved is written (None: TRL's run folder)."""
        return None

    def save_checkpoint(self, save, run_dir: str) -> None:
        """Save one checkpoint: ``save()`` is the Trainer's own save; ``run_dir`` the run folder."""
        save()

    def load_checkpoint(self, path: str, model, load) -> None:
        """Restore weights from ``path``: ``load()`` is the Trainer's own load."""
        load()

    # ---------------------------------------------------------------- private state, read and written

    def metrics(self, mode: str = "train"):
        """TRL's per-mode metric lists (``name -> [values]``), averaged into each log."""
        return self._metrics[mode]

    @property
    def all_metrics(self):
        return self._metrics

    def set_micro_step(self, step: int) -> None:
        self._step = step

    def drop_buffered_rollouts(self) -> None:
        self._buffered_inputs = None

    def log_completion_column(self, name: str, values: list) -> None:
        """A column of this rank's completions in TRL's completion log (console, parquet, W&B); TRL gathers it."""
        self._log_completion_extra(name, values)

    def logged_prompts(self) -> list:
        """The prompts TRL logs beside the completions (edited in place before each log)."""
        return self._logs["prompt"]

    @property
    def pad_token_id(self) -> int:
        return self._tokenizer.pad_token_id

    def checkpoint_now(self) -> None:
        """Save a checkpoint of the current state, as the Trainer does at a save step (staging included)."""
        self._save_checkpoint(self.model, None)

    def run_dir(self, trial=None) -> str:
        """The run folder the Trainer saves checkpoints in (not the staging folder)."""
        return GRPOTrainer._get_output_dir(self, trial)

    # ---------------------------------------------------------------- the overrides

    def _get_grad_norm(self, model, grad_norm=None):
        return self.check_grad_norm(model, super()._get_grad_norm(model, grad_norm))

    def _get_train_sampler(self, dataset=None):
        data = dataset if dataset is not None else self.train_dataset
        return self.prompt_sampler(super()._get_train_sampler(dataset), data)

    def _generate(self, prompts):
        with self.phase("generation"):
            return super()._generate(prompts)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if not getattr(self, "_in_rollout", False):  # the loss's own forward pass: part of forward_backward
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with self.phase("logprobs"):  # old-policy and reference log-probs of the rollouts
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        with self.phase("rewards"):
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self.after_rewards(inputs, rewards, completion_ids_list)
            return rewards

    def _generate_and_score_completions(self, inputs):
        self._in_rollout = True
        try:
            with self.phase("rollout"):
                return self.rollout(inputs, super()._generate_and_score_completions)
        finally:
            self._in_rollout = False

    def _load_rng_state(self, checkpoint):
        # TRL counts micro-steps in ``_step`` to know when to generate, from 0 in a new process.
        self.set_micro_step(self.resume_micro_step(checkpoint))
        super()._load_rng_state(checkpoint)

    def _get_output_dir(self, trial):
        return self.staging_dir() or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        self.save_checkpoint(lambda: super(SeamTrainer, self)._save_checkpoint(model, trial), self.run_dir(trial))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        self.load_checkpoint(resume_from_checkpoint, model,
                             lambda: super(SeamTrainer, self)._load_from_checkpoint(resume_from_checkpoint, model))


# ---------------------------------------------------------------- patches of TRL and transformers modules

_dense_lm_head = False


def install_dense_lm_head() -> bool:
    """Route TRL's fused LM head through ``rl.grpo.lm_head.dense_logprobs`` on the CPU (idempotent); whether it is in
    place. TRL 1.16 scores every loss through ``trl.trainer.utils._ChunkedLogProbFunction`` and decides with
    ``_use_triton`` whether to score the labelled positions alone; those two names are the fused forward's only
    hooks (``rl.grpo.lm_head`` says why the dense path is faster on the CPU). On a TRL laid out otherwise, TRL is left
    alone and that is said once."""
    global _dense_lm_head
    if _dense_lm_head:
        return True
    import logging

    import trl.trainer.utils as trl_utils

    from rl.grpo.lm_head import DenseOnCpu

    try:
        chunked, use_triton = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    except AttributeError:
        logging.getLogger(__name__).warning(
            "this TRL has no _ChunkedLogProbFunction/_use_triton in trl.trainer.utils; keeping TRL's fused LM head "
            "(slower on the CPU, same results)")
        return False
    DenseOnCpu.chunked = chunked
    trl_utils._ChunkedLogProbFunction = DenseOnCpu
    # The kernel module keeps its own reference for choosing the Triton kernel; this one only picks "compact".
    trl_utils._use_triton = lambda device: use_triton(device) or device.type == "cpu"
    _dense_lm_head = True
    return True


def enable_compiled_decoding(config) -> None:
    """Let HF ``generate`` compile its decoding step under the generation config ``config`` (``rollout.compile``: the
    trainer's ``generation_config``, which TRL's HF path generates with; ``bench/rollout.py`` sets its own the same
    way). TRL 1.16 builds that config with ``disable_compile=True`` and no setting changes it (``disable_compile`` in
    ``grpo.generation_kwargs`` collides with TRL's own keyword and fails). Transformers compiles on accelerators only
    unless the compile config's private ``_compile_all_devices`` is set: set here, so that a CPU run compiles the
    same graph that a GPU run does (the CPU tests check that graph's tokens)."""
    from transformers.generation.configuration_utils import CompileConfig

    config.disable_compile = False
    config.compile_config = config.compile_config or CompileConfig()
    config.compile_config._compile_all_devices = True


def wrap_vllm_generate(trainer, wrap) -> None:
    """Replace the colocated vLLM engine's ``generate`` of ``trainer`` by ``wrap(generate)``: TRL has no hook between
    its prompt ids and vLLM (``rl.grpo.vllm_rollout`` needs one to collapse image placeholders, huggingface/trl#6294)."""
    trainer.vllm_generation.generate = wrap(trainer.vllm_generation.generate)


@contextlib.contextmanager
def without_zero3_init():
    """Build a model whole while a ZeRO-3 run is configured: transformers partitions every model built while its
    module-level weak reference to the DeepSpeed config is set, and offers no switch (rebuilding a LoRA policy
    whole on rank 0 to merge it needs one)."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def tensorboard_writer(callback, args):
    """The ``SummaryWriter`` of transformers' ``TensorBoardCallback``, created if the callback has not yet (it does
    so lazily at train begin, and the held-out monitor logs a step-0 image before that)."""
    if callback.tb_writer is None:
        callback._init_summary_writer(args)
    return callback.tb_writer


def wandb_module(callback):
    """The ``wandb`` module of transformers' ``WandbCallback`` while a run is active, else None (images are logged
    through it, under the callback's own run)."""
    wandb = getattr(callback, "_wandb", None)
    return wandb if wandb is not None and wandb.run is not None else None
