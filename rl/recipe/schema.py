"""The recipe schema: typed dataclasses behind the YAML files in ``recipes/`` and the names they accept.

Loading and overrides are ``rl.recipe.config``'s (which re-exports these names); validation is ``rl.recipe.checks``'.
Nothing here imports torch or TRL: ``--dry-run`` must be quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TINY = "tiny"  # model.path value that builds the tiny policy from model.tiny instead of loading weights
FINETUNE = ("full", "lora")
DTYPES = ("float32", "bfloat16", "float16")
REPORTERS = ("tensorboard", "wandb", "none")
# GRPOConfig fields the recipe sets elsewhere (run.*), so that there is exactly one place for each.
OWNED_BY_RUN = {"output_dir", "seed", "report_to", "resume_from_checkpoint"}
# SFTConfig values of the warm start that sft.args overrides (rl.grpo.sft)
SFT_DEFAULTS = dict(
    max_steps=100, learning_rate=1e-3, per_device_train_batch_size=16, lr_scheduler_type="constant",
    logging_steps=10, save_strategy="no", gradient_checkpointing=False, dataloader_num_workers=0,
)


def between_generation_blocks(step: int, gradient_accumulation_steps: int, steps_per_generation: int,
                              num_iterations: int = 1) -> bool:
    """Whether the state after optimizer step ``step`` can be checkpointed and resumed exactly. TRL generates once per
    block of ``steps_per_generation x num_iterations`` micro-steps and keeps the block's rollouts in memory only, so a
    checkpoint inside a block would resume by generating anew. The one statement of that rule: recipe validation,
    the SIGTERM stop, the out-of-memory stop and resuming all ask here."""
    return (step * gradient_accumulation_steps) % (steps_per_generation * num_iterations) == 0


def looks_local(path: str) -> bool:
    """Whether a model path names a local folder rather than a hub id (``owner/name``): validation and loading tell a
    mistyped folder from a model to download this way, without the network."""
    from pathlib import Path

    return path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(path).exists()


def suggest(key, names, keep_order: bool = False) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``names``, else the valid names (sorted unless ``keep_order``)."""
    import difflib

    close = difflib.get_close_matches(str(key), list(names), n=1)
    listed = list(names) if keep_order else sorted(names)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(listed)})"


class ProblemsError(ValueError):
    """Everything wrong with a file of ``kind``, one problem per line (``problems``)."""

    kind = "file"

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the {self.kind}:\n{lines}")


class RecipeError(ProblemsError):
    """Everything wrong with a recipe, one problem per line."""

    kind = "recipe"


@dataclass
class TinyModel:
    """The tiny Qwen-VL policy built in-process (``rl.policy.model.build_tiny_policy``) when ``model.path: tiny``."""

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
    # Mask-token embedding rows stay trainable next to the adapters (see rl/policy/trainable.py for how, with tied
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
    env: str = "shapes_gres"
    # Prepared datasets (``samtok-rl prepare`` output) for grefcoco/grandf: a .jsonl/.parquet file or a
    # datasets.save_to_disk directory. Unused for the shapes envs, which are generated.
    train: str | None = None
    eval: str | None = None
    image_root: str | None = None
    # Encoder of the GT answers for the generated shapes envs: "tiny" (committed weights), "random"
    # (random-init tiny tokenizer, for tests: codes are arbitrary but deterministic) or a saved directory.
    mask_tokenizer: str = "tiny16"  # a tokenizer.load spec: tiny16 (the shapes recipes), tiny, random, a folder
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
    """Held-out evaluation during GRPO (``rl.grpo.monitor.HeldOutEval``): greedy, official metrics, logged with the rewards.

    ``eval_steps``: evaluate ``eval_samples`` held-out rows every N steps, and once at step 0 (0: off);
    ``image_steps``: a grid of the first ``image_samples`` greedy rollouts every N steps (0: off);
    ``max_new_tokens``: None is the task's ``max_new_tokens`` (``envs.task``) (GRES 96, GCG 128). Held-out rows: the
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
    # vLLM weight-sync self-check (``rl.grpo.monitor.VllmSyncCheck``): every N steps (0: off), the largest gap between
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
    """Which prompts GRPO trains on (``rl.grpo.sampling``); SFT is not affected.

    ``balance``: draw GRPO prompts by answer kind in these proportions (normalised), e.g.
    ``{no_target: 0.5, single: 0.3, multi: 0.2}``: ``no_target`` (no GT mask), ``single`` (one), ``multi``
    (several). Each prompt's generations stay together, as in TRL's sampler; a kind with fewer rows than its
    share is cycled (oversampled) within the epoch. None: TRL's uniform shuffle.

    ``stratify``: spread the answer kinds evenly through each epoch's prompt order (every stretch of prompts holds
    each kind in its share, within one prompt), instead of leaving it to the shuffle. The prompts and their shares
    are the same; what changes is that no stretch of steps draws more no-target prompts than another, so the mean
    training reward of a stretch moves with learning, not with the prompt mix (a no-target prompt scores far above
    a target one under every GRES reward). Needs the rows' ``no_target`` and ``masks`` columns.
    """

    balance: dict[str, float] | None = None
    stratify: bool = False
    dynamic: Dynamic = field(default_factory=Dynamic)


@dataclass
class Rollout:
    """How TRL's HF path generates the rollouts (vLLM is set up by ``grpo.use_vllm`` and ``grpo.vllm_*`` instead).

    ``compile``: compile HF ``generate``'s decoding step with ``torch.compile`` (transformers' default
    ``CompileConfig``: inductor, mode reduce-overhead, so CUDA graphs on a GPU). TRL switches compilation off in its
    generation config and takes no setting to switch it on; this does (``rl.grpo.seam.enable_compiled_decoding``).
    Needs ``grpo.cache_implementation: static``: transformers compiles only with a static KV cache. The first
    rollout compiles (about 20 s for the tiny policy on a CPU). Later ones reuse the graph while the cache keeps
    its length; transformers sizes it to the longest prompt so far and never shrinks it, so only a prompt longer
    than every earlier one can recompile. Greedy decoding gives the same tokens as without, image prompts included
    (``tests/test_rl_trainer.py``). Its speed on a GPU is measured by ``bench/rollout.py --qwen-3b --images``
    (``bench/gpu_check.sh``); on the tiny policy on a CPU it saves little.
    """

    compile: bool = False


@dataclass
class Recipe:
    run: Run = field(default_factory=Run)
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    rewards: list[Reward] = field(default_factory=list)  # a recipe without the key: the task's recommended_rewards
    reward_runtime: RewardRuntime = field(default_factory=RewardRuntime)
    sft: Sft = field(default_factory=Sft)
    grpo: dict[str, Any] = field(default_factory=dict)  # GRPOConfig fields
    monitor: Monitor = field(default_factory=Monitor)
    sampling: Sampling = field(default_factory=Sampling)
    rollout: Rollout = field(default_factory=Rollout)
