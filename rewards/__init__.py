"""Reward functions for GRPO on mask-writing policies, in TRL's contract:
``fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]``.

* ``rewards.answer_match``: the paper's textual answer-matching reward (no decoding), pure functions
  ``score``, ``no_repeat``, ``gcg_scores``.
* ``rewards.parsing``: the completion-parsing helpers every reward shares (text of a completion, the strict
  mask-group grammar, GCG phrases, GT answers parsed once).
* ``rewards.latent``: ``latent_match``, partial credit from the tokenizer's codebook latents (no decoding).
* ``rewards.isolation``: rewards in worker processes (``reward_runtime.isolation: process``).
* ``rewards.format``: format rewards (well-formed mask groups, GRES answer format, GCG format).
* ``rewards.iou``: IoU from SAMTok decoding (``mask_iou``; imports torch when built).
* ``rewards.registry``: ``get_reward(spec, **params)`` for built-in names, ``module:function`` and
  ``file.py:function``; ``build_rewards`` for a recipe's list.
* ``rewards.runtime``: ``wrap_rewards`` for the trainer (raw-text decoding, failures, timeouts, logging).

Importing this package needs neither torch nor a GPU.
"""

# ``rewards.answer_match`` stays the module (its pure functions are public API); the reward factory is
# ``rewards.answer_match.answer_match`` or ``get_reward("answer_match")``.
from rewards.answer_match import gcg_scores, no_repeat, score
from rewards.registry import build_rewards, builtin_names, get_reward
from rewards.runtime import RawText, RewardFailureError, SafeReward, decode_raw, wrap_rewards

__all__ = [
    "RawText",
    "RewardFailureError",
    "SafeReward",
    "build_rewards",
    "builtin_names",
    "decode_raw",
    "gcg_scores",
    "get_reward",
    "no_repeat",
    "score",
    "wrap_rewards",
]
