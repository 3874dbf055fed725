"""``samtok-rl rewards probe``: what a recipe's rewards will teach GRPO, measured on sampled completions at step 0
(``rl.experiments.probe``)."""

from __future__ import annotations

import sys
from pathlib import Path

from rl.cli.errors import bad_input


def command(cmd: str, recipe: str, overrides: list[str] = (), policy: str | None = None, prompts: int = 64,
            reward: list[str] = (), completions: str | None = None, out: str | None = None,
            against: str | None = None) -> int:
    """``cmd`` is ``probe``: the exit status (2 for bad input, with nothing written)."""
    import torch
    import yaml

    from rl.experiments.plan import PlanError, load_plan
    from rl.experiments.probe import ProbeError, probe, probe_plan, ranking_table
    from rl.experiments.probe_analysis import table
    from rl.grpo.data import DataError
    from rl.recipe.config import RecipeError, load_recipe

    torch.set_num_threads(1)
    try:
        is_plan = "variants" in (yaml.safe_load(Path(recipe).read_text()) or {}) if Path(recipe).is_file() else False
    except yaml.YAMLError:
        is_plan = False
    if is_plan:
        try:
            plan = load_plan(recipe, list(overrides))
            where = Path(out or Path("runs") / "probe" / Path(recipe).stem)
            ranking = probe_plan(plan, policy, prompts, where, against)
        except (PlanError, ProbeError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(ranking_table(ranking))
        print(f"probe: wrote {where / 'ranking.json'} and each variant's probe.json")
        return 0
    try:
        loaded = load_recipe(recipe, list(overrides))
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        report = probe(loaded, policy, prompts, list(reward), completions, out)
    except (ProbeError, DataError, FileNotFoundError) as e:
        return bad_input("error", e)
    where = Path(out) if out else Path(loaded.run.output_dir) / "probe"
    print(table(report))
    print(f"probe: {report['completions']} completions in {report['groups']} groups, {report['seconds']:.1f} s; "
          f"wrote {where / 'probe.json'} and {where / 'probe.png'}")
    return 0
