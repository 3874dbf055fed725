"""The reward probe's statistics, warnings, terminal table and picture (``rl.experiments.probe`` samples and scores; the
definitions and thresholds are in its docstring)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from envs import get_task

NO_GRADIENT = 0.5
NT_MASS = 0.5
LOW_SIGNAL = 0.2
OPPOSITE = -0.1
ZERO_STD = 1e-8  # TRL's torch.isclose(std, 0)
ADV_EPS = 1e-4  # TRL: (r - mean) / (std + 1e-4)


# ---------------------------------------------------------------- analysis


def answer_kind(task: str, row: dict) -> str:
    """The task's answer kind (GRES: no_target / single / multi; GCG: the number of phrases, ``4+`` from four on)."""
    return get_task(task).kind(row)


def analyse(task: str, rollouts, scores: dict, weights: dict, iou: list[float], exact: list[bool]) -> dict:
    """Every statistic of the module docstring, per reward and for the weighted total, overall and per kind."""
    from tokenizer.codec import NO_TARGET

    is_nt = [t.strip() == NO_TARGET for t in rollouts.texts]
    total = np.zeros(len(rollouts.texts))
    scorable = np.zeros(len(rollouts.texts), bool)
    for name, w in weights.items():
        v = np.asarray(scores[name]["values"])
        total += w * np.nan_to_num(v)
        scorable |= ~np.isnan(v)
    total[~scorable] = np.nan
    kinds = [answer_kind(task, rollouts.rows[g[0]]) for g in rollouts.groups]
    target = [k != get_task(task).no_target_kind for k in kinds]
    iou = np.asarray(iou, float)
    series = {name: np.asarray(s["values"], float) for name, s in scores.items()}
    series["total"] = total
    report = {"rewards": {}, "kinds": sorted(set(kinds)), "groups": len(rollouts.groups),
              "completions": len(rollouts.texts)}
    for name, values in series.items():
        stats = _stats(values, rollouts.groups, iou, is_nt, target)
        stats["by_kind"] = {k: _stats(values, [g for g, kk in zip(rollouts.groups, kinds) if kk == k], iou, is_nt,
                                      [t for t, kk in zip(target, kinds) if kk == k])
                            for k in report["kinds"]}
        if name != "total":
            stats["weight"] = weights.get(name)
            stats["seconds_per_completion"] = scores[name]["seconds"] / max(1, len(values))
            stats["failed"] = scores[name]["failed"]
        report["rewards"][name] = stats
    target_groups = [g for g, t in zip(rollouts.groups, target) if t]
    report["exact_match"] = {
        "completions": float(np.mean(exact)) if exact else 0.0,
        "target_completions": float(np.mean([exact[i] for g in target_groups for i in g])) if target_groups else 0.0,
        "target_groups_with_a_match": float(np.mean([any(exact[i] for i in g) for g in target_groups]))
        if target_groups else 0.0,
        "by_kind": {k: float(np.mean([exact[i] for g, kk in zip(rollouts.groups, kinds) if kk == k for i in g]))
                    for k in report["kinds"]},
    }
    report["decoded_iou"] = float(np.nanmean(iou)) if len(iou) else math.nan
    report["signal"] = report["rewards"]["total"]["signal"]
    report["signal_all"] = report["rewards"]["total"]["signal_all"]
    report["warnings"] = warnings(task, report)
    report["flagged"] = any(w["kind"] in ("no_gradient", "collapse") for w in report["warnings"])
    return report


def advantages(values: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """TRL's group-normalised advantages, ``(r - mean) / (std + 1e-4)`` per group (sample std), NaNs left out."""
    adv = np.zeros(len(values))
    for g in groups:
        v = values[g]
        ok = ~np.isnan(v)
        if ok.sum() < 2:
            continue
        mean, std = v[ok].mean(), v[ok].std(ddof=1)
        adv[np.asarray(g)[ok]] = (v[ok] - mean) / (std + ADV_EPS)
    return adv


def _stats(values, groups, iou, is_nt, target) -> dict:
    from scipy.stats import spearmanr

    if not groups:
        return {}
    adv = advantages(values, groups)
    spreads, zero, rhos, mass, aligned, aligned_all = [], 0, [], 0.0, 0.0, 0.0
    for g, is_target in zip(groups, target):
        v = values[g]
        v = v[~np.isnan(v)]
        std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        spreads.append(std)
        zero += std <= ZERO_STD
        m = float(np.abs(adv[g]).sum())
        mass += m
        rho = _spearman(values[g], iou[g])
        if rho is not None:
            rhos.append(rho)
            aligned_all += m * rho
            if is_target:
                aligned += m * rho
    nt_mass = float(np.abs(adv[[i for g in groups for i in g if is_nt[i]]]).sum()) / mass if mass else 0.0
    idx = [i for g in groups for i in g]
    ok = [i for i in idx if not (math.isnan(values[i]) or math.isnan(iou[i]))]
    pooled = spearmanr(values[ok], iou[ok])[0] if len(ok) > 2 and np.ptp(values[ok]) > 0 and np.ptp(iou[ok]) > 0 else None
    return {
        "mean": float(np.nanmean(values[idx])),
        "spread": float(np.mean(spreads)),
        "zero_spread": zero / len(groups),
        "nt_mass": nt_mass,
        "spearman_iou": float(np.mean(rhos)) if rhos else None,
        "spearman_iou_pooled": None if pooled is None or math.isnan(pooled) else float(pooled),
        "signal": aligned / mass if mass else 0.0,
        "signal_all": aligned_all / mass if mass else 0.0,
        "groups": len(groups),
    }


def ranking_reliability(per_seed: dict[str, dict[int, float]]) -> dict | None:
    """How reproducible a measured ranking of variants is across seeds, from each variant's per-seed deltas.

    ``pairwise``: the mean Spearman between the variants' deltas of two seeds, over every pair of seeds (only variants
    measured on both); ``reliability``: the Spearman-Brown reliability of a mean over the ``seeds`` seeds,
    ``k r / (1 + (k - 1) r)``, 0 where seeds disagree more than chance; ``ceiling``: its square root, about the
    correlation with the k-seed ranking that a score knowing each variant's expected delta exactly would reach. None
    with fewer than 2 seeds or 3 variants."""
    import itertools

    seeds = sorted({s for d in per_seed.values() for s in d})
    rs = []
    for a, b in itertools.combinations(seeds, 2):
        both = [v for v, d in per_seed.items() if a in d and b in d]
        if len(both) >= 3:
            rho = _spearman(np.array([per_seed[v][a] for v in both]), np.array([per_seed[v][b] for v in both]))
            rs.append(0.0 if rho is None else rho)
    if not rs:
        return None
    r, k = float(np.mean(rs)), len(seeds)
    rel = max(0.0, k * r / (1 + (k - 1) * r)) if 1 + (k - 1) * r > 0 else 0.0
    return {"seeds": k, "pairs": len(rs), "pairwise": r, "reliability": rel, "ceiling": math.sqrt(rel)}


def _spearman(a, b) -> float | None:
    """Spearman of two vectors over the entries both have, None when either does not vary."""
    from scipy.stats import spearmanr

    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    if len(a) < 2 or np.ptp(a) <= ZERO_STD or np.ptp(b) <= ZERO_STD:
        return None
    return float(spearmanr(a, b)[0])


def warnings(task: str, report: dict) -> list[dict]:
    out = []
    total = report["rewards"]["total"]
    if total["zero_spread"] > NO_GRADIENT:
        out.append({"kind": "no_gradient", "reward": "total",
                    "text": f"{total['zero_spread']:.0%} of groups give no gradient: all their completions score the "
                            "same weighted total"})
    if get_task(task).no_target_kind and total["nt_mass"] >= NT_MASS and total["signal"] < LOW_SIGNAL:
        out.append({"kind": "collapse", "reward": "total",
                    "text": f"most advantage mass ({total['nt_mass']:.0%}) is on 'No target.' completions and little "
                            f"on better masks (signal {total['signal']:.2f}): expect collapse into 'No target.'"})
    for name, s in report["rewards"].items():
        if name == "total":
            continue
        if s["zero_spread"] >= 1.0:
            out.append({"kind": "ignores_completion", "reward": name,
                        "text": f"{name} gives every completion of a prompt the same score: it does not depend on "
                                "the completion, so it teaches nothing"})
        elif s["spearman_iou"] is not None and s["spearman_iou"] < OPPOSITE:
            out.append({"kind": "opposite", "reward": name,
                        "text": f"{name} ranks completions opposite to IoU (within-group Spearman "
                                f"{s['spearman_iou']:+.2f})"})
    return out


# ---------------------------------------------------------------- output


def table(report: dict) -> str:
    def f(v, fmt="{:.3f}"):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)

    head = (f"{'reward':<24} {'weight':>6} {'mean':>7} {'spread':>7} {'0-spread':>8} {'NT adv':>7} "
            f"{'rho IoU':>8} {'signal':>7} {'s/compl':>9}")
    lines = [head, "-" * len(head)]
    for name, s in report["rewards"].items():
        weight = "total" if name == "total" else ("extra" if s.get("weight") is None else f"{s['weight']:g}")
        lines.append(f"{name:<24} {weight:>6} {f(s['mean']):>7} {f(s['spread']):>7} {f(s['zero_spread'], '{:.0%}'):>8} "
                     f"{f(s['nt_mass'], '{:.0%}'):>7} {f(s['spearman_iou'], '{:+.2f}'):>8} {f(s['signal'], '{:+.3f}'):>7} "
                     f"{f(s.get('seconds_per_completion'), '{:.1e}'):>9}")
    lines += ["", "by answer kind (weighted total): " + "; ".join(
        f"{k}: {v['groups']} groups, {v['zero_spread']:.0%} zero-spread, rho {f(v['spearman_iou'], '{:+.2f}')}"
        for k, v in report["rewards"]["total"]["by_kind"].items() if v)]
    e = report["exact_match"]
    lines.append(f"exact match (binary answer_match = 1): {e['completions']:.1%} of completions, "
                 f"{e['target_completions']:.1%} on target prompts; target groups with at least one: "
                 f"{e['target_groups_with_a_match']:.1%}")
    lines.append(f"signal score: {report['signal']:+.3f}" + ("  FLAGGED" if report["flagged"] else ""))
    lines += [f"warning: {w['text']}" for w in report["warnings"]]
    return "\n".join(lines)


def plot(report: dict, scores: dict, iou: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        v = np.asarray(scores[name]["values"], float)
        a.scatter(np.asarray(iou) + rng.uniform(-0.01, 0.01, len(v)), v + rng.uniform(-0.01, 0.01, len(v)), s=4,
                  alpha=0.4, color=f"C{k}", label=f"{name} (rho {report['rewards'][name]['spearman_iou'] or 0:+.2f})")
    a.set_xlabel("decoded mask IoU of the completion")
    a.set_ylabel("reward")
    a.set_title("each reward against the decoded IoU (jittered)", fontsize=9)
    a.legend(fontsize=7)
    kinds = report["kinds"]
    series = ["total", *names]
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        by = report["rewards"][name]["by_kind"]
        b.bar(np.arange(len(kinds)) + k * width, [by[kd].get("zero_spread", 0) if by[kd] else 0 for kd in kinds], width,
              label="weighted total" if name == "total" else name, color="black" if name == "total" else f"C{k - 1}",
              alpha=0.8)
    b.set_xticks(np.arange(len(kinds)) + 0.4 - width / 2, kinds, fontsize=8)
    b.set_ylim(0, 1)
    b.set_ylabel("share of groups without spread")
    b.set_title(f"zero-spread groups by answer kind; signal {report['signal']:+.3f}", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(out: Path, report: dict, scores: dict, iou: list[float]) -> None:
    """probe.json and probe.png, both or neither: written in a scratch folder, then moved in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".probe-") as tmp:
        tmp = Path(tmp)
        (tmp / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
        plot(report, scores, iou, tmp / "probe.png")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("probe.json", "probe.png"):
            shutil.move(str(tmp / name), out / name)
