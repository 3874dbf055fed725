"""``samtok-rl experiment``: every cell of a plan over seeds (``rl.experiments.experiment``), then its report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rl.cli.errors import bad_input


def command(plan: str, out: str, overrides: list[str] = (), seeds: list[int] = (0, 1, 2),
            variants: list[str] | None = None) -> int:
    """Every cell of ``plan`` (only ``variants``, if given) for ``seeds`` in ``out``, then the report. The exit
    status."""
    import torch

    from rl.experiments.experiment import ExperimentError, run_experiment
    from rl.experiments.plan import PlanError, load_plan
    from rl.grpo.preemption import Preempted, Stopped, sigterm_stops

    path = plan
    try:
        plan = load_plan(path, overrides)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if variants:
        unknown = [v for v in variants if v not in plan.variants]
        if unknown:
            print(f"error: {path}: no variant {', '.join(map(repr, unknown))}; the plan has "
                  f"{', '.join(plan.variants)}", file=sys.stderr)
            return 2
        plan.variants = {v: o for v, o in plan.variants.items() if v in variants}
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # as the demo: tiny matrices on a small CPU gain nothing from more threads
    try:
        with sigterm_stops():
            run_experiment(plan, list(seeds), out)
    except (ExperimentError, FileNotFoundError) as e:  # FileNotFoundError: e.g. the tiny tokenizer's weights
        return bad_input("error", e)
    except (Preempted, Stopped) as e:
        saved = f"; the GRPO cell under way saved {e.checkpoint} and resumes from it" if isinstance(e, Preempted) else ""
        print(f"stopped on SIGTERM: the finished cells are kept in {out}{saved}; run the same command again to "
              "continue", file=sys.stderr)
        return 0
    print((Path(out) / "report.md").read_text(), end="")
    return 0
