"""``samtok-rl demo``: the default run (``rl.experiments.demo``) in a fresh folder, its report printed."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rl.cli.errors import bad_input
from rl.experiments.demo import RECIPES  # the default recipe of each task, and the parser's --task choices


def command(overrides: list[str] = (), task: str = "gres", recipe: str | None = None, out: str = "runs/demo",
            test_samples: int = 200) -> int:
    """SFT then GRPO with ``recipe`` (default: the task's shapes recipe) in ``out`` (replaced), and the SFT-vs-RL
    report on ``test_samples`` held-out samples. The exit status."""
    import shutil

    import torch

    from rl.experiments.demo import run_demo
    from rl.grpo.preemption import Preempted, Stopped, sigterm_stops
    from rl.recipe.config import RecipeError, load_recipe

    start = time.perf_counter()
    try:
        overrides = [*overrides, f"run.output_dir={out}", "run.resume=false"]
        loaded = load_recipe(recipe or RECIPES[task], overrides)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Tiny matrices gain nothing from a second thread, and a busy second core makes OpenMP spin-waits
    # very slow; one thread is the robust choice on a 2-core machine.
    torch.set_num_threads(1)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    try:
        with sigterm_stops():
            report = run_demo(loaded, out, test_samples, start, task)
    except FileNotFoundError as e:  # e.g. the committed tiny mask-tokenizer weights are missing
        return bad_input("error", e)
    except (Preempted, Stopped) as e:
        kept = (f"the GRPO stage saved {e.checkpoint} (samtok-rl train {out / 'recipe.yaml'} run.resume=true "
                "continues it)" if isinstance(e, Preempted) else "nothing is kept")
        print(f"stopped on SIGTERM: {kept}; the demo starts over with `samtok-rl demo` (it replaces {out})",
              file=sys.stderr)
        return 0
    print(report)
    return 0
