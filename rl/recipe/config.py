"""Recipes: read a YAML file, apply ``key=value`` overrides, validate, save the resolved recipe of a run.

``load_recipe(path, overrides)`` reads the YAML with omegaconf, applies ``key=value`` overrides, and checks
the whole tree at once: unknown keys, wrong types, missing local files and unknown reward names are
collected and raised together as one ``RecipeError``, so a user fixes a recipe in one round instead of one
crash per mistake. ``grpo:`` and ``sft.args:`` are passed through to TRL's ``GRPOConfig``/``SFTConfig`` and
are checked against those dataclasses' own fields and annotations. The schema itself is ``rl.recipe.schema`` (its
names are importable from here too); the checks are ``rl.recipe.checks``.

Nothing here imports torch, TRL's trainers or DeepSpeed at module level: ``--dry-run`` must be quick.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from omegaconf import OmegaConf

from envs import ALIASES, TASK_OF, canonical_name, task_of
from rl.recipe.checks import build, check_semantics
from rl.recipe.schema import (  # noqa: F401  (re-exported: rl.recipe.config is where recipes and their parts are imported from)
    ANSWER_KINDS,
    DTYPES,
    FINETUNE,
    OWNED_BY_RUN,
    REPORTERS,
    TINY,
    Data,
    Dynamic,
    Lora,
    Model,
    Monitor,
    Recipe,
    RecipeError,
    Reward,
    RewardRuntime,
    Rollout,
    Run,
    Sampling,
    Sft,
    Shapes,
    TinyModel,
)


# Recipe settings added after runs and experiment cells were first written (dotted paths), with their defaults: a
# saved recipe without one ran with that value (resume checks and experiment cell keys read it so).
def later_settings() -> dict:
    return {"sampling.balance": None, "sampling.stratify": False, "sampling.dynamic": dataclasses.asdict(Dynamic()),
            "reward_runtime.isolation": RewardRuntime.isolation, "rollout.compile": Rollout.compile}


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


# The data.env names of runs and experiment cells made before the environments were renamed (envs.ALIASES):
# their hashes were made with these spellings, so keys spell the environments so still.
KEYED_ENV_NAMES = {new: old for old, new in ALIASES.items()}


def saved_as_current(saved: dict) -> dict:
    """A saved recipe dict as today's schema reads it (a new dict): every later setting it lacks at its
    default, an old environment name renamed."""
    out = with_later_defaults(saved)
    if isinstance(out.get("data"), dict) and isinstance(out["data"].get("env"), str):
        out["data"]["env"] = canonical_name(out["data"]["env"], warn=False)
    return out


def key_form(d: dict) -> dict:
    """A recipe dict as results' keys hash it (a new dict): later settings at their defaults dropped, the
    environment under the name it had when keys were first made (``KEYED_ENV_NAMES``)."""
    out = without_later_defaults(d)
    if isinstance(out.get("data"), dict) and out["data"].get("env") in KEYED_ENV_NAMES:
        out["data"]["env"] = KEYED_ENV_NAMES[out["data"]["env"]]
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
    """Validate a plain dict as a recipe. Relative paths are relative to the working directory.

    An old environment name in ``data.env`` is renamed with a warning; a recipe without a ``rewards`` key trains
    with its task's recommended rewards (``envs.task.Task.recommended_rewards``)."""
    problems: list[str] = []
    data = dict(data)
    section = data["data"] if isinstance(data.get("data"), dict) else {}  # not a dict: build reports it
    if isinstance(section.get("env"), str):
        section = data["data"] = {**section, "env": canonical_name(section["env"], f"{source}: data.env")}
    env = section.get("env", Data.env)
    if "rewards" not in data and env in TASK_OF:
        data["rewards"] = [{"name": name} for name in task_of(env).recommended_rewards]
    recipe = build(Recipe, data, "", problems)
    if recipe is not None:
        check_semantics(recipe, problems, check_files)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_resolved(recipe: Recipe, path: str | os.PathLike) -> None:
    """Write the fully resolved recipe (defaults included) next to the run's outputs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(to_dict(recipe)), path)
