"""An experiment's ``report.md`` and ``deltas.png`` from its ``summary.json`` object: per-seed rows, mean ± std, the
RL − SFT deltas per variant with the report's warnings (``rl.experiments.report``), and where each gain comes from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from envs import get_task
from rl.experiments import report as flags_mod

if TYPE_CHECKING:
    from rl.experiments.plan import Plan


def variant_deltas(summary: dict) -> dict[str, list[dict]]:
    """Per variant, the per-seed RL - SFT deltas (each RL row against its seed's SFT row)."""
    rows = {(r["variant"], r["seed"], r["policy"]): r["metrics"] for r in summary["runs"]}
    out: dict[str, list[dict]] = {}
    for r in summary["runs"]:
        if r["policy"] == "RL":
            sft = rows[(summary["sft_of"][r["variant"]], r["seed"], "SFT")]
            out.setdefault(r["variant"], []).append({"seed": r["seed"], **flags_mod.delta(sft, r["metrics"])})
    return out


def by_seed(deltas: dict[str, list[dict]], metric: str) -> dict[str, dict[int, float]]:
    """Per variant, one metric's RL - SFT delta keyed by seed (``variant_deltas`` reshaped)."""
    return {v: {d["seed"]: d[metric] for d in ds} for v, ds in deltas.items()}


def write_report(plan: Plan, summary: dict, out: Path) -> str:
    task = get_task(summary["task"])
    cols = task.metrics
    deltas = variant_deltas(summary)
    e = summary["eval"]
    lines = [
        f"# samtok-rl experiment: {Path(plan.source).name} ({task.name.upper()})",
        "",
        f"Plan `{plan.source}`, base recipe `{plan.recipe}`, seeds {', '.join(map(str, summary['seeds']))}; "
        f"command-line overrides: {' '.join(plan.overrides) or 'none'}. Every policy is evaluated on the same "
        f"{e['samples']}-sample {e['split']} split, greedy decoding. Each RL policy is compared with the SFT "
        f"policy it started from (same seed); metrics in percent, mean ± sample std over seeds.",
        "",
        "## Variants",
        "",
        *[f"- `{v}`: {' '.join(o) or 'the base recipe'}; compared with `{summary['sft_of'][v]}`"
          for v, o in plan.variants.items()],
        *[f"- warning: {w}" for w in plan.warnings],
        *([f"- warning: the SFT and GRPO cells ran with different CPU thread counts "
           f"({' and '.join(map(str, summary['cpu_threads']))}, an earlier run with another OMP_NUM_THREADS). On a "
           f"CPU the thread count changes how float sums are split, so a seed trains to other weights with another "
           f"count: compare cells made with one count, or re-run into a new folder with OMP_NUM_THREADS fixed."]
          if len(summary.get("cpu_threads", [])) > 1 else []),
        *(["", task.score_note()] if task.score_note else []),
        "",
        "## Per seed",
        "",
        "| variant | seed | policy | " + " | ".join(cols) + " | wall (s) |",
        "|---|---|---|" + "---|" * (len(cols) + 1),
        *[f"| {r['variant']} | {r['seed']} | {r['policy']} | " + " | ".join(f"{r['metrics'][c]:.2f}" for c in cols)
          + f" | {r['wall_s']:.1f} |" for r in summary["runs"]],
        "",
        "## Mean ± std over seeds",
        "",
        "| variant | policy | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
        *_mean_rows(summary, cols),
        "",
        "## RL − SFT per variant",
        "",
        "| variant | seeds | " + " | ".join(f"Δ{c}" for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
        *[f"| {v} | {len(ds)} | " + " | ".join(_pm([d[c] for d in ds], signed=True) for c in cols) + " |"
          for v, ds in deltas.items()],
        "",
        *_order_lines(task, deltas),
        "## Where each variant's gain comes from",
        "",
    ]
    for v, ds in deltas.items():
        lines.append(f"- **{v}**: {flags_mod.gain_source(task, flags_mod.mean_delta(ds))}")
        lines += [f"  - Note: {f}" for f in flags_mod.variant_flags(task, ds)]
    lines += ["", *_learning_lines(summary)]
    lines += ["", "Deltas per variant with each seed's point: `deltas.png`. Learning curves (sampled reward, held-out "
              "monitor) per variant and seed: `curves.png`."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def _order_lines(task, deltas: dict[str, list[dict]]) -> list[str]:
    """Whether the variants' order by the headline delta repeats from seed to seed (rl.experiments.probe_analysis's
    ranking_reliability): a table of means can look decisive while each seed orders the variants differently."""
    from rl.experiments.probe_analysis import ranking_reliability

    head = task.headline
    rel = ranking_reliability(by_seed(deltas, head))
    if rel is None:
        return []
    verdict = ("the order of the means is mostly seed noise: add seeds before choosing between neighbours"
               if rel["reliability"] < 0.5 else
               "neighbours closer than a seed std may still swap" if rel["reliability"] < 0.8 else
               "the order repeats from seed to seed")
    return [f"Does the variants' order by Δ{head} repeat across seeds? Two seeds order them alike at a mean Spearman "
            f"of {rel['pairwise']:+.2f}; the reliability of the {rel['seeds']}-seed mean (Spearman-Brown) is "
            f"{rel['reliability']:.2f}: {verdict}.", ""]


def _learning_lines(summary: dict) -> list[str]:
    """The sampled training reward (weighted total) per fifth of each GRPO run, and on how many seeds it rose."""
    rl = [r for r in summary["runs"] if r["policy"] == "RL" and r.get("reward_fifths")]
    if not rl:
        return []
    lines = ["## Learning: the sampled training reward", "",
             "Mean of the weighted total reward of GRPO's sampled completions per fifth of the run.", "",
             "| variant | seed | fifths | last − first |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['seed']} | {', '.join(f'{v:.3f}' for v in r['reward_fifths'])} | "
              f"{r['reward_fifths'][-1] - r['reward_fifths'][0]:+.3f} |" for r in rl]
    lines.append("")
    by_variant: dict[str, list[float]] = {}
    for r in rl:
        by_variant.setdefault(r["variant"], []).append(r["reward_fifths"][-1] - r["reward_fifths"][0])
    lines += [f"- `{v}`: the reward rose (last fifth > first) on {sum(d > 0 for d in ds)} of {len(ds)} seeds"
              for v, ds in by_variant.items()]
    return lines


def _mean_rows(summary: dict, cols) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in summary["runs"]:
        groups.setdefault((r["variant"], r["policy"]), []).append(r["metrics"])
    return [f"| {v} | {p} | " + " | ".join(_pm([m[c] for m in ms]) for c in cols) + " |"
            for (v, p), ms in groups.items()]


def _pm(values, signed: bool = False) -> str:
    mean, std = flags_mod.mean_std(values)
    spread = f"{std:.2f}" if std == std else "n/a"  # nan: a single seed has no spread
    return f"{mean:{'+' if signed else ''}.2f} ± {spread}"


def plot_deltas(summary: dict, path: Path) -> Path:
    """Mean RL - SFT delta per variant and metric (bars, sample-std error bars) with every seed's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = get_task(summary["task"]).metrics
    deltas = variant_deltas(summary)
    names = list(deltas)
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3), squeeze=False)
    for ax, c in zip(axes[0], cols):
        stats = [flags_mod.mean_std([d[c] for d in deltas[v]]) for v in names]
        ax.bar(range(len(names)), [m for m, _ in stats], yerr=[s if s == s else 0 for _, s in stats], capsize=4,
               color="tab:blue", alpha=0.5)
        for i, v in enumerate(names):
            ax.plot([i] * len(deltas[v]), [d[c] for d in deltas[v]], "k.", ms=5)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_title(f"Δ{c} (RL − SFT)", fontsize=8)
    fig.suptitle(f"{summary['task'].upper()}: mean ± std over seeds, dots = seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
