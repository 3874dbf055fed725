"""``samtok-rl train``: validate a recipe; print it (``--dry-run``) or run SFT and GRPO (``rl.grpo.train``)."""

from __future__ import annotations

import logging
import sys

from rl.cli.errors import bad_input


def command(recipe: str, overrides: list[str] = (), dry_run: bool = False, no_file_checks: bool = False) -> int:
    """Validate ``recipe`` with ``overrides``; print it (``dry_run``) or train. The exit status."""
    from rl.grpo.data import DataError
    from rl.grpo.preemption import OutOfMemoryStop, Preempted
    from rl.grpo.train import preflight, run
    from rl.recipe.config import RecipeError, load_recipe

    path = recipe
    try:
        recipe = load_recipe(path, overrides, check_files=not (dry_run and no_file_checks))
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if dry_run:
        from omegaconf import OmegaConf

        from rl.recipe.config import to_dict

        print(OmegaConf.to_yaml(OmegaConf.create(to_dict(recipe))), end="")
        print(f"recipe OK: {path}", file=sys.stderr)
        return 0
    problem = preflight(recipe)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from rl.grpo.distributed import leave_process_group

    try:
        final = run(recipe)
    except (RecipeError, DataError, FileNotFoundError) as e:  # a resume that does not fit, bad data, missing files
        return bad_input("error", e)
    except Preempted as e:  # a clean stop: the scheduler must not count it as a failure
        print(f"preempted: {e}", file=sys.stderr)
        leave_process_group()
        return 0
    except OutOfMemoryStop as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"trained policy saved to {final}")
    leave_process_group()
    return 0
