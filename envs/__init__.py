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
``envs.metrics``; ``RECOMMENDED_REWARDS[TASK_OF[name]]`` are the rewards a recipe that lists none trains with.
"""

from __future__ import annotations

import warnings

from envs.base import RECOMMENDED_REWARDS, BadRowError, BadRows, Environment

__all__ = ["ALIASES", "BadRowError", "BadRows", "ENVIRONMENTS", "Environment", "RECOMMENDED_REWARDS", "TASK_OF",
           "canonical_name", "get_env"]


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


ENVIRONMENTS = {"shapes_gres": _shapes("gres"), "shapes_gcg": _shapes("gcg"), "grefcoco": _grefcoco, "grandf": _grandf}
TASK_OF = {"shapes_gres": "gres", "shapes_gcg": "gcg", "grefcoco": "gres", "grandf": "gcg"}
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
