"""``samtok-rl experiment PLAN.yaml --seeds 0 1 2 --out DIR [key=value ...]``: variants x seeds of SFT then GRPO,
every policy evaluated on one held-out split, reported as mean ± std, with a warning wherever a gain is not what it
looks like.

A plan (``recipes/experiments/*.yaml``, read by ``rl.experiments.plan``) names a task, a base recipe, evaluation settings
and variants (lists of recipe overrides). The report and plot are ``rl.experiments.experiment_report``'s.

The work is split into cells, each one finished unit with its result in ``cell.json`` (written atomically),
so a re-run with the same ``--out`` skips what is done and a changed plan is refused instead of mixed in::

    DIR/seed<k>/sft_run/<sft key>/         SFT of seed k (run dir: sft/, sft-work/, recipe.yaml, cell.json)
    DIR/seed<k>/sft_run/<sft key>/eval/    its evaluation (metrics, predictions, grid.png, cell.json)
    DIR/seed<k>/<variant>/                 GRPO of the variant (an rl.grpo.train run dir; sft -> the shared SFT)
    DIR/seed<k>/<variant>/eval/            its evaluation
    DIR/summary.json, DIR/report.md, DIR/deltas.png

The SFT of a seed is shared by the variants whose SFT-relevant sections (model, data, sft) resolve to the
same values: the ``<sft key>`` is a hash of them and the seed, so a variant that changes ``sft.*`` gets its
own SFT instead of silently reusing another. In ``summary.json`` an SFT row's variant is ``sft`` when one
SFT serves every variant, else ``sft:<variants it serves, joined by +>``; ``sft_of`` maps each variant to
the SFT row it is compared with (same seed). ``wall_s`` is the training time of the stage that made the
policy (SFT or GRPO), measured in the run that finished it.

Only the generated shapes worlds are supported (``data.env`` shapes_gres / shapes_gcg): the held-out split is
generated from the base recipe, so every policy is scored on the same samples.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from envs import get_task
from rl.experiments.experiment_report import plot_deltas, write_report
from rl.experiments.plan import Plan
from rl.grpo import curves as curves_mod
from rl.recipe.config import Model, key_form, load_recipe, to_dict

SFT_SECTIONS = ("model", "data", "sft")
# rl.grpo.sft trains the whole policy with the vision tower: these apply from GRPO on (rl.policy.model.load_for_training).
GRPO_ONLY_MODEL_KEYS = ("freeze_vision", "finetune", "lora")
CELL_FILE = "cell.json"


class ExperimentError(RuntimeError):
    """An output directory that does not fit this plan (cells finished with other recipes)."""


@dataclass
class Cell:
    """One finished-or-not unit of work: an SFT of a seed, a GRPO run of a (variant, seed), or an evaluation."""

    kind: str  # "sft" | "rl" | "eval"
    label: str
    dir: Path
    key: str  # hash of every input: a finished cell with another key belongs to another plan
    recipe: object = None
    seed: int = 0
    variant: str = ""  # the summary row's variant (an SFT row's name for SFT cells and their evals)
    policy: str = ""  # "SFT" | "RL" for eval cells
    needs: Cell | None = None  # SFT cell of an RL cell; trained cell of an eval cell

    @property
    def file(self) -> Path:
        return self.dir / CELL_FILE

    def state(self) -> dict | None:
        return json.loads(self.file.read_text()) if self.file.is_file() else None

    def upstream(self):
        """When the cell this one builds on finished: a redone SFT (or RL) makes this cell's result stale."""
        state = self.needs.state() if self.needs else None
        return state.get("finished_at") if state else None

    def done(self) -> bool:
        state = self.state()
        if not (state and state.get("done")):
            return False
        return state.get("key") == self.key and state.get("upstream") == self.upstream()


def build_cells(plan: Plan, seeds: list[int], out: Path) -> list[Cell]:
    """Every cell of the experiment in run order: per seed, its SFT(s), the variants' GRPO, then evaluations."""
    data = key_form(to_dict(_base_recipe(plan)))["data"]
    split = {"eval": plan.eval, **{k: data[k] for k in ("env", "shapes", "mask_tokenizer")}}
    cells = []
    for seed in seeds:
        recipes = {v: _variant_recipe(plan, v, seed) for v in plan.variants}
        groups: dict[str, list[str]] = {}
        for v, r in recipes.items():
            groups.setdefault(sft_key(r), []).append(v)
        seed_dir = out / f"seed{seed}"
        # Any member's recipe trains the group's SFT: they agree on every section the SFT reads.
        sfts = {k: _sft_cell(recipes[vs[0]], seed_dir / "sft_run" / k, k, _sft_name(groups, k), seed)
                for k, vs in groups.items()}
        rls = {v: _rl_cell(r, seed_dir / v, sfts[sft_key(r)], v, seed) for v, r in recipes.items()}
        cells += [*sfts.values(), *rls.values()]
        cells += [_eval_cell(split, c, "SFT") for c in sfts.values()]
        cells += [_eval_cell(split, c, "RL") for c in rls.values()]
    return cells


def _sft_name(groups: dict[str, list[str]], key: str) -> str:
    return "sft" if len(groups) == 1 else "sft:" + "+".join(groups[key])


def sft_of(cells: list[Cell]) -> dict[str, str]:
    """Each variant's SFT row name (the same for every seed: the seed enters every SFT key alike)."""
    return {c.variant: c.needs.variant for c in cells if c.kind == "rl"}


def _variant_recipe(plan: Plan, variant: str, seed: int):
    return load_recipe(plan.recipe, [*plan.variants[variant], *plan.overrides, f"run.seed={seed}"])


def sft_key(recipe) -> str:
    """Hash of what the SFT policy depends on: model, data, sft sections and the seed. The model settings that
    only GRPO reads (freezing the vision tower, LoRA) count at their defaults, so that variants differing in them
    share one SFT (and a recipe that leaves them at the defaults keeps its key)."""
    d = key_form(to_dict(recipe))
    defaults = to_dict(Model())
    d["model"] = {**d["model"], **{k: defaults[k] for k in GRPO_ONLY_MODEL_KEYS}}
    return _hash({**{k: d[k] for k in SFT_SECTIONS}, "seed": recipe.run.seed})


def _recipe_key(recipe) -> str:
    d = to_dict(recipe)
    # output_dir, resume: set by the harness; dist_timeout_s: how long ranks wait, not what they train
    d["run"] = {k: v for k, v in d["run"].items() if k not in ("output_dir", "resume", "dist_timeout_s")}
    d.pop("monitor", None)  # held-out logging during GRPO: it leaves the trained policy as it is (RNG kept)
    return _hash(key_form(d))


def _sft_cell(recipe, run_dir: Path, key: str, name: str, seed: int) -> Cell:
    recipe = _with_run(recipe, run_dir, resume=False)
    return Cell("sft", f"SFT seed={seed}" + ("" if name == "sft" else f" ({name})"), run_dir, key, recipe, seed, name)


def _rl_cell(recipe, run_dir: Path, sft: Cell, variant: str, seed: int) -> Cell:
    # resume=true: a GRPO run stopped mid-way continues from its last complete checkpoint on the next try.
    recipe = _with_run(recipe, run_dir, resume=True)
    key = _hash({"recipe": _recipe_key(recipe), "sft": sft.key})
    return Cell("rl", f"RL variant={variant} seed={seed}", run_dir, key, recipe, seed, variant, needs=sft)


def _eval_cell(split: dict, trained: Cell, policy: str) -> Cell:
    key = _hash({"policy": trained.key, "split": split, "tokenizer": trained.recipe.data.mask_tokenizer})
    label = f"eval {policy} variant={trained.variant} seed={trained.seed}"
    return Cell("eval", label, trained.dir / "eval", key, trained.recipe, trained.seed, trained.variant, policy, trained)


def _with_run(recipe, run_dir: Path, resume: bool):
    import copy

    recipe = copy.deepcopy(recipe)
    recipe.run.output_dir, recipe.run.resume = str(run_dir), resume
    return recipe


def _base_recipe(plan: Plan):
    return load_recipe(plan.recipe, plan.overrides)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def check_cells(cells: list[Cell]) -> None:
    """Refuse an output directory whose cells were started or finished with other inputs."""
    stale = [str(c.file) for c in cells if (s := c.state()) is not None and s.get("key") != c.key]
    if stale:
        raise ExperimentError("these cells were run with a different plan, recipe or override (their inputs' hash "
                              "differs); use another --out, or delete them to redo them:\n"
                              + "\n".join(f"  - {s}" for s in stale))


def write_json(path: Path, obj) -> None:
    """Atomic: a reader (or a re-run after a kill) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------- running cells


class Evaluator:
    """The held-out rows (generated once from the base recipe) and mask tokenizers, shared by eval cells."""

    def __init__(self, plan: Plan):
        self.plan, self._rows, self._tokenizers = plan, None, {}

    def tokenizer(self, name: str):
        from tokenizer.load import load_mask_tokenizer

        if name not in self._tokenizers:
            self._tokenizers[name] = load_mask_tokenizer(name)
        return self._tokenizers[name]

    def rows(self) -> list[dict]:
        from rl.grpo.data import shapes_rows

        if self._rows is None:
            base = _base_recipe(self.plan)
            e = self.plan.eval
            self._rows = shapes_rows(base, e["split"], e["samples"], self.tokenizer(base.data.mask_tokenizer))
        return self._rows


def run_sft_cell(cell: Cell) -> dict:
    """Train the seed's SFT policy with rl.grpo.train's own stage (the same data and seeding as ``samtok-rl train``)."""
    import shutil

    from transformers import set_seed

    from rl.grpo import sft as sft_mod
    from rl.grpo.data import load_datasets
    from rl.recipe.config import save_resolved

    # An unfinished cell's sft/ may be half written; rl.grpo.train would take any config.json as a finished SFT.
    shutil.rmtree(cell.dir / "sft", ignore_errors=True)
    save_resolved(cell.recipe, cell.dir / "recipe.yaml")
    set_seed(cell.recipe.run.seed)
    train_ds, _ = load_datasets(cell.recipe)
    sft_mod.sft_stage(cell.recipe, cell.dir, train_ds)
    return {}


def run_rl_cell(cell: Cell) -> dict:
    """GRPO with rl.grpo.train.run, starting from the shared SFT policy linked in as the run's ``sft/``."""
    from rl.grpo import train as train_mod

    link_sft(cell.dir / "sft", policy_dir(cell.needs))
    train_mod.run(cell.recipe)
    return {}


def link_sft(link: Path, target: Path) -> None:
    """``<run>/sft`` -> the shared SFT: rl.grpo.train skips its SFT stage when that folder holds a policy.
    A relative symlink keeps DIR movable; a copy where symlinks are not allowed."""
    import shutil

    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)
    except OSError:
        shutil.copytree(target, link)


def run_eval_cell(cell: Cell, evaluator: Evaluator) -> dict:
    """Greedy completions of the trained policy on the held-out rows, scored by the demo's evaluation."""
    import torch

    from rl.experiments import demo
    from rl.policy.model import load_policy

    trained = policy_dir(cell.needs)
    device = "cuda" if torch.cuda.is_available() else None
    model, processor = load_policy(trained, device=device)
    recipe, e = cell.recipe, evaluator.plan.eval
    try:
        metrics = demo.evaluate_policy(
            model, processor, evaluator.tokenizer(recipe.data.mask_tokenizer), evaluator.rows(), cell.dir,
            demo.answer_grading(recipe), evaluator.plan.task, e["max_new_tokens"], demo.answer_params(recipe),
        )
    finally:
        del model
        gc.collect()
    return {"metrics": metrics}


def policy_dir(trained: Cell) -> Path:
    """Derived from the cell's folder, not read from its JSON, so that DIR can be moved between runs."""
    return trained.dir / ("sft" if trained.kind == "sft" else "final")


def run_cells(plan: Plan, cells: list[Cell], say=print) -> None:
    """Run every unfinished cell in order, with a progress line per cell; finished ones are skipped."""
    evaluator = Evaluator(plan)
    start = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        prefix = f"[cell {i}/{len(cells)}] {cell.label}"
        if cell.done():
            say(f"{prefix}: done earlier, skipped")
            continue
        say(f"{prefix} ... (elapsed {_clock(time.perf_counter() - start)})")
        began = {"kind": cell.kind, "key": cell.key, "upstream": cell.upstream()}
        _start_over_if_upstream_changed(cell)
        write_json(cell.file, {**began, "done": False})
        t0 = time.perf_counter()
        result = run_eval_cell(cell, evaluator) if cell.kind == "eval" else RUNNERS[cell.kind](cell)
        wall = time.perf_counter() - t0
        write_json(cell.file, {**began, "done": True, "wall_s": wall, "finished_at": time.time(), "result": result,
                               **_device_and_threads()})
        say(f"{prefix}: done in {wall:.1f} s (elapsed {_clock(time.perf_counter() - start)})")


RUNNERS = {"sft": run_sft_cell, "rl": run_rl_cell}


def _device_and_threads() -> dict:
    # On a CPU the thread count decides how float sums are split, so one seed trains to other weights with another
    # count (measured: 30 SFT steps at 1 and 2 threads differ; each count repeats bitwise). Recorded per cell so that
    # the report can say when a re-run with another OMP_NUM_THREADS mixed cells made both ways.
    import torch

    return {"device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}


def _start_over_if_upstream_changed(cell: Cell) -> None:
    # A GRPO run started from an SFT policy that has since been redone would resume from checkpoints (and a
    # policy-init) of the old one; only a cleared folder starts from the new one.
    import shutil

    state = cell.state()
    if state is not None and state.get("upstream") != cell.upstream():
        shutil.rmtree(cell.dir)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


# ---------------------------------------------------------------- summary


def summarize(plan: Plan, cells: list[Cell], seeds: list[int]) -> dict:
    """The ``summary.json`` object: one row per evaluated policy, in percent."""
    keep = get_task(plan.task).metrics
    runs = []
    for c in cells:
        if c.kind != "eval":
            continue
        metrics = c.state()["result"]["metrics"]
        ordered = {**{k: float(metrics[k]) for k in keep}, **{k: float(v) for k, v in metrics.items() if k not in keep}}
        run = {"variant": c.variant, "seed": c.seed, "policy": c.policy, "metrics": ordered,
               "wall_s": float(c.needs.state()["wall_s"])}
        if c.policy == "RL":  # the sampled training reward per fifth of GRPO (rl.grpo.curves)
            run["reward_fifths"] = curves_mod.fifths([v for _, v in curves_mod.read_run(c.needs.dir)["reward"]])
        runs.append(run)
    trained = [c.state() for c in cells if c.kind != "eval"]
    cpu_threads = sorted({st["threads"] for st in trained if st.get("device") == "cpu"})
    return {"task": plan.task, "runs": runs, "sft_of": sft_of(cells), "seeds": list(seeds),
            "eval": {**plan.eval, "decoding": "greedy"}, "cpu_threads": cpu_threads}


# ---------------------------------------------------------------- entry points


def run_experiment(plan: Plan, seeds: list[int], out: str | os.PathLike, say=print) -> dict:
    """Run (or finish) every cell, then write summary.json, report.md and deltas.png; returns the summary."""
    out = Path(out)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ExperimentError(f"seeds must be distinct and at least one, got {seeds}")
    cells = build_cells(plan, seeds, out)
    check_cells(cells)
    for w in plan.warnings:
        say(f"warning: {w}")
    run_cells(plan, cells, say)
    summary = summarize(plan, cells, seeds)
    write_json(out / "summary.json", summary)
    write_report(plan, summary, out)
    plot_deltas(summary, out / "deltas.png")
    plot_curves(plan, cells, out / "curves.png")
    return summary


def plot_curves(plan: Plan, cells: list[Cell], path: Path) -> Path:
    """``curves.png``: per variant, the sampled reward and the held-out monitor's metrics of every seed's GRPO run."""
    runs: dict[str, list] = {}
    for c in cells:
        if c.kind == "rl":
            runs.setdefault(c.variant, []).append((f"seed {c.seed}", curves_mod.read_run(c.dir)))
    return curves_mod.plot_runs(runs, plan.task, path)


