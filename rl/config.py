"""Recipe schema: typed dataclasses behind the YAML files in ``recipes/``, validated before anything heavy.

``load_recipe(path, overrides)`` reads the YAML with omegaconf, applies ``key=value`` overrides, and checks
the whole tree at once: unknown keys, wrong types, missing local files and unknown reward names are
collected and raised together as one ``RecipeError``, so a user fixes a recipe in one round instead of one
crash per mistake. ``grpo:`` and ``sft.args:`` are passed through to TRL's ``GRPOConfig``/``SFTConfig`` and
are checked against those dataclasses' own fields and annotations.

Nothing here imports torch, TRL's trainers or DeepSpeed at module level: ``--dry-run`` must be quick.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

TINY = "tiny"  # model.path value that builds the tiny policy from model.tiny instead of loading weights
ENVS = ("shapes", "shapes_gcg", "gres", "gcg")
FINETUNE = ("full", "lora")
DTYPES = ("float32", "bfloat16", "float16")
REPORTERS = ("tensorboard", "wandb", "none")
# GRPOConfig fields the recipe sets elsewhere (run.*), so that there is exactly one place for each.
OWNED_BY_RUN = {"output_dir", "seed", "report_to", "resume_from_checkpoint"}


class RecipeError(ValueError):
    """Everything wrong with a recipe, one problem per line."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the recipe:\n{lines}")


@dataclass
class TinyModel:
    """The tiny Qwen-VL policy built in-process (``rl.policy.build_tiny_policy``) when ``model.path: tiny``."""

    arch: str = "qwen2_5_vl"
    vocab: str = "tiny"
    hidden_size: int = 64
    num_layers: int = 2
    head_dim: int = 16  # 32 or more to serve the policy with vLLM on a CPU (`samtok-rl eval --backend vllm`)


@dataclass
class Lora:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # Mask-token embedding rows stay trainable next to the adapters (see rl/trainable.py for how, with tied
    # embeddings).
    train_mask_tokens: bool = True


@dataclass
class Model:
    # "tiny", a local directory, or a hub id such as zhouyik/Qwen2.5-VL-3B-SAMTok-co.
    path: str = TINY
    tiny: TinyModel = field(default_factory=TinyModel)
    # For a base Qwen-VL without mask tokens: add the 514 tokens, then save the resized model before training
    # so that the reference model and vLLM load the same vocabulary.
    add_mask_tokens: bool = False
    dtype: str = "float32"
    attn_implementation: str | None = None
    freeze_vision: bool = True
    finetune: str = "full"
    lora: Lora = field(default_factory=Lora)


@dataclass
class Shapes:
    """Synthetic shapes world generated in-process (no files)."""

    n_train: int = 512
    n_eval: int = 64
    seed: int = 0
    image_size: int = 112


@dataclass
class Data:
    env: str = "shapes"
    # Prepared datasets (``samtok-rl prepare`` output) for gres/gcg: a .jsonl/.parquet file or a
    # datasets.save_to_disk directory. Unused for the shapes envs, which are generated.
    train: str | None = None
    eval: str | None = None
    image_root: str | None = None
    # Encoder of the GT answers for the generated shapes envs: "tiny" (committed weights), "random"
    # (random-init tiny tokenizer, for tests: codes are arbitrary but deterministic) or a saved directory.
    mask_tokenizer: str = "tiny"
    shapes: Shapes = field(default_factory=Shapes)
    max_train_samples: int | None = None


@dataclass
class Reward:
    # Registry name (answer_match, no_repeat, mask_iou, ...), "package.module:function" or "file.py:function".
    name: str = ""
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardRuntime:
    timeout_s: float | None = 30.0
    max_failure_rate: float = 0.5
    # "none": rewards run in the trainer's process (timeouts by SIGALRM or an abandoned thread); "process": each
    # reward in a worker process that a timeout kills and a crash costs one sample of (rewards.isolation).
    isolation: str = "none"


@dataclass
class Sft:
    """Optional warm start with TRL's SFTTrainer before GRPO (the default run uses it)."""

    enabled: bool = False
    args: dict[str, Any] = field(default_factory=dict)  # SFTConfig fields


@dataclass
class Run:
    output_dir: str = "runs/default"
    seed: int = 0
    resume: bool = False
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Keep at most this many complete checkpoints (None: all).
    keep_checkpoints: int | None = 2
    # Optimizer steps whose gradients are not finite are skipped (weights and optimizer state untouched);
    # this many in a row stop the run with an error, the last checkpoint intact.
    max_nonfinite_steps: int = 3
    # Seconds a rank waits in a collective for the others before failing with a message naming where it
    # waited (a rank that crashed, hung or was killed). Passed to the process group and to TRL's ddp_timeout.
    dist_timeout_s: float = 1800.0


@dataclass
class Monitor:
    """Held-out evaluation during GRPO (``rl.monitor.HeldOutEval``): greedy, official metrics, logged with the rewards.

    ``eval_steps``: evaluate ``eval_samples`` held-out rows every N steps, and once at step 0 (0: off);
    ``image_steps``: a grid of the first ``image_samples`` greedy rollouts every N steps (0: off);
    ``max_new_tokens``: None is ``rl.demo.MAX_NEW_TOKENS`` for the task (GRES 96, GCG 128). Held-out rows: the
    shapes world's ``val`` split, or ``data.eval`` (required for prepared data); predicted masks are decoded with
    ``data.mask_tokenizer``. Refused under ZeRO-3.

    Measured cost, tiny policy (hidden 64, 2 layers), 1 CPU thread, shapes GRES, 32 samples of up to 96 new
    tokens: 1.3-2.2 s per evaluation (generation 1.2-1.4 s; decoding and scoring 0.02 s when no mask is
    predicted, 0.8 s for 37 masks), about one GRPO step of ``recipes/shapes_gres.yaml`` (1.4-1.7 s); a grid of
    6 rollouts adds 0.9-2.7 s (matplotlib). So ``eval_steps: 10`` costs some 10-15% more wall time there.
    """

    eval_steps: int = 0
    eval_samples: int = 32
    image_steps: int = 0
    image_samples: int = 6
    max_new_tokens: int | None = None
    # vLLM weight-sync self-check (``rl.monitor.VllmSyncCheck``): every N steps (0: off), the largest gap between
    # the policy's and vLLM's per-token log-probs of the sampled completions (TRL computes both for its
    # importance-sampling correction) is logged as ``sampling/vllm_sync_max_logp_gap``, with a warning above
    # ``vllm_sync_tolerance`` nats: stale vLLM weights after a sync make the gap jump (huggingface/trl#5312).
    vllm_sync_steps: int = 0
    vllm_sync_tolerance: float = 1.0


ANSWER_KINDS = ("no_target", "single", "multi")


@dataclass
class Dynamic:
    """Dynamic sampling (DAPO's group filter; verl ``filter_groups``, EasyR1 ``online_filtering``).

    Groups whose total-reward std is below ``min_std`` (all 8 completions equally right or wrong: no GRPO
    gradient) are dropped and replaced by groups of fresh prompts, for at most ``max_rounds`` extra generation
    rounds per generation batch; a batch still short is completed with dropped groups (zero advantage). Logged:
    ``sampling/frac_filtered``, ``sampling/extra_rounds``, ``sampling/effective_batch``.
    """

    enabled: bool = False
    min_std: float = 1.0e-6
    max_rounds: int = 2


@dataclass
class Sampling:
    """Which prompts GRPO trains on (``rl.sampling``); SFT is not affected.

    ``balance``: draw GRPO prompts by answer kind in these proportions (normalised), e.g.
    ``{no_target: 0.5, single: 0.3, multi: 0.2}``: ``no_target`` (no GT mask), ``single`` (one), ``multi``
    (several). Each prompt's generations stay together, as in TRL's sampler; a kind with fewer rows than its
    share is cycled (oversampled) within the epoch. None: TRL's uniform shuffle.
    """

    balance: dict[str, float] | None = None
    dynamic: Dynamic = field(default_factory=Dynamic)


@dataclass
class Recipe:
    run: Run = field(default_factory=Run)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    rewards: list[Reward] = field(default_factory=list)
    reward_runtime: RewardRuntime = field(default_factory=RewardRuntime)
    sft: Sft = field(default_factory=Sft)
    grpo: dict[str, Any] = field(default_factory=dict)  # GRPOConfig fields
    monitor: Monitor = field(default_factory=Monitor)
    sampling: Sampling = field(default_factory=Sampling)


# Recipe settings added after runs and experiment cells were first written (dotted paths), with their defaults: a
# saved recipe without one ran with that value (resume checks and experiment cell keys read it so).
def later_settings() -> dict:
    return {"sampling.balance": None, "sampling.dynamic": dataclasses.asdict(Dynamic()),
            "reward_runtime.isolation": RewardRuntime.isolation}  # fmt: skip


def with_later_defaults(saved: dict) -> dict:
    """A saved recipe dict with every later setting it lacks filled in at its default (a new dict)."""
    import copy

    out = copy.deepcopy(saved)
    for path, default in later_settings().items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node.setdefault(leaf, copy.deepcopy(default))
    return out


def without_later_defaults(d: dict) -> dict:
    """``d`` with every later setting that is at its default removed (a new dict): keys of results made before
    the setting existed stay valid."""
    import copy

    out = copy.deepcopy(d)
    for path, default in later_settings().items():
        *parents, leaf = path.split(".")
        chain = [out]
        for p in parents:
            chain.append(chain[-1].get(p) if isinstance(chain[-1], dict) else None)
        if isinstance(chain[-1], dict) and chain[-1].get(leaf, object()) == default:
            del chain[-1][leaf]
            for parent, name, node in reversed(list(zip(chain, parents, chain[1:]))):
                if node == {}:  # a section that held only later settings did not exist then
                    del parent[name]
    return out


# ---------------------------------------------------------------- loading


def load_recipe(path: str | os.PathLike, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Read, override and validate a recipe. Raises ``RecipeError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["recipe file not found"])
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # a YAML syntax error: report it in the same format
        raise RecipeError(str(path), [f"not valid YAML: {e}"]) from None
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: expected key=value")
            continue
        try:  # omegaconf's YAML typing of the value (3 -> int, true -> bool, [a,b] -> list, no -> "no")
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
            OmegaConf.update(raw, key, parsed, merge=True, force_add=True)
        except Exception as e:
            problems.append(f"override {item!r}: {e}")
    if problems:
        raise RecipeError(str(path), problems)
    try:
        data = OmegaConf.to_container(raw, resolve=True) or {}
    except Exception as e:  # an interpolation that does not resolve
        raise RecipeError(str(path), [f"cannot resolve: {e}"]) from None
    return recipe_from_dict(data, source=str(path), check_files=check_files)


def recipe_from_dict(data: dict, source: str = "<recipe>", check_files: bool = True) -> Recipe:
    """Validate a plain dict as a recipe. Relative paths are relative to the working directory."""
    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems)
    if recipe is not None:
        _check_semantics(recipe, problems, check_files)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_resolved(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the fully resolved recipe (defaults included) next to the run's outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(to_dict(recipe)), path)


# ---------------------------------------------------------------- schema walk


def _build(cls, data, where: str, problems: list[str]):
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
            problems.append(f"{at}: unknown key{_suggest(key, names)}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            built = _build(hint, value, at, problems)
            if built is not None:
                kwargs[key] = built
        elif _origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                problems.append(f"{at}: expected a list, got {type(value).__name__}")
                continue
            item_cls = typing.get_args(hint)[0]
            items = [_build(item_cls, v, f"{at}[{i}]", problems) for i, v in enumerate(value)]
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


def _suggest(key, names) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(names))})"


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
            problems.append(f"{at}: not a {config_cls.__name__} field{_suggest(key, list(hints))}")
        elif not _type_ok(value, hints[key]):
            problems.append(f"{at}: expected {_type_name(hints[key])}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------- semantics


def _check_semantics(r: Recipe, problems: list[str], check_files: bool) -> None:
    from trl import GRPOConfig, SFTConfig  # config dataclasses only; cheap next to a model load

    before = len(problems)
    _check_passthrough(r.grpo, GRPOConfig, "grpo", problems, OWNED_BY_RUN)
    if len(problems) == before:  # TRL's own checks only once every field is known and well typed
        _check_trl_builds(GRPOConfig, r.grpo, "grpo", problems, r.run.dist_timeout_s)
    before = len(problems)
    _check_passthrough(r.sft.args, SFTConfig, "sft.args", problems, OWNED_BY_RUN)
    if len(problems) == before and r.sft.enabled:
        from rl.sft import SFT_DEFAULTS

        _check_trl_builds(SFTConfig, {**SFT_DEFAULTS, **r.sft.args}, "sft.args", problems, r.run.dist_timeout_s)
    _one_of(r.model.dtype, DTYPES, "model.dtype", problems)
    _one_of(r.model.finetune, FINETUNE, "model.finetune", problems)
    _one_of(r.model.tiny.arch, ("qwen2_5_vl", "qwen3_vl"), "model.tiny.arch", problems)
    _one_of(r.model.tiny.vocab, ("tiny", "qwen"), "model.tiny.vocab", problems)
    t = r.model.tiny
    if t.head_dim < 2 or t.head_dim % 2 or t.hidden_size % t.head_dim or t.hidden_size // t.head_dim < 2:
        problems.append(f"model.tiny.head_dim: {t.head_dim} must be even and split hidden_size {t.hidden_size} "
                        "into at least 2 heads")  # fmt: skip
    _one_of(r.data.env, ENVS, "data.env", problems)
    for name in r.run.report_to:
        _one_of(name, REPORTERS, "run.report_to", problems)
    if not r.rewards:
        problems.append("rewards: at least one reward is required")
    for i, rw in enumerate(r.rewards):
        _check_reward(rw, f"rewards[{i}]", problems)
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
                        "(every QwenVL-SAMTok policy); use grpo.use_vllm=true for faster rollouts")  # fmt: skip
    weights = r.grpo.get("reward_weights")
    if weights is not None:
        problems.append("grpo.reward_weights: set each reward's weight under rewards[] instead")
    if r.data.env in ("gres", "gcg") and not r.data.train:
        problems.append(f"data.train: required for env {r.data.env!r} (a prepared dataset from `samtok-rl prepare`)")
    _check_monitor(r, problems)
    _check_sampling(r.sampling, problems)
    if check_files:
        _check_local_path(r.model.path, "model.path", problems)
        if r.data.mask_tokenizer not in ("tiny", "random") and not Path(r.data.mask_tokenizer).is_dir():
            problems.append(f"data.mask_tokenizer: {r.data.mask_tokenizer!r} is not tiny, random or a directory")
        for key in ("train", "eval", "image_root"):
            value = getattr(r.data, key)
            if value is not None and not Path(value).exists():
                problems.append(f"data.{key}: {value!r} does not exist")


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
                        "correction: keep grpo.vllm_importance_sampling_correction on")  # fmt: skip
    if m.eval_steps <= 0 and m.image_steps <= 0:
        return
    if r.data.env in ("gres", "gcg") and not r.data.eval:
        problems.append(f"monitor: env {r.data.env!r} needs held-out rows to evaluate on: set data.eval (a prepared "
                        "dataset), or monitor.eval_steps=0 monitor.image_steps=0")  # fmt: skip


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
            problems.append(f"sampling.balance.{kind}: unknown answer kind{_suggest(kind, list(ANSWER_KINDS))}")
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
        from rl.distributed import init_process_group

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
    accum = grpo.get("gradient_accumulation_steps", 1)
    block = (grpo.get("steps_per_generation") or accum) * grpo.get("num_iterations", 1)
    save = grpo.get("save_steps", 500)
    if grpo.get("save_strategy", "steps") == "steps" and isinstance(save, int) and isinstance(block, int) and block > 1:
        if (save * accum) % block:
            problems.append(f"grpo.save_steps: {save} x gradient_accumulation_steps {accum} must be a multiple of "
                            f"steps_per_generation x num_iterations ({block}), or a checkpoint would fall inside a "
                            "generation block and could not be resumed exactly")  # fmt: skip


def _one_of(value, allowed, where, problems):
    if value not in allowed:
        problems.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")


def _check_local_path(path: str, where: str, problems: list[str]) -> None:
    """A hub id (``owner/name``) is not checked: validation never needs the network."""
    if path == TINY:
        return
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).exists()
    if looks_local and not Path(path).expanduser().exists():
        problems.append(f"{where}: local path {path!r} does not exist")


def _check_reward(rw: Reward, where: str, problems: list[str]) -> None:
    """Resolve the name and bind the params without building heavy rewards (mask_iou loads a model)."""
    if not rw.name:
        problems.append(f"{where}.name: required")
        return
    try:
        from rewards import registry

        registry.check_params(rw.name, rw.params)
    except Exception as e:  # the registry's message names the valid rewards or the bad parameter
        problems.append(f"{where}: {e}")
