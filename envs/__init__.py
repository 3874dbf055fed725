"""Environments: data + prompts + answers + metrics + recommended rewards for GRES and GCG.

``get_env(name, **options)`` builds one by name:

* ``shapes_gres`` / ``shapes_gcg``: the synthetic shapes world (``envs.shapes``), the CPU default;
  options ``train_size``, ``eval_size``, ``seed``, ``image_size``.
* ``grefcoco``: gRefCOCO (``envs.gres``); options ``root`` (folder with the refs and instances.json),
  ``image_root`` (COCO train2014), ``refs_name``, ``seed``.
* ``grandf``: GranD-f (``envs.gcg``); options ``root`` (GLaMM's ``GranDf`` folder), ``seed``.

These four names are the only ones, in recipes (``data.env``), ``prepare``, ``eval`` and ``experiment``.
Recipes written before that used ``shapes``, ``gres`` and ``gcg`` (``ALIASES``): ``canonical_name`` accepts
them with a warning. Rows are built with ``envs.base.build_rows`` (or ``samtok-rl prepare``); metrics live in
``envs.metrics``; ``task_of(name)`` is the environment's ``envs.task.Task`` (metric, answer format, report wording,
and the rewards a recipe that lists none trains with).

A new environment is one ``register_env`` call here (and its loader module); ``generated`` marks a world drawn on
the fly, which needs no ``samtok-rl prepare`` and takes the options ``train_size``, ``eval_size``, ``seed`` and
``image_size``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from envs.base import BadRowError, BadRows, Environment
from envs.task import TASKS, Task, get_task, register_task

__all__ = ["ALIASES", "BadRowError", "BadRows", "ENVIRONMENTS", "Environment", "GENERATED", "TASKS", "TASK_OF", "Task",
           "canonical_name", "generated_env", "get_env", "get_task", "is_generated", "register_env", "register_task", "task_of"]

ENVIRONMENTS: dict[str, Callable[..., Environment]] = {}  # name -> factory(**options)
TASK_OF: dict[str, str] = {}  # name -> task name
GENERATED: set[str] = set()  # drawn on the fly: no data.train, held-out splits built in


def register_env(name: str, factory: Callable[..., Environment], task: str, generated: bool = False) -> None:
    get_task(task)  # an unknown task fails here, with the valid ones
    ENVIRONMENTS[name] = factory
    TASK_OF[name] = task
    if generated:
        GENERATED.add(name)


def task_of(name: str) -> Task:
    """The task of the environment called ``name`` (or an old alias of it)."""
    name = canonical_name(name, warn=False)
    if name not in TASK_OF:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    return get_task(TASK_OF[name])


def is_generated(name: str) -> bool:
    return canonical_name(name, warn=False) in GENERATED


def generated_env(task: str) -> str | None:
    """The first generated world registered for ``task``: where the demo and experiments train and evaluate
    (its recipe is ``recipes/<name>.yaml``). None if the task has none."""
    return next((n for n in ENVIRONMENTS if n in GENERATED and TASK_OF[n] == task), None)


def _shapes(task):
    def make(**options):
        from envs.shapes import shapes_env

        return shapes_env(task, **options)

    return make


def _grefcoco(**options):
    from envs.gres import grefcoco_env

    return grefcoco_env(**options)


def _grandf(**options):
    from envs.gcg import grandf_env

    return grandf_env(**options)


register_env("shapes_gres", _shapes("gres"), "gres", generated=True)
register_env("shapes_gcg", _shapes("gcg"), "gcg", generated=True)
register_env("grefcoco", _grefcoco, "gres")
register_env("grandf", _grandf, "gcg")
# The recipes' data.env names before every environment had one name; old recipes and run folders hold them.
ALIASES = {"shapes": "shapes_gres", "gres": "grefcoco", "gcg": "grandf"}


def canonical_name(name: str, where: str = "", warn: bool = True) -> str:
    """``name``, or the environment an old alias stands for (with a ``FutureWarning`` that names ``where``)."""
    new = ALIASES.get(name)
    if new is None:
        return name
    if warn:
        at = f"{where}: " if where else ""
        warnings.warn(f"{at}environment {name!r} is now called {new!r}; the old name still works but will be "
                      f"removed: write {new!r}", FutureWarning, stacklevel=2)
    return new


def get_env(name: str, **options) -> Environment:
    """The environment called ``name`` (or an old alias of it); unknown names and bad options fail with the
    valid choices."""
    name = canonical_name(name, "get_env")
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    try:
        return ENVIRONMENTS[name](**options)
    except TypeError as e:
        raise ValueError(f"environment {name!r}: bad options {sorted(options)}: {e}") from None
