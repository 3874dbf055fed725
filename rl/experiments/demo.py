"""``samtok-rl demo``: the default run. On 2 CPU cores, from nothing, in minutes:

1. build the tiny policy and load the tiny mask tokenizer (committed weights);
2. generate the shapes world and encode its GT masks into answers;
3. warm-start the policy with a short SFT stage (stopped short of saturation on purpose);
4. run GRPO with the answer-matching reward;
5. evaluate the SFT and the RL policies on the held-out test split with the official metrics (GRES:
   gIoU/cIoU/N-acc/T-acc; GCG with ``--task gcg``: AP50/mIoU/recall), greedy decoding;
6. print and save a report: SFT-vs-RL table, reward curve, rollout grids with predicted and GT masks.

The report states the measured gain, whatever it is, with the warnings of ``rl.experiments.report``.
Everything comes from ``recipes/shapes_gres.yaml`` (``--task gcg``: ``recipes/shapes_gcg.yaml``);
``key=value`` arguments override it (e.g. ``grpo.max_steps=20`` for a quicker look).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from envs import TASKS, generated_env, get_task
from rl.experiments.report import delta, gain_source, pair_flags, spread_flags
from rl.grpo.curves import learning_summary, plot_runs, read_run

# The demo of a task runs in its generated world, with that world's recipe.
RECIPES = {task: Path(__file__).resolve().parents[2] / "recipes" / f"{generated_env(task)}.yaml"
           for task in TASKS if generated_env(task)}
RECIPE = RECIPES["gres"]


def run_demo(recipe, out: Path, test_samples: int, start: float, task: str = "gres") -> str:
    from rl.grpo import train as train_mod
    from rl.grpo.data import shapes_rows
    from rl.policy.model import load_policy
    from tokenizer.load import load_mask_tokenizer

    _say(start, "loading the tiny mask tokenizer")
    mask_tok = load_mask_tokenizer(recipe.data.mask_tokenizer)  # FileNotFoundError names the rebuild command
    _say(start, f"encoding {test_samples} held-out test samples")
    test = shapes_rows(recipe, "test", test_samples, mask_tok)

    _say(start, "SFT warm start, then GRPO (progress bars below)")
    final = train_mod.run(recipe)

    grading = answer_grading(recipe)  # the mean-reward column uses GRPO's grading
    results = {}
    for name, path in (("SFT", out / "sft"), ("RL", final)):
        _say(start, f"evaluating the {name} policy on the test split")
        model, processor = load_policy(path)
        results[name] = evaluate_policy(model, processor, mask_tok, test, out / f"eval_{name.lower()}", grading, task,
                                        reward_params=answer_params(recipe))
    curves = read_run(out)
    figure = plot_runs({"GRPO": [(f"seed {recipe.run.seed}", curves)]}, task, out / "learning_curves.png",
                       reward_summary(recipe))
    wall = time.perf_counter() - start
    report = write_report(results, recipe, out, wall, len(test), figure, task, curves)
    return report


def evaluate_policy(model, processor, mask_tok, rows, out_dir: Path, grading: str = "binary", task: str = "gres",
                    max_new_tokens: int | None = None, reward_params: dict | None = None) -> dict:
    """The task's official metrics + mean answer_match reward (x100) of greedy completions, predictions and a
    rollout grid. ``reward_params``: the recipe's answer_match parameters (GCG's phrase/no-repeat terms)."""
    from rl.eval.evaluate import decode_predictions, render_grid
    from rl.eval.generation import generate

    out_dir.mkdir(parents=True, exist_ok=True)
    t = get_task(task)
    texts = generate(model, processor, rows, max_new_tokens=max_new_tokens or t.max_new_tokens, batch_size=16)
    metrics = t.score(rows, texts, mask_tok, out_dir, with_captions=False)
    metrics["mean reward"] = 100 * sum(answer_scores(task, texts, rows, grading, reward_params)) / len(rows)
    n = min(12, len(rows))
    render_grid(rows[:n], decode_predictions(texts[:n], rows[:n], mask_tok), texts[:n], out_dir / "grid.png", n)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def answer_scores(task: str, texts, rows, grading: str, params: dict | None = None) -> list[float]:
    """answer_match of each greedy completion, in [0, 1]: with the recipe's phrase, no-repeat and normalize terms
    where the task's demo reports them (``Task.reward_terms``), else the paper's plain mask-group matching."""
    from rewards.answer_match import answer_match

    t = get_task(task)
    terms = ("phrase_weight", "no_repeat_weight", "normalize") if t.reward_terms else ()
    keep = {k: v for k, v in (params or {}).items() if k in terms}
    if not t.reward_terms:
        from rewards.answer_match import score

        return [score(c, r["answer"], grading) for c, r in zip(texts, rows)]
    return answer_match(grading=grading, task=t.name, **keep)(completions=texts, answer=[r["answer"] for r in rows])


def answer_grading(recipe) -> str:
    """The grading of the recipe's answer_match reward (the demo's mean-reward column), binary if it has none."""
    return next((r.params.get("grading", "binary") for r in recipe.rewards if r.name == "answer_match"), "binary")


def answer_params(recipe) -> dict:
    """The parameters of the recipe's answer_match reward ({} if it has none)."""
    return next((dict(r.params) for r in recipe.rewards if r.name == "answer_match"), {})


def reward_summary(recipe) -> str:
    """E.g. ``answer_match (coarse) x1 + mask_iou x1``: what GRPO optimised, as the recipe says."""
    parts = []
    for r in recipe.rewards:
        detail = f" ({r.params['grading']})" if "grading" in r.params else ""
        parts.append(f"{r.name}{detail} x{r.weight:g}")
    return " + ".join(parts)


def write_report(results: dict, recipe, out: Path, wall: float, n_test: int, curve: Path, task: str = "gres",
                 curves: dict | None = None) -> str:
    t = get_task(task)
    cols = [*t.metrics, "mean reward"]
    terms = t.reward_terms
    lines = [
        f"# samtok-rl demo: SFT vs RL on the shapes world ({t.name.upper()})",
        "",
        f"Held-out test split: {n_test} samples. Tiny policy: {recipe.model.tiny.arch}, hidden "
        f"{recipe.model.tiny.hidden_size}, {recipe.model.tiny.num_layers} layers. SFT {recipe.sft.args.get('max_steps')} "
        f"steps, GRPO {recipe.grpo.get('max_steps')} steps with {reward_summary(recipe)}. The mean-reward column is "
        f"answer_match ({answer_grading(recipe)} grading{terms}) x 100 on greedy answers. Seed {recipe.run.seed}.",
        "",
        "| policy | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{m.get(c, float('nan')):.2f}" for c in cols) + " |")
    head = t.headline
    d = delta(results["SFT"], results["RL"])
    target = f" (target: >= +{t.demo_target:g})" if t.demo_target is not None else ""
    lines += [
        "",
        f"Measured {head} gain of RL over SFT: {d[head]:+.2f} points{target}.",
        "Where it comes from: " + ", ".join(f"{k} {d[k]:+.2f}" for k in t.metrics if k != head) + " points."
        + (f" {gain_source(task, d)}" if d[head] > 0 else ""),
    ]
    lines += [f"Note: {flag}" for flag in pair_flags(task, d) + spread_flags(task, [d])]
    if t.score_note:
        lines.append(t.score_note())
    if curves is not None:
        lines.append("Learning: " + learning_summary(curves, task))
    lines += [
        f"Wall time: {wall / 60:.1f} min.",
        "",
        f"Learning curves (sampled reward, held-out metrics): {curve}. Rollout grids (GT | predicted masks): "
        f"{out / 'eval_sft' / 'grid.png'}, {out / 'eval_rl' / 'grid.png'}.",
    ]
    report = "\n".join(lines)
    (out / "report.md").write_text(report + "\n")
    return report


def _say(start: float, msg: str) -> None:
    print(f"[demo {time.perf_counter() - start:6.1f}s] {msg}", flush=True)
