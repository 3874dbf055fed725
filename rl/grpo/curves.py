"""Learning curves of GRPO runs: the sampled training reward (raw and smoothed) next to the held-out monitor's
metrics, so that a picture shows whether RL learned; and the reward's mean per fifth of the run.

A run folder holds what they are drawn from: ``log_history.json`` (the Trainer's logged scalars, written by
``rl.grpo.train.run`` when training ends; ``reward`` is the weighted total reward of the sampled completions, averaged
over each logging interval) and ``monitor/metrics.jsonl`` (greedy held-out metrics every ``monitor.eval_steps``,
``rl.grpo.monitor``). ``samtok-rl demo`` plots one run, ``samtok-rl experiment`` every GRPO cell (a row per variant,
a line per seed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from envs import get_task

LOG_FILE = "log_history.json"
MONITOR_FILE = Path("monitor") / "metrics.jsonl"


def save_history(log_history: list[dict], run_dir: str | Path) -> Path:
    """Write the Trainer's ``state.log_history`` to ``run_dir/log_history.json`` (replaced atomically). A resumed run
    restores the history from its checkpoint, so the file always covers the whole run."""
    import os

    path = Path(run_dir) / LOG_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(log_history, indent=0))
    os.replace(tmp, path)
    return path


def read_run(run_dir: str | Path) -> dict:
    """``{"reward": [(step, total reward)], "monitor": [held-out records]}`` of a run folder; missing files give
    empty lists (a run without the monitor has no held-out curve)."""
    run_dir = Path(run_dir)
    history = json.loads((run_dir / LOG_FILE).read_text()) if (run_dir / LOG_FILE).is_file() else []
    reward = [(h["step"], float(h["reward"])) for h in history if "reward" in h and "step" in h]
    monitor = []
    if (run_dir / MONITOR_FILE).is_file():
        monitor = [json.loads(line) for line in (run_dir / MONITOR_FILE).read_text().splitlines() if line.strip()]
    return {"reward": reward, "monitor": monitor}


def fifths(values) -> list[float]:
    """Mean of each fifth of ``values`` (in order; the first fifths take the remainder). Fewer than 5: []."""
    values = [float(v) for v in values]
    if len(values) < 5:
        return []
    bounds = [round(i * len(values) / 5) for i in range(6)]
    return [sum(values[a:b]) / (b - a) for a, b in zip(bounds, bounds[1:])]


def rise(values) -> float:
    """Last fifth's mean minus the first fifth's (nan with fewer than 5 values)."""
    f = fifths(values)
    return f[-1] - f[0] if f else math.nan


def smooth(values, window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def learning_summary(curves: dict, task: str) -> str:
    """One sentence on what a run's curves show: the sampled reward per fifth and the held-out metrics' first and
    last points."""
    values = [v for _, v in curves["reward"]]
    parts = []
    if fifths(values):
        parts.append(f"sampled training reward (weighted total), mean per fifth of GRPO: {_fmt(fifths(values))} "
                     f"(last fifth - first: {rise(values):+.3f})")
    points = curves["monitor"]
    if len(points) >= 2:
        first, last = points[0], points[-1]
        moved = ", ".join(f"{m} {first[m]:.2f} -> {last[m]:.2f}" for m in (get_task(task).headline, get_task(task).mask_metric)
                          if m in first and m in last)
        parts.append(f"held-out monitor ({first.get('samples', '?')} val samples, greedy), step {first['step']} -> "
                     f"{last['step']}: {moved}")
    return "; ".join(parts) + "." if parts else "no learning curves (no logged rewards)."


def plot_runs(runs: dict[str, list[tuple[str, dict]]], task: str, path: str | Path, reward_label: str = "") -> Path:
    """One row per group (a variant, or the demo's one run): the sampled reward (thin: as logged, bold: smoothed)
    and the held-out headline and mask metrics (GRES gIoU/cIoU, GCG AP50/mIoU) against the GRPO step; one colour
    per line of the group (a seed). ``runs``: ``{group: [(line label, read_run(...)), ...]}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (get_task(task).headline, get_task(task).mask_metric)
    fig, axes = plt.subplots(len(runs) or 1, 3, figsize=(11, 2.6 * max(1, len(runs))), squeeze=False)
    for row, (group, lines) in zip(axes, runs.items()):
        for k, (label, curves) in enumerate(lines):
            colour = f"C{k}"
            steps = [s for s, _ in curves["reward"]]
            values = [v for _, v in curves["reward"]]
            row[0].plot(steps, values, color=colour, lw=0.6, alpha=0.35)
            row[0].plot(steps, smooth(values, max(1, len(values) // 10)), color=colour, lw=1.6,
                        label=f"{label}: fifths {_fmt(fifths(values))}")
            for ax, m in zip(row[1:], metrics):
                points = [(r["step"], r[m]) for r in curves["monitor"] if m in r]
                if points:
                    ax.plot(*zip(*points), "o-", color=colour, ms=3, lw=1.2, label=label)
        row[0].set_title(f"{group}: sampled reward{' (' + reward_label + ')' if reward_label else ''}", fontsize=8)
        row[0].legend(fontsize=6)
        for ax, m in zip(row[1:], metrics):
            ax.set_title(f"{group}: held-out {m} (greedy, monitor)", fontsize=8)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
            else:
                ax.text(0.5, 0.5, "monitor off", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        for ax in row:
            ax.set_xlabel("GRPO step", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _fmt(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values) if values else "n/a"
