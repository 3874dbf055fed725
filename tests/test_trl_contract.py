"""The seam with TRL (and transformers' Trainer) by name: every private hook ``rl.grpo.seam.SeamTrainer`` overrides,
every private method it calls and every private attribute and helper it reads or writes. A TRL upgrade that renames
or reshapes one fails here, naming it, instead of deep inside a run, or silently: an override of a hook TRL no
longer calls is never called. The lists are the seam module's own, so the contract and the code cannot drift."""

import inspect

import pytest
import trl.trainer.grpo_trainer as grpo_module
import trl.trainer.utils as trl_utils
from trl import GRPOTrainer

from rl.grpo import seam as trl_seam
from rl.grpo.seam import PRIVATE_CALLS, PRIVATE_HOOKS, PRIVATE_STATE, TRL_HELPERS, SeamTrainer
from rl.grpo.trainer import SamtokGRPOTrainer


def _private_methods(cls) -> list[str]:
    return sorted(name for name, fn in vars(cls).items()
                  if callable(fn) and name.startswith("_") and not name.startswith("__"))


def _names(fn) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_the_seam_overrides_exactly_the_hooks_it_lists():
    assert _private_methods(SeamTrainer) == sorted(PRIVATE_HOOKS)


def test_the_trainer_overrides_no_private_hook_of_trl_itself():
    # Every private override goes through the seam; the trainer's own private helpers are not TRL's names.
    overridden = [n for n in _private_methods(SamtokGRPOTrainer) if hasattr(GRPOTrainer, n)]
    assert overridden == [], f"override these through rl.grpo.seam instead: {overridden}"


@pytest.mark.parametrize("name", sorted(PRIVATE_HOOKS))
def test_every_overridden_private_hook_still_exists_with_the_same_parameters(name):
    base = getattr(GRPOTrainer, name, None)
    assert base is not None, (f"TRL's GRPOTrainer has no {name} any more: SeamTrainer.{name} would never be "
                              "called; find its new name in TRL and move the override")
    sig = inspect.signature(getattr(SeamTrainer, name)).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in sig):  # (*args, **kwargs): passes everything through
        return
    assert _names(base) == _names(getattr(SeamTrainer, name)), (
        f"{name}: TRL's parameters are {_names(base)}, the override takes {_names(getattr(SeamTrainer, name))}")


@pytest.mark.parametrize("name", sorted(PRIVATE_CALLS))
def test_the_private_methods_the_seam_calls_still_exist(name):
    assert callable(getattr(GRPOTrainer, name, None)), f"GRPOTrainer.{name} is gone: {PRIVATE_CALLS[name]}"


@pytest.mark.parametrize("attribute", sorted(PRIVATE_STATE))
def test_the_private_state_the_seam_touches_is_still_there(attribute):
    source = inspect.getsource(grpo_module)
    assert f"self.{attribute}" in source, (f"GRPOTrainer no longer has self.{attribute}, which the project relies on: "
                                           f"{PRIVATE_STATE[attribute]}")


@pytest.mark.parametrize("name", sorted(TRL_HELPERS))
def test_the_trl_helpers_the_seam_uses_still_exist(name):
    assert hasattr(trl_utils, name), f"trl.trainer.utils.{name} is gone"
    if TRL_HELPERS[name] is not None:
        assert _names(getattr(trl_utils, name).__init__) == TRL_HELPERS[name], f"trl.trainer.utils.{name} changed"


def test_no_other_module_touches_trl_or_transformers_internals():
    """Private names of TRL and transformers (``trl.trainer.utils``, ``._metrics``, ``_init_summary_writer`` ...) appear
    in the seam module only."""
    import re
    from pathlib import Path

    seam_file = Path(trl_seam.__file__).resolve()
    root = seam_file.parents[2]
    needles = re.compile(r"trl\.trainer\.utils|trl\.trainer\.grpo_trainer|transformers\.integrations\.deepspeed|"
                         r"_hf_deepspeed_config_weak_ref|_init_summary_writer|\._wandb\b|"
                         + "|".join(re.escape(f".{n}") + r"\b" for n in [*PRIVATE_STATE, *PRIVATE_CALLS, *PRIVATE_HOOKS]))
    offenders, modules = [], sorted((root / "rl").rglob("*.py"))
    assert len(modules) > 20  # the scan sees the package
    for path in modules:
        if path == seam_file:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if needles.search(code) and not code.strip().startswith(('"', "'", "``")):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == [], "move these into rl/grpo/seam.py:\n" + "\n".join(offenders)


def test_compiled_decoding_still_has_its_two_switches():
    # rollout.compile edits the generation config TRL's HF path generates with (self.generation_config, built with
    # disable_compile=True) and transformers' private switch for compiling off accelerators.
    from transformers.generation.configuration_utils import CompileConfig

    source = inspect.getsource(grpo_module)
    assert "self.generation_config = GenerationConfig(" in source and "disable_compile=True" in source, (
        "TRL no longer builds self.generation_config with disable_compile=True: revisit "
        "rl.grpo.seam.enable_compiled_decoding")
    assert "generation_config=self.generation_config" in source, "TRL's HF path no longer generates with it"
    assert hasattr(CompileConfig, "_compile_all_devices"), "transformers' CompileConfig lost _compile_all_devices"


def test_every_key_of_trls_generation_batch_has_a_known_layout():
    # rl.grpo.batch joins (dynamic sampling) and trims (every micro-step) TRL's generation batch by each key's
    # padding; a key TRL adds must be placed in one of its tables, or it would be cut or padded wrongly.
    import re

    from rl.grpo import batch

    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    literal = re.search(r"output = \{(.*?)\n        \}", source, re.S).group(1)
    keys = set(re.findall(r'"(\w+)":', literal)) | set(re.findall(r'output\["(\w+)"\] =', source))
    known = {*batch.LEFT_PADDED, *batch.PROMPT_THEN_COMPLETION, *batch.RIGHT_PADDED, *batch.OTHER_KEYS}
    assert "prompt_ids" in keys and "completion_mask" in keys  # the parse found TRL's dict
    assert keys - known == set(), f"place these in rl.grpo.batch's layout tables: {sorted(keys - known)}"
