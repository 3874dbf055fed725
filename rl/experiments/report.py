"""Report warnings: the sentences that say when an RL-over-SFT gain is not what it looks like.

``samtok-rl demo`` (one seed) and ``samtok-rl experiment`` (variants x seeds) both write their verdicts
with these functions, so one rule set decides what a report may claim. Every function takes plain dicts
of metrics in percent, keyed as ``envs.metrics`` returns them, so tests can build the tables by hand. ``task``
is a task name or an ``envs.task.Task``, which says which metric is the headline, which one measures the masks
and where a gain can come from.

The flags:

(a) a headline gain that comes with a loss in the task's ``trade_metric`` (GRES: gIoU up, T-acc down): targets
    were traded for ``No target.``;
(b) a mean delta inside the seed spread (|mean| <= the sample std of the delta across seeds), and any
    result from fewer than ``MIN_SEEDS`` seeds: one seed proves nothing;
(c) the headline metric rising while the mask metric does not: gIoU up, cIoU not (GRES); AP50 up,
    mIoU not (GCG). The gain then is not better masks.
"""

from __future__ import annotations

import math

from envs import get_task

MIN_SEEDS = 3


def delta(sft: dict, rl: dict) -> dict:
    """RL minus SFT for every numeric metric both hold."""
    return {k: float(rl[k]) - float(sft[k]) for k in rl if k in sft and _number(rl[k]) and _number(sft[k])}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample std (ddof=1); the std is nan for a single value, where no spread is measured."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_delta(deltas: list[dict]) -> dict:
    """Per-metric mean over the seeds' delta dicts (metrics every seed has)."""
    keys = [k for k in deltas[0] if all(k in d for d in deltas)] if deltas else []
    return {k: mean_std([d[k] for d in deltas])[0] for k in keys}


def pair_flags(task: str, d: dict) -> list[str]:
    """Flags (a) and (c) for one delta dict (one seed's, or the mean over seeds). Silent without a gain."""
    t = get_task(task)
    head, mask = t.headline, t.mask_metric
    if d.get(head, 0.0) <= 0:
        return []
    flags = []
    if t.trade_metric and d.get(t.trade_metric, 0.0) < 0:
        flags.append(_trade_flag(t, d))
    if mask in d and d[mask] <= 0:
        flags.append(f"{mask} did not rise ({d[mask]:+.2f}) while {head} rose ({d[head]:+.2f}): "
                     f"{t.mask_flag_reason(d)}.")
    return flags


def _trade_flag(t, d: dict) -> str:
    # GRES's N-acc is the no-target side of the trade; a task without one gets the first sentence only.
    head, lost = t.headline, t.trade_metric
    msg = (f"{lost} fell {d[lost]:+.2f} points while {head} rose {d[head]:+.2f}: part of the gain is targets "
           "traded for 'No target.'")
    if d.get("N-acc", 0.0) > 0 and -d[lost] >= d["N-acc"]:
        msg += f"; {lost} fell as much as N-acc rose ({d['N-acc']:+.2f}): no skill was gained"
    return msg + "."


def spread_flags(task: str, deltas: list[dict]) -> list[str]:
    """Flag (b) over the per-seed delta dicts of one variant, for the headline and the mask metric."""
    n = len(deltas)
    flags = []
    if n < MIN_SEEDS:
        flags.append(f"Only {n} seed{'' if n == 1 else 's'}: one seed proves nothing; at least {MIN_SEEDS} seeds are "
                     "needed to tell a gain from seed noise (samtok-rl experiment --seeds 0 1 2).")
    if n < 2:
        return flags
    inside = []
    for k in (get_task(task).headline, get_task(task).mask_metric):
        mean, std = mean_std([d[k] for d in deltas])
        if abs(mean) <= std:
            inside.append(f"{k} {mean:+.2f} ± {std:.2f}")
    if inside:
        flags.append(f"Inside the seed spread (|mean delta| <= std over {n} seeds): {', '.join(inside)}; "
                     "not distinguishable from seed noise.")
    return flags


def variant_flags(task: str, deltas: list[dict]) -> list[str]:
    """Every flag for one variant: (a) and (c) on the mean delta, (b) on the spread across seeds."""
    return pair_flags(task, mean_delta(deltas)) + spread_flags(task, deltas)


def gain_source(task: str, d: dict) -> str:
    """One sentence: how large the headline gain is and which metrics it comes from."""
    t = get_task(task)
    head, rises = t.headline, t.gain_sources
    gain = d.get(head, 0.0)
    detail = ", ".join(f"{k} {d[k]:+.2f}" for _, k in rises if k in d)
    if gain <= 0:
        return f"No {head} gain ({gain:+.2f}; {detail})."
    parts = [f"{what} ({k} {d[k]:+.2f})" for what, k in rises if d.get(k, 0.0) > 0]
    if not parts:
        return f"{head} {gain:+.2f} with no rise in any other metric ({detail})."
    lost = t.trade_metric
    cost = f", at a {lost} cost of {d[lost]:+.2f}" if lost and d.get(lost, 0.0) < 0 else ""
    return f"{head} {gain:+.2f} comes from {' and '.join(parts)}{cost}."


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
