"""``samtok-rl rewards probe RECIPE [key=value ...]``: what a reward will teach GRPO, measured at step 0 in minutes.

It samples ``num_generations`` completions for each of ``--prompts`` prompts exactly as the recipe's GRPO draws its
first ones (the recipe's start policy, or ``--policy``; its temperature, top_p and other sampling settings; its prompt
sampler, ``sampling.balance`` included), scores them with every reward of the recipe (plus any ``--reward``) through
the recipe's reward runtime (raw-text decoding, timeouts, isolation), and reports, per reward, for the recipe's
weighted total, and per answer kind (GRES: no target / one object / several; GCG: by number of phrases):

- ``mean`` and ``spread`` (the mean within-group standard deviation);
- ``zero_spread``: the share of groups whose completions all score the same (no GRPO gradient; TRL's
  ``frac_reward_zero_std``);
- ``nt_mass``: the share of the total |advantage| (TRL's group-normalised advantage) that lands on completions
  answering ``No target.`` (GRES);
- ``spearman_iou``: the rank correlation with the decoded mask IoU of the same completions (``mask_iou`` with the
  recipe's tokenizer, ``gres`` mode or GCG's ``instances``: the quality the official metric rewards), within groups
  (what GRPO's advantages compare; averaged over groups where both vary) and pooled;
- ``exact_match``: how often the paper's binary answer_match fires: per completion, and the share of target groups
  where at least one completion matches exactly;
- ``seconds_per_completion``: the reward's cost.

The **signal score** ranks rewards by what they will teach: the share of the weighted total's |advantage| mass that
sits on target prompts and agrees with the decoded IoU, ``sum over target groups of m_g * rho_g / sum over all
groups of m_g``, where ``m_g`` is the group's |advantage| mass and ``rho_g`` its within-group Spearman of reward and
IoU (0 where the IoU does not vary). It is 0 for a reward without spread, small when the spread sits on no-target
prompts only (the collapse into ``No target.``), negative when the reward ranks masks against their IoU.
``signal_all`` is the same share over every group, no-target prompts included, where the decoded IoU is the task's
per-sample score (GRES: ReLA's, 1 for ``No target.`` on a no-target prompt, else 0): it also counts the advantage that
teaches the no-target decision. For a task without no-target prompts it equals the signal score. Tested against the
signal score on variants fixed before they ran, it ranked them worse (docs/results.md, "A test on variants the score
never saw"): it counts the advantage that collapses a policy into ``No target.`` as agreement. So the signal score
ranks and flags; ``signal_all`` is reported beside it.

Warnings (in words, on the terminal and in ``probe.json``), with these thresholds:

- ``NO_GRADIENT``: more than this share of groups without spread in the weighted total: "N% of groups give no
  gradient";
- ``NT_MASS`` with ``LOW_SIGNAL``: at least this share of the |advantage| mass on ``No target.`` while the signal
  score is under ``LOW_SIGNAL``: "most advantage mass is on 'No target.': expect collapse";
- ``OPPOSITE``: a reward whose within-group Spearman with the IoU is below this: "ranks completions opposite to IoU";
- a reward with no spread in any group: "does not depend on the completion".

A run is **flagged** when either of the first two fires for the weighted total: GRPO with it is expected to learn
nothing or to collapse.

Given an experiment plan instead of a recipe (``recipes/experiments/*.yaml``), every variant is probed from the same
policy and ranked by signal score (variants whose policy and sampling settings agree share one set of completions:
they are sampled once and rescored per variant); ``--against DIR/summary.json`` adds the variants' measured mean RL - SFT
headline deltas (gIoU, GCG: AP50) of a finished experiment, the Spearman between the two rankings, and how
reproducible the measured ranking itself is across seeds (``ranking_reliability``): a ranking that two seeds do not
agree on cannot be predicted by any step-0 score, and that bound is printed beside the Spearman.

``--completions DIR`` rescores a run's logged completions instead of sampling (TRL's parquet files in
``<run>/completions``, with the row id and raw text this project's trainer logs beside each completion): a reward
idea can be tried on yesterday's rollouts. Writes ``probe.json`` and ``probe.png`` (reward against IoU; zero-spread
share by kind, the weighted total beside its parts) into ``--out`` (default ``<run.output_dir>/probe``), both or
neither.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rl.experiments.probe_analysis import (
    LOW_SIGNAL,
    NO_GRADIENT,
    NT_MASS,
    OPPOSITE,
    analyse,
    ranking_reliability,
    write_outputs,
)


class ProbeError(ValueError):
    """Bad input to the probe: named, with nothing written."""


@dataclass
class Rollouts:
    """Completions in groups: ``rows[i]`` is the dataset row of completion ``i``; ``groups`` lists the completion
    indices of each prompt."""

    rows: list[dict]
    texts: list[str]
    ids: list[list[int]]
    groups: list[list[int]]
    source: str = ""
    seconds: float = 0.0
    logged: dict[str, list[float]] = field(default_factory=dict)  # logged reward columns (rescoring)


# ---------------------------------------------------------------- rollouts


def start_policy(recipe, policy: str | None):
    """``(model, processor, where)``: ``policy`` if given, else the policy the recipe's GRPO starts from (its SFT
    policy in ``<run.output_dir>/sft``, trained now if missing; or ``model.path``)."""
    from rl.policy.model import initial_policy, load_policy

    if policy:
        if not Path(policy).exists() and "/" not in policy.strip("./"):
            raise ProbeError(f"--policy {policy!r}: no such folder")
        model, processor = load_policy(policy)
        return model, processor, policy
    if recipe.sft.enabled:
        from rl.grpo.data import load_datasets
        from rl.grpo.sft import sft_stage

        run_dir = Path(recipe.run.output_dir)
        train_ds, _ = load_datasets(recipe)
        sft = sft_stage(recipe, run_dir, train_ds)
        model, processor = load_policy(sft)
        return model, processor, str(sft)
    model, processor = initial_policy(recipe)
    return model, processor, recipe.model.path


def prompt_order(recipe, dataset) -> list[int]:
    """The dataset rows in the order GRPO's prompt sampler draws them in its first epoch."""
    from rl.grpo import sampling

    if recipe.sampling.balance:
        s = sampling.BalancedRepeatSampler(dataset, 1, 1, 1, True, recipe.run.seed, kinds=sampling.dataset_kinds(dataset),
                                           shares=recipe.sampling.balance, stratify=recipe.sampling.stratify)
        return s.epoch_order()
    s = sampling.EpochSeededRepeatSampler(dataset, 1, 1, 1, True, recipe.run.seed)
    if recipe.sampling.stratify:
        s.kinds = sampling.dataset_kinds(dataset)
    return list(s)


def sample(recipe, model, processor, dataset, n_prompts: int, batch_size: int = 32) -> Rollouts:
    """``num_generations`` completions for each of the first ``n_prompts`` prompts GRPO would draw, sampled with the
    recipe's GRPO settings (seeded by ``run.seed``)."""
    import torch

    from rl.eval.generation import generate, grpo_sampling
    from rl.grpo.trainer import grpo_config

    if len(dataset) == 0:
        raise ProbeError("the recipe's training set is empty: nothing to probe")
    with tempfile.TemporaryDirectory() as tmp:
        args = grpo_config(recipe, tmp)
    g = args.num_generations
    order = prompt_order(recipe, dataset)[:n_prompts]
    rows = [dataset[i] for i in order for _ in range(g)]
    torch.manual_seed(recipe.run.seed)
    start = time.perf_counter()
    texts, ids = generate(model, processor, rows, args.max_completion_length, batch_size, do_sample=True,
                          return_ids=True, **grpo_sampling(args))
    groups = [list(range(k * g, (k + 1) * g)) for k in range(len(order))]
    return Rollouts(rows, texts, ids, groups, "sampled", time.perf_counter() - start)


def logged_rollouts(folder: str | Path, dataset) -> Rollouts:
    """A run's logged completions (TRL's ``completions/*.parquet``) joined to their dataset rows by row id."""
    from datasets import Dataset, concatenate_datasets

    folder = Path(folder)
    if (folder / "completions").is_dir():
        folder = folder / "completions"
    if not folder.is_dir():
        raise ProbeError(f"--completions {folder}: no such folder")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise ProbeError(f"--completions {folder}: no logged completions (*.parquet); train with "
                         "grpo.log_completions=true")
    # datasets reads parquet with pyarrow, which it declares; pandas is not a dependency of this package.
    df = concatenate_datasets([Dataset.from_parquet(str(f)) for f in files]).to_dict()
    missing = [c for c in ("step", "row_id", "raw_completion") if c not in df]
    if missing:
        raise ProbeError(f"--completions {folder}: the logged completions lack {missing} (logged before this "
                         "version of the trainer, which logs each completion's row id and raw text)")
    by_id = {rid: i for i, rid in enumerate(dataset["id"])}
    unknown = sorted(set(df["row_id"]) - set(by_id))
    if unknown:
        raise ProbeError(f"--completions {folder}: {len(unknown)} logged row ids are not in the recipe's training set "
                         f"(e.g. {unknown[0]!r}): rescore with the recipe that made the run")
    rows_cache: dict[str, dict] = {}
    rows, texts, groups, where = [], [], [], {}
    for step, rid, text in zip(df["step"], df["row_id"], df["raw_completion"]):
        if rid not in rows_cache:
            rows_cache[rid] = dataset[by_id[rid]]
        key = (int(step), rid)
        if key not in where:
            where[key] = len(groups)
            groups.append([])
        groups[where[key]].append(len(rows))
        rows.append(rows_cache[rid])
        texts.append(text)
    logged = {c: [float("nan") if v is None else float(v) for v in df[c]] for c in df
              if c not in ("step", "prompt", "completion", "row_id", "raw_completion", "advantage", "pred_masks")}
    return Rollouts(rows, texts, [None] * len(texts), groups, f"logged: {folder}", 0.0, logged)


# ---------------------------------------------------------------- scoring


def build_probe_rewards(recipe, tokenizer, extra: list[str] = ()) -> list[tuple[str, float | None, object]]:
    """``(name, weight, wrapped reward)``: the recipe's rewards (weights set), then each ``--reward`` (weight None:
    scored and reported, not part of the total). Extra specs: ``NAME`` or ``NAME:{"param": value}`` (JSON)."""
    from rewards import get_reward, wrap_rewards
    from rewards.registry import needs_mask_tokenizer
    from rl.grpo.trainer import build_rewards

    out = [(f.__name__, r.weight, f) for f, r in zip(build_rewards(recipe, tokenizer), recipe.rewards)]
    rt = recipe.reward_runtime
    for spec in extra:
        name, params = _reward_spec(spec)
        if needs_mask_tokenizer(name):
            params.setdefault("mask_tokenizer", recipe.data.mask_tokenizer)
        try:
            fn = get_reward(name, **params)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ProbeError(f"--reward {spec!r}: {e}") from None
        wrapped = wrap_rewards([fn], tokenizer=tokenizer, timeout_s=rt.timeout_s, max_failure_rate=rt.max_failure_rate,
                               isolation=rt.isolation)[0]
        taken = {n for n, _, _ in out}
        wrapped.__name__ = next(f"{wrapped.__name__}{s}" for s in ["", *(f"_{k}" for k in range(2, 99))]
                                if f"{wrapped.__name__}{s}" not in taken)
        out.append((wrapped.__name__, None, wrapped))
    return out


def _reward_spec(spec: str) -> tuple[str, dict]:
    name, brace, rest = spec.partition("{")
    if not brace:
        return spec, {}
    name = name.rstrip(":").strip()
    try:
        params = json.loads("{" + rest)
    except json.JSONDecodeError as e:
        raise ProbeError(f"--reward {spec!r}: the parameters after the name must be a JSON object ({e})") from None
    if not isinstance(params, dict):
        raise ProbeError(f"--reward {spec!r}: the parameters must be a JSON object")
    return name, params


def score(rollouts: Rollouts, rewards, tokenizer=None) -> dict[str, dict]:
    """``{name: {"values": [...], "seconds": s}}``: every reward on every completion, in TRL's calling contract."""
    from rewards.runtime import RewardFailureError

    columns = _columns(rollouts.rows)
    completions = [[{"role": "assistant", "content": t}] for t in rollouts.texts]
    prompts = [r["prompt"] for r in rollouts.rows]
    ids = rollouts.ids if rollouts.ids and rollouts.ids[0] is not None else None
    out = {}
    for name, _, fn in rewards:
        start = time.perf_counter()
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=ids, **columns)
        except RewardFailureError as e:
            raise ProbeError(str(e)) from None
        failed = sum(v is None for v in values)
        if failed == len(values):
            last = "; ".join(f"{k}: {m[:200]}" for k, m in getattr(fn, "last_error", {}).items())
            raise ProbeError(f"reward {name!r} failed on every completion ({last or 'returned None'})")
        out[name] = {"values": [math.nan if v is None else float(v) for v in values],
                     "seconds": time.perf_counter() - start, "failed": failed}
    return out


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = [k for k in rows[0] if k != "prompt"]
    return {k: [r[k] for r in rows] for k in keys}


def decoded_iou(rollouts: Rollouts, task: str, mask_tokenizer) -> list[float]:
    """The decoded-mask IoU of every completion with its GT (``mask_iou`` in the task's ``iou_mode``: GRES ``gres``,
    GCG ``instances``)."""
    from envs import get_task
    from rewards.iou import MaskIoU

    reward = MaskIoU(get_task(task).iou_mode, mask_tokenizer=mask_tokenizer)
    return reward(completions=rollouts.texts, **{k: v for k, v in _columns(rollouts.rows).items()
                                                 if k in ("image", "masks", "answer")})


def exact_matches(rollouts: Rollouts, task: str) -> list[bool]:
    """Whether the paper's binary answer_match (mask groups, exact) gives the completion full marks."""
    from envs import get_task

    exact = get_task(task).exact
    return [exact(t, r["answer"]) for t, r in zip(rollouts.texts, rollouts.rows)]


# ---------------------------------------------------------------- entry point


def probe(recipe, policy: str | None = None, prompts: int = 64, extra: list[str] = (), completions: str | None = None,
          out: str | None = None, say=print, cache: dict | None = None) -> dict:
    """Run the probe; returns the report (also written to ``out``). ``cache`` (a dict the caller keeps) lets later
    calls whose policy and sampling settings equal an earlier call's rescore its completions instead of sampling."""
    from rl.grpo.data import load_datasets
    from rl.grpo.monitor import task_of
    from tokenizer.load import load_mask_tokenizer

    task = task_of(recipe)
    start = time.perf_counter()
    train_ds, _ = load_datasets(recipe)
    key = sampling_key(recipe, policy, prompts)
    if completions:  # the raw texts were logged: no policy, no tokenizer needed
        rollouts = logged_rollouts(completions, train_ds)
        tokenizer, where = None, rollouts.source
    elif cache is not None and key in cache:
        rollouts, tokenizer, where = cache[key]
        say(f"probe: the same {len(rollouts.groups)} prompts x {len(rollouts.groups[0])} completions as an earlier "
            "variant (same policy and sampling settings): rescored, not resampled")
    else:
        if prompts < 1:
            raise ProbeError(f"--prompts must be >= 1, got {prompts}")
        model, processor, where = start_policy(recipe, policy)
        say(f"probe: sampling {prompts} prompts x {recipe.grpo.get('num_generations', 8)} completions from {where}")
        rollouts = sample(recipe, model, processor, train_ds, prompts)
        tokenizer = processor.tokenizer
        del model
        if cache is not None:
            cache[key] = (rollouts, tokenizer, where)
    rewards = build_probe_rewards(recipe, tokenizer, extra)
    scores = score(rollouts, rewards)
    weights = {name: w for name, w, _ in rewards if w is not None}
    tok = load_mask_tokenizer(recipe.data.mask_tokenizer)
    iou = decoded_iou(rollouts, task, tok)
    report = analyse(task, rollouts, scores, weights, iou, exact_matches(rollouts, task))
    report.update(task=task, policy=where, rollouts=rollouts.source, sampling_seconds=rollouts.seconds,
                  seconds=time.perf_counter() - start, mask_tokenizer=recipe.data.mask_tokenizer,
                  recipe_rewards=[r.name for r in recipe.rewards], thresholds={
                      "NO_GRADIENT": NO_GRADIENT, "NT_MASS": NT_MASS, "LOW_SIGNAL": LOW_SIGNAL, "OPPOSITE": OPPOSITE})
    if rollouts.logged:  # rescoring: how the live rewards compared with the logged ones
        report["logged_rewards"] = {k: v for k, v in rollouts.logged.items() if k in scores}
    write_outputs(Path(out) if out else Path(recipe.run.output_dir) / "probe", report, scores, iou)
    return report


def sampling_key(recipe, policy: str | None, prompts: int) -> str:
    """Everything that decides which completions ``sample`` draws: the policy (given, or the recipe's start: model and
    SFT settings), the data and prompt sampler, the seed and GRPO's generation settings. Rewards, their weights and
    the learning settings are left out: variants differing only there see the same completions."""
    from rl.eval.generation import grpo_sampling
    from rl.grpo.trainer import grpo_config
    from rl.recipe.config import to_dict

    with tempfile.TemporaryDirectory() as tmp:
        args = grpo_config(recipe, tmp)
    conf = to_dict(recipe)
    start = {"policy": policy} if policy else {k: conf.get(k) for k in ("model", "sft")} | {
        "output_dir": recipe.run.output_dir}
    return json.dumps({"start": start, "data": conf.get("data"), "sampling": conf.get("sampling"), "seed": recipe.run.seed,
                       "prompts": prompts, "num_generations": args.num_generations,
                       "max_completion_length": args.max_completion_length, "generate": grpo_sampling(args)},
                      sort_keys=True, default=str)


def probe_plan(plan, policy: str | None, prompts: int, out: Path, against: str | None = None, say=print) -> dict:
    """Every variant of an experiment plan probed from one policy, ranked by signal score; with ``against`` (a
    finished experiment's summary.json) the measured mean RL - SFT headline delta beside it and the Spearman."""
    from scipy.stats import spearmanr

    from envs import get_task
    from rl.experiments.experiment_report import by_seed, variant_deltas
    from rl.recipe.config import load_recipe

    measured, per_seed = {}, {}
    if against:
        path = Path(against)
        if not path.is_file():
            raise ProbeError(f"--against {path}: no such file (an experiment's summary.json)")
        summary = json.loads(path.read_text())
        head = get_task(summary["task"]).headline
        per_seed = by_seed(variant_deltas(summary), head)
        measured = {v: float(np.mean(list(d.values()))) for v, d in per_seed.items()}
    rows, cache = {}, {}
    for name, overrides in plan.variants.items():
        recipe = load_recipe(plan.recipe, [*overrides, *plan.overrides])
        say(f"probe: variant {name}")
        report = probe(recipe, policy, prompts, out=str(out / name), say=say, cache=cache)
        rows[name] = {"signal": report["signal"], "signal_all": report["signal_all"], "flagged": report["flagged"],
                      "zero_spread": report["rewards"]["total"]["zero_spread"],
                      "nt_mass": report["rewards"]["total"]["nt_mass"],
                      "exact_match_target_groups": report["exact_match"]["target_groups_with_a_match"],
                      "warnings": [w["text"] for w in report["warnings"]], "measured": measured.get(name)}
    ranking = {"plan": plan.source, "task": plan.task, "policy": policy, "prompts": prompts, "variants": rows}
    both = [v for v in rows if rows[v]["measured"] is not None]
    if len(both) >= 3:
        for score in ("signal", "signal_all"):
            ranking[f"spearman_{score}_vs_measured"] = float(spearmanr([rows[v][score] for v in both],
                                                                       [rows[v]["measured"] for v in both])[0])
        ranking["measured_metric"] = f"mean RL - SFT {get_task(plan.task).headline} ({against})"
        ranking["measured_reliability"] = ranking_reliability({v: per_seed[v] for v in both})
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranking.json").write_text(json.dumps(ranking, indent=1) + "\n")
    return ranking


def ranking_table(ranking: dict) -> str:
    rows = sorted(ranking["variants"].items(), key=lambda kv: -kv[1]["signal"])
    lines = [f"{'variant':<18} {'signal':>7} {'all':>7} {'0-spread':>8} {'NT adv':>7} {'measured':>9}  flags"]
    for v, r in rows:
        measured = "n/a" if r["measured"] is None else f"{r['measured']:+.2f}"
        lines.append(f"{v:<18} {r['signal']:+7.3f} {r['signal_all']:+7.3f} {r['zero_spread']:8.0%} "
                     f"{r['nt_mass']:7.0%} {measured:>9}  "
                     + ("FLAGGED: " + "; ".join(r["warnings"]) if r["flagged"] else ""))
    if "spearman_signal_vs_measured" in ranking:
        lines.append(f"Spearman(signal, {ranking['measured_metric']}): {ranking['spearman_signal_vs_measured']:+.2f}"
                     f"; signal_all (no-target prompts counted): {ranking['spearman_signal_all_vs_measured']:+.2f}")
    rel = ranking.get("measured_reliability")
    if rel:
        lines.append(f"The measured ranking across seeds: mean Spearman between two seeds {rel['pairwise']:+.2f}, "
                     f"reliability of the {rel['seeds']}-seed mean {rel['reliability']:.2f}: a score knowing each "
                     f"variant's expected gain would rank it at about {rel['ceiling']:.2f}")
    return "\n".join(lines)


