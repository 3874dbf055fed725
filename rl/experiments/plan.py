"""Experiment plans (``recipes/experiments/*.yaml``): a task, a base recipe, evaluation settings and named variants
(lists of recipe overrides), read and validated with every variant's recipe before anything runs; problems are
raised together as one ``PlanError``. Command-line overrides apply to every variant, last (they win)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from envs import TASKS, generated_env, get_task
from rl.recipe.config import RecipeError, load_recipe
from rl.recipe.schema import ProblemsError, suggest

ROOT = Path(__file__).resolve().parents[2]
PLAN_KEYS = ("task", "recipe", "eval", "variants")
EVAL_DEFAULTS = {"split": "test", "samples": 200, "max_new_tokens": None}  # None: the demo's length for the task
EVAL_SPLITS = ("val", "test")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PlanError(ProblemsError):
    """Everything wrong with an experiment plan, one problem per line."""

    kind = "experiment plan"


@dataclass
class Plan:
    source: str
    task: str
    recipe: Path
    eval: dict
    variants: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)  # command line, applied to every variant
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- plan


def load_plan(path: str | os.PathLike, overrides: list[str] = ()) -> Plan:
    """Read and validate a plan and every variant's recipe; raises ``PlanError`` listing every problem."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PlanError(str(path), ["plan file not found"])
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise PlanError(str(path), [f"not valid YAML (quote overrides that hold ': '): {e}"]) from None
    if not isinstance(raw, dict):
        raise PlanError(str(path), [f"expected a mapping, got {type(raw).__name__}"])
    problems = [f"{k}: unknown key{suggest(k, PLAN_KEYS, keep_order=True)}" for k in raw if k not in PLAN_KEYS]
    task = _plan_task(raw, problems)
    recipe = _plan_recipe(raw, task, path, problems)
    evals = _plan_eval(raw.get("eval") or {}, task, problems)
    variants = _plan_variants(raw.get("variants"), problems)
    plan = Plan(str(path), task, recipe, evals, variants, list(overrides))
    if recipe is not None and task is not None:  # a bad eval: or variant name need not hide recipe problems
        problems += _recipe_problems(plan)
    if problems:
        raise PlanError(str(path), problems)
    plan.warnings = _shadowed(plan)
    return plan


def _plan_task(raw: dict, problems: list[str]) -> str | None:
    task = raw.get("task")
    choices = [t for t in TASKS if generated_env(t)]  # experiments train and evaluate in a generated world
    if task not in choices:
        problems.append(f"task: {task!r} is not one of {', '.join(choices)}")
        return None
    return task


def _plan_recipe(raw: dict, task: str | None, plan_path: Path, problems: list[str]) -> Path | None:
    name = raw.get("recipe", f"recipes/{generated_env(task)}.yaml" if task else None)
    if name is None:
        return None
    if not isinstance(name, str):
        problems.append(f"recipe: expected a path, got {name!r}")
        return None
    # The plan's folder first (a plan next to its recipe), then the repository root (shipped plans).
    for base in (plan_path.parent, ROOT):
        if (base / name).is_file():
            return (base / name).resolve()
    problems.append(f"recipe: {name!r} found neither next to the plan nor in {ROOT}")
    return None


def _plan_eval(raw, task: str | None, problems: list[str]) -> dict:
    if not isinstance(raw, dict):
        problems.append(f"eval: expected a mapping, got {type(raw).__name__}")
        return dict(EVAL_DEFAULTS)
    problems += [f"eval.{k}: unknown key{suggest(k, EVAL_DEFAULTS, keep_order=True)}" for k in raw if k not in EVAL_DEFAULTS]
    out = {**EVAL_DEFAULTS, **{k: v for k, v in raw.items() if k in EVAL_DEFAULTS}}
    if out["max_new_tokens"] is None:  # so that the demo and the experiment report the same thing
        out["max_new_tokens"] = get_task(task).max_new_tokens if task else 96
    if out["split"] not in EVAL_SPLITS:
        problems.append(f"eval.split: {out['split']!r} is not one of {', '.join(EVAL_SPLITS)} (held-out splits)")
    for key in ("samples", "max_new_tokens"):
        value = out[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"eval.{key}: expected an integer >= 1, got {value!r}")
    return out


def _plan_variants(raw, problems: list[str]) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or not raw:
        problems.append("variants: expected a non-empty mapping of name -> list of key=value overrides")
        return {}
    out = {}
    for name, overrides in raw.items():
        name = str(name)
        if not VARIANT_NAME.match(name) or name.lower().startswith("sft"):
            problems.append(f"variants.{name}: a variant name is a folder name ([A-Za-z0-9_.-]) not starting with 'sft'")
        overrides = [] if overrides is None else overrides
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            problems.append(f"variants.{name}: expected a list of key=value strings, got {overrides!r}")
            continue
        out[name] = overrides
    return out


def _recipe_problems(plan: Plan) -> list[str]:
    """Every variant's resolved recipe, checked the way ``samtok-rl train`` checks one, plus the experiment's
    own rules. Problems of the base recipe or the command line are reported once, not once per variant."""
    common = _recipe_errors(plan, [])
    where = "recipe + command line" if plan.overrides else "recipe"
    problems = [f"{where}: {p}" for p in common]
    for name, overrides in plan.variants.items():
        problems += [f"variants.{name}: {p}" for p in _recipe_errors(plan, overrides) if p not in common]
    return problems


def _recipe_errors(plan: Plan, variant_overrides: list[str]) -> list[str]:
    from rl.grpo.train import preflight

    try:
        recipe = load_recipe(plan.recipe, [*variant_overrides, *plan.overrides])
    except RecipeError as e:
        return e.problems
    problems = [p for p in [preflight(recipe)] if p]
    if recipe.data.env != generated_env(plan.task):
        problems.append(f"data.env: {recipe.data.env!r}; a {plan.task} experiment evaluates on the generated "
                        f"{generated_env(plan.task)!r} world")
    if not recipe.sft.enabled:
        problems.append("sft.enabled: must be true; every RL policy is compared with the SFT policy it starts from")
    return problems


def _shadowed(plan: Plan) -> list[str]:
    """Command-line overrides that replace a variant's own setting: that variant no longer differs there."""
    cli = {o.partition("=")[0] for o in plan.overrides}
    out = []
    for name, overrides in plan.variants.items():
        for o in overrides:
            key = o.partition("=")[0]
            if any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in cli):
                out.append(f"variant {name!r}: {key} is overridden by the command line")
    return out


# ---------------------------------------------------------------- cells
