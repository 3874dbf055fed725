"""Recipe validation without building anything: every problem collected at once (unknown keys with a suggestion,
wrong types, TRL's own refusals of ``grpo:`` / ``sft.args:``, reward parameters bound to their signatures,
missing local files), so a user fixes a recipe in one round instead of one crash per mistake."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs import ENVIRONMENTS, is_generated
from rl.recipe.schema import (
    ANSWER_KINDS,
    DTYPES,
    FINETUNE,
    OWNED_BY_RUN,
    REPORTERS,
    TINY,
    looks_local,
    suggest,
)

if TYPE_CHECKING:
    from rl.recipe.schema import Recipe, Reward, Sampling


def build(cls, data, where: str, problems: list[str]):
    """Instantiate dataclass ``cls`` from ``data``, appending every problem instead of raising."""
    if not isinstance(data, dict):
        problems.append(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        at = f"{where}.{key}" if where else str(key)
        if key not in hints:
            problems.append(f"{at}: unknown key{suggest(key, names)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            built = build(hint, value, at, problems)
            if built is not None:
                kwargs[key] = built
        elif _origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                problems.append(f"{at}: expected a list, got {type(value).__name__}")
                continue
            item_cls = typing.get_args(hint)[0]
            items = [build(item_cls, v, f"{at}[{i}]", problems) for i, v in enumerate(value)]
            kwargs[key] = [i for i in items if i is not None]
        elif _type_ok(value, hint):
            kwargs[key] = value
        else:
            problems.append(f"{at}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    return cls(**kwargs)


def _origin(hint):
    return typing.get_origin(hint)


def _type_ok(value, hint) -> bool:
    """A YAML value against a type annotation. Unknown annotation kinds are accepted, not guessed."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = _origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is list:
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {m.value for m in hint} or value in hint.__members__
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint) -> str:
    if _origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _check_passthrough(values: dict, config_cls, where: str, problems: list[str], owned=frozenset()):
    """Check ``values`` against a TRL config dataclass's fields and annotations."""
    hints = typing.get_type_hints(config_cls)
    for key, value in values.items():
        at = f"{where}.{key}"
        if value is False and key in hints and not _type_ok(False, hints[key]) and _type_ok("no", hints[key]):
            # YAML 1.1 (omegaconf) reads `save_strategy: no` as false; TRL means the string "no".
            values[key] = value = "no"
        if key in owned:
            problems.append(f"{at}: set by the recipe's run section (run.{key.replace('resume_from_checkpoint', 'resume')})")
        elif key not in hints:
            problems.append(f"{at}: not a {config_cls.__name__} field{suggest(key, list(hints))}")
        elif not _type_ok(value, hints[key]):
            problems.append(f"{at}: expected {_type_name(hints[key])}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------- semantics


def check_semantics(r: Recipe, problems: list[str], check_files: bool) -> None:
    from trl import GRPOConfig, SFTConfig  # config dataclasses only; cheap next to a model load

    before = len(problems)
    _check_passthrough(r.grpo, GRPOConfig, "grpo", problems, OWNED_BY_RUN)
    if len(problems) == before:  # TRL's own checks only once every field is known and well typed
        _check_trl_builds(GRPOConfig, r.grpo, "grpo", problems, r.run.dist_timeout_s)
    before = len(problems)
    _check_passthrough(r.sft.args, SFTConfig, "sft.args", problems, OWNED_BY_RUN)
    if len(problems) == before and r.sft.enabled:
        from rl.recipe.schema import SFT_DEFAULTS

        _check_trl_builds(SFTConfig, {**SFT_DEFAULTS, **r.sft.args}, "sft.args", problems, r.run.dist_timeout_s)
    _one_of(r.model.dtype, DTYPES, "model.dtype", problems)
    _one_of(r.model.finetune, FINETUNE, "model.finetune", problems)
    _one_of(r.model.tiny.arch, ("qwen2_5_vl", "qwen3_vl"), "model.tiny.arch", problems)
    _one_of(r.model.tiny.vocab, ("tiny", "qwen"), "model.tiny.vocab", problems)
    t = r.model.tiny
    if t.head_dim < 2 or t.head_dim % 2 or t.hidden_size % t.head_dim or t.hidden_size // t.head_dim < 2:
        problems.append(f"model.tiny.head_dim: {t.head_dim} must be even and split hidden_size {t.hidden_size} "
                        "into at least 2 heads")
    _one_of(r.data.env, tuple(ENVIRONMENTS), "data.env", problems)
    for name in r.run.report_to:
        _one_of(name, REPORTERS, "run.report_to", problems)
    if not r.rewards:
        problems.append("rewards: at least one reward is required")
    for i, rw in enumerate(r.rewards):
        _check_reward(rw, f"rewards[{i}]", problems, r.data.mask_tokenizer)
    if r.reward_runtime.timeout_s is not None and r.reward_runtime.timeout_s <= 0:
        problems.append("reward_runtime.timeout_s: must be > 0 or null")
    _one_of(r.reward_runtime.isolation, ("none", "process"), "reward_runtime.isolation", problems)
    if not 0 < r.reward_runtime.max_failure_rate <= 1:
        problems.append("reward_runtime.max_failure_rate: must be in (0, 1]")
    _check_resumable(r.grpo, problems)
    if not r.run.dist_timeout_s > 0:
        problems.append(f"run.dist_timeout_s: {r.run.dist_timeout_s} must be > 0")
    if r.run.max_nonfinite_steps < 1:
        problems.append(f"run.max_nonfinite_steps: {r.run.max_nonfinite_steps} must be >= 1")
    if r.grpo.get("use_transformers_continuous_batching"):  # TRL checks this only when the trainer is built
        problems.append("grpo.use_transformers_continuous_batching: TRL 1.16 refuses it for multimodal models "
                        "(every QwenVL-SAMTok policy); use grpo.use_vllm=true for faster rollouts")
    _check_vllm(r, problems)
    _check_rollout(r, problems)
    weights = r.grpo.get("reward_weights")
    if weights is not None:
        problems.append("grpo.reward_weights: set each reward's weight under rewards[] instead")
    if r.data.env in ENVIRONMENTS and not is_generated(r.data.env) and not r.data.train:
        problems.append(f"data.train: required for env {r.data.env!r} (a prepared dataset from `samtok-rl prepare`)")
    _check_monitor(r, problems)
    _check_sampling(r.sampling, problems)
    if check_files:
        _check_local_path(r.model.path, "model.path", problems)
        try:
            from tokenizer.load import spec_folder

            spec_folder(r.data.mask_tokenizer)
        except ValueError as e:
            problems.append(f"data.mask_tokenizer: {e}")
        for key in ("train", "eval", "image_root"):
            value = getattr(r.data, key)
            if value is not None and not Path(value).exists():
                problems.append(f"data.{key}: {value!r} does not exist")


def _check_vllm(r: Recipe, problems: list[str]) -> None:
    mode = r.grpo.get("vllm_mode", "colocate")
    if mode not in ("colocate", "server"):
        problems.append(f"grpo.vllm_mode: {mode!r} is not colocate (vLLM inside every training process) or server "
                        "(`trl vllm-serve` on GPUs of its own)")
    if r.grpo.get("use_vllm") and mode == "server" and (r.model.add_mask_tokens or r.model.path == TINY):
        # TRL pushes the trained weights into the server before every generation round (from step 0), so the
        # served weights need not be the policy's, but its vocabulary must be: the mask tokens grow it.
        problems.append("grpo.vllm_mode=server: the server loads its model from disk, without the mask tokens "
                        "model.add_mask_tokens (or the tiny policy) adds in the trainer, and the weight sync would not "
                        "fit; serve and train a checkpoint that has them (a -SAMTok checkpoint, or an earlier run's "
                        "sft/ or final/) with model.add_mask_tokens=false")


def _check_rollout(r: Recipe, problems: list[str]) -> None:
    if not r.rollout.compile:
        return
    if r.grpo.get("use_vllm"):
        problems.append("rollout.compile: compiles HF generate's decoding step, but grpo.use_vllm generates with vLLM "
                        "(which compiles its own); set one of the two")
    elif r.grpo.get("cache_implementation") != "static":
        problems.append(f"rollout.compile: transformers compiles decoding only with a static KV cache, and "
                        f"grpo.cache_implementation is {r.grpo.get('cache_implementation')!r}; add "
                        "grpo.cache_implementation=static")


def _check_monitor(r: Recipe, problems: list[str]) -> None:
    m = r.monitor
    for key in ("eval_steps", "image_steps"):
        if getattr(m, key) < 0:
            problems.append(f"monitor.{key}: {getattr(m, key)} must be >= 0 (0: off)")
    for key in ("eval_samples", "image_samples", "max_new_tokens"):
        value = getattr(m, key)
        if value is not None and value < 1:
            problems.append(f"monitor.{key}: {value} must be >= 1")
    if m.vllm_sync_steps < 0 or not m.vllm_sync_tolerance > 0:
        problems.append("monitor.vllm_sync_steps must be >= 0 (0: off) and monitor.vllm_sync_tolerance > 0")
    if m.vllm_sync_steps > 0 and not r.grpo.get("use_vllm"):
        problems.append("monitor.vllm_sync_steps: checks vLLM rollouts, but grpo.use_vllm is off")
    if m.vllm_sync_steps > 0 and r.grpo.get("vllm_importance_sampling_correction") is False:
        problems.append("monitor.vllm_sync_steps reads the log-probs TRL computes for its importance-sampling "
                        "correction: keep grpo.vllm_importance_sampling_correction on")
    if m.eval_steps <= 0 and m.image_steps <= 0:
        return
    if r.data.env in ENVIRONMENTS and not is_generated(r.data.env) and not r.data.eval:
        problems.append(f"monitor: env {r.data.env!r} needs held-out rows to evaluate on: set data.eval (a prepared "
                        "dataset), or monitor.eval_steps=0 monitor.image_steps=0")


def _check_sampling(s: Sampling, problems: list[str]) -> None:
    d = s.dynamic
    if d.min_std < 0:
        problems.append(f"sampling.dynamic.min_std: {d.min_std} must be >= 0")
    if d.max_rounds < 0:
        problems.append(f"sampling.dynamic.max_rounds: {d.max_rounds} must be >= 0")
    if s.balance is None:
        return
    for kind, share in s.balance.items():
        if kind not in ANSWER_KINDS:
            problems.append(f"sampling.balance.{kind}: unknown answer kind{suggest(kind, list(ANSWER_KINDS))}")
        elif not _type_ok(share, float) or share < 0:
            problems.append(f"sampling.balance.{kind}: {share!r} must be a number >= 0")
    if all(_type_ok(v, float) for v in s.balance.values()) and sum(max(v, 0) for v in s.balance.values()) <= 0:
        problems.append("sampling.balance: the shares sum to 0; give at least one kind a positive share (or null)")


def _check_trl_builds(config_cls, values: dict, where: str, problems: list[str], dist_timeout_s=None) -> None:
    """Build TRL's config as training will, so that its ``__post_init__`` refusals (``num_generations=1``, a
    batch not divisible by the generations, ...) are listed now instead of after the SFT stage. The world size
    is this process's: under a launcher every rank checks its own. Building it sets accelerate's process group
    up (once per process), so it gets the run's ``dist_timeout_s`` here already."""
    import math
    import tempfile

    import torch

    kwargs = {k: v for k, v in values.items() if k not in OWNED_BY_RUN and k != "deepspeed"}  # DeepSpeed: at launch
    if dist_timeout_s is not None and dist_timeout_s > 0:
        kwargs.setdefault("ddp_timeout", math.ceil(dist_timeout_s))
        from rl.grpo.distributed import init_process_group

        init_process_group(dist_timeout_s)
    if not torch.cuda.is_available():
        kwargs = {"use_cpu": True, "bf16": False, **kwargs}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config_cls(output_dir=tmp, report_to="none", **kwargs)
        except (ValueError, TypeError, NotImplementedError) as e:
            problems.append(f"{where}: TRL's {config_cls.__name__} refuses these settings: {e}")


def _check_resumable(grpo: dict, problems: list[str]) -> None:
    """Checkpoints must fall between generation blocks: TRL keeps a block's rollouts in memory only, so a
    checkpoint saved inside one cannot be resumed exactly (the resumed run would generate anew)."""
    from rl.recipe.schema import between_generation_blocks

    accum = grpo.get("gradient_accumulation_steps", 1)
    spg, iterations = grpo.get("steps_per_generation") or accum, grpo.get("num_iterations", 1)
    save = grpo.get("save_steps", 500)
    numbers = all(isinstance(v, int) for v in (save, accum, spg, iterations))
    if grpo.get("save_strategy", "steps") == "steps" and numbers:
        if not between_generation_blocks(save, accum, spg, iterations):
            block = spg * iterations
            problems.append(f"grpo.save_steps: {save} x gradient_accumulation_steps {accum} must be a multiple of "
                            f"steps_per_generation x num_iterations ({block}), or a checkpoint would fall inside a "
                            "generation block and could not be resumed exactly")


def _one_of(value, allowed, where, problems):
    if value not in allowed:
        problems.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def _check_local_path(path: str, where: str, problems: list[str]) -> None:
    """A hub id (``owner/name``) is not checked: validation never needs the network."""
    if path == TINY:
        return
    if looks_local(path) and not Path(path).expanduser().exists():
        problems.append(f"{where}: local path {path!r} does not exist")


def _check_reward(rw: Reward, where: str, problems: list[str], mask_tokenizer: str) -> None:
    """Resolve the name and bind the params without building heavy rewards (mask_iou loads a model); a reward
    that decodes masks must decode them with the recipe's one tokenizer (``data.mask_tokenizer``)."""
    if not rw.name:
        problems.append(f"{where}.name: required")
        return
    try:
        from rewards import registry

        registry.check_params(rw.name, rw.params)
        own = rw.params.get("mask_tokenizer")
        if own is not None and own != mask_tokenizer and registry.needs_mask_tokenizer(rw.name):
            problems.append(f"{where}.params.mask_tokenizer: {own!r} differs from data.mask_tokenizer "
                            f"{mask_tokenizer!r}, which encoded the answers; drop the parameter (the reward gets "
                            "data.mask_tokenizer) or set data.mask_tokenizer to it")
    except Exception as e:  # the registry's message names the valid rewards or the bad parameter
        problems.append(f"{where}: {e}")
