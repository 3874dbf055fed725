"""The seam with TRL (and transformers' Trainer) by name: every private hook ``SamtokGRPOTrainer`` overrides, every
private attribute and helper the project reads or writes. A TRL upgrade that renames or reshapes one fails here,
naming it, instead of deep inside a run, or silently: an override of a hook TRL no longer calls is never called."""

import inspect

import pytest
import trl.trainer.grpo_trainer as grpo_module
import trl.trainer.utils as trl_utils
from trl import GRPOTrainer

from rl.trainer import SamtokGRPOTrainer

# Private methods of SamtokGRPOTrainer that are the project's own, not overrides of TRL's.
OWN = {"_rewards_and_counts", "_log_reward_by_kind", "_out_of_memory", "_save_rows"}

# Private state of GRPOTrainer the project reads or writes (where, and why it cannot go through a public API).
ATTRIBUTES = {
    "_metrics": "timing_s/*, reward_by_kind/*, dynamic sampling and unscorable counts are logged through TRL's metrics",
    "_step": "rl.trainer._load_rng_state restarts TRL's micro-step count so that a resumed run generates where it did",
    "_buffered_inputs": "rl.trainer._out_of_memory drops the rollouts of a failed generation block",
    "_logs": "completion logging adds the row id and raw text beside TRL's logged prompts and completions",
    "_tokenizer": "dynamic sampling pads the groups it keeps with TRL's tokenizer",
}

HELPERS = {  # trl.trainer.utils names: used by rl.sampling (dynamic sampling, samplers) and rl.lm_head (patched)
    "RepeatSampler": ["self", "data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed"],
    "pad": None, "split_pixel_values_by_grid": None, "unsplit_pixel_values_by_grid": None,
    "_ChunkedLogProbFunction": None, "_use_triton": None,
}


def _overrides():
    return sorted(name for name, fn in vars(SamtokGRPOTrainer).items()
                  if callable(fn) and name.startswith("_") and not name.startswith("__") and name not in OWN)


def _names(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_the_overrides_are_the_ones_this_contract_lists():
    # A new override must be added here on purpose (and to OWN if it is not TRL's).
    assert _overrides() == sorted([
        "_calculate_rewards", "_generate", "_generate_and_score_completions", "_get_grad_norm",
        "_get_output_dir", "_get_per_token_logps_and_entropies", "_get_train_sampler", "_load_from_checkpoint",
        "_load_rng_state", "_save_checkpoint"])


@pytest.mark.parametrize("name", _overrides())
def test_every_overridden_private_hook_still_exists_with_the_same_parameters(name):
    base = getattr(GRPOTrainer, name, None)
    assert base is not None, (f"TRL's GRPOTrainer has no {name} any more: SamtokGRPOTrainer.{name} would never be "
                              "called; find its new name in TRL and move the override")
    ours = _names(getattr(SamtokGRPOTrainer, name))
    sig = inspect.signature(getattr(SamtokGRPOTrainer, name)).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in sig):  # (*args, **kwargs): passes everything through
        return
    assert _names(base) == ours, f"{name}: TRL's parameters are {_names(base)}, the override takes {ours}"


@pytest.mark.parametrize("attribute", sorted(ATTRIBUTES))
def test_the_private_state_the_project_touches_is_still_there(attribute):
    source = inspect.getsource(grpo_module)
    assert f"self.{attribute}" in source, (f"GRPOTrainer no longer has self.{attribute}, which the project relies on: "
                                           f"{ATTRIBUTES[attribute]}")


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_the_trl_helpers_the_project_uses_still_exist(name):
    assert hasattr(trl_utils, name), f"trl.trainer.utils.{name} is gone"
    if HELPERS[name] is not None:
        assert _names(getattr(trl_utils, name).__init__) == HELPERS[name], f"trl.trainer.utils.{name} changed"
