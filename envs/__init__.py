"""Environments: data + prompts + answers + metrics + recommended rewards for GRES and GCG.

``get_env(name, **options)`` builds one by name:

* ``shapes_gres`` / ``shapes_gcg``: the synthetic shapes world (``envs.shapes``), the CPU default;
  options ``train_size``, ``eval_size``, ``seed``, ``image_size``.
* ``grefcoco``: gRefCOCO (``envs.gres``); options ``root`` (folder with the refs and instances.json),
  ``image_root`` (COCO train2014), ``refs_name``, ``seed``.
* ``grandf``: GranD-f (``envs.gcg``); options ``root`` (GLaMM's ``GranDf`` folder), ``seed``.

Rows are built with ``envs.base.build_rows`` (or ``samtok-rl prepare``); metrics live in ``envs.metrics``.
"""

from __future__ import annotations

from envs.base import BadRowError, BadRows, Environment

__all__ = ["BadRowError", "BadRows", "ENVIRONMENTS", "Environment", "get_env"]


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


def get_env(name: str, **options) -> Environment:
    """The environment called ``name``; unknown names and bad options fail with the valid choices."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    try:
        return ENVIRONMENTS[name](**options)
    except TypeError as e:
        raise ValueError(f"environment {name!r}: bad options {sorted(options)}: {e}") from None
