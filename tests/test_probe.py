"""``samtok-rl rewards probe``: the statistics on hand-built groups, the warnings, rescoring logged completions, and
clear errors with nothing written."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny_recipe, train_tiny

from rl import cli
from rl.experiments import probe
from tokenizer.codec import NO_TARGET

pytestmark = pytest.mark.usefixtures("one_thread")


def _rollouts(texts_per_group, no_target_groups):
    rows, texts, groups = [], [], []
    for k, texts_k in enumerate(texts_per_group):
        nt = k in no_target_groups
        row = {"id": f"r{k}", "no_target": nt, "masks": [] if nt else [{"size": [4, 4], "counts": "0"}], "answer": ""}
        groups.append(list(range(len(texts), len(texts) + len(texts_k))))
        rows += [row] * len(texts_k)
        texts += texts_k
    return probe.Rollouts(rows, texts, [None] * len(texts), groups)


def test_known_spread_gives_the_known_zero_spread_share_and_advantage_split():
    # Two no-target prompts, two target prompts, 4 completions each.
    a, n = "<|mt_start|><|mt_0001|><|mt_0257|><|mt_end|>", NO_TARGET
    ro = _rollouts([[n, n, n, n], [n, a, n, a], [a, a, a, a], [a, "x", "y", "z"]], no_target_groups={0, 1})
    values = [1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    iou = [1, 1, 1, 1, 1, 0, 1, 0, 0.2, 0.2, 0.2, 0.2, 0.9, 0.1, 0.3, 0.0]
    scores = {"toy": {"values": [float(v) for v in values], "seconds": 0.016, "failed": 0}}
    report = probe.analyse("gres", ro, scores, {"toy": 1.0}, iou, [False] * 16)
    s = report["rewards"]["toy"]
    assert s["zero_spread"] == 0.5  # groups 0 and 2 have no spread
    # By hand: TRL's (r - mean) / (std + 1e-4) with the sample std.
    std1, std3 = math.sqrt(4 * 0.25 / 3), math.sqrt((0.75**2 + 3 * 0.25**2) / 3)
    mass1 = 4 * 0.5 / (std1 + 1e-4)
    mass3 = (0.75 + 3 * 0.25) / (std3 + 1e-4)
    assert s["nt_mass"] == pytest.approx((mass1 / 2) / (mass1 + mass3))  # the two 'No target.' of group 1
    # Only group 3 is a target group with spread; its rewards rank exactly as the IoU's top completion.
    rho3 = np.corrcoef([4, 2, 2, 2], [4, 2, 3, 1])[0, 1]  # Spearman = Pearson of the ranks (ties averaged)
    assert s["signal"] == pytest.approx(mass3 * rho3 / (mass1 + mass3))
    # signal_all also counts group 1, a no-target prompt whose reward agrees exactly with ReLA's per-sample score.
    assert s["signal_all"] == pytest.approx((mass1 * 1.0 + mass3 * rho3) / (mass1 + mass3))
    assert report["rewards"]["total"]["zero_spread"] == 0.5 and report["flagged"] is False
    assert s["by_kind"]["no_target"]["zero_spread"] == 0.5 and s["by_kind"]["single"]["zero_spread"] == 0.5
    assert s["seconds_per_completion"] == pytest.approx(0.001)


def test_the_measured_rankings_reliability_across_seeds():
    from rl.experiments.probe_analysis import ranking_reliability

    # Three seeds that order four variants identically: perfectly reproducible.
    same = {v: {0: d, 1: d + 1, 2: 2 * d} for v, d in zip("abcd", (1.0, 2.0, 3.0, 4.0))}
    assert ranking_reliability(same) == pytest.approx({"seeds": 3, "pairs": 3, "pairwise": 1.0, "reliability": 1.0,
                                                       "ceiling": 1.0})
    # Seed 1 reverses seed 0, seed 2 agrees with seed 0: pairwise Spearman 1, -1 and -1 (mean -1/3), so the 3-seed
    # mean is no more reproducible than noise (Spearman-Brown 3r / (1 + 2r) = -3, floored at 0).
    mixed = {v: {0: d, 1: -d, 2: d} for v, d in zip("abcd", (1.0, 2.0, 3.0, 4.0))}
    r = ranking_reliability(mixed)
    assert r["pairwise"] == pytest.approx(-1 / 3) and r["reliability"] == 0.0 and r["ceiling"] == 0.0
    # A known middle case: two seeds agree at Spearman 0.8 (one swap of four: 1 - 6*2/(4*15)).
    two = {"a": {0: 1, 1: 1}, "b": {0: 2, 1: 3}, "c": {0: 3, 1: 2}, "d": {0: 4, 1: 4}}
    r = ranking_reliability(two)
    assert r["pairwise"] == pytest.approx(0.8) and r["reliability"] == pytest.approx(1.6 / 1.8)
    assert r["ceiling"] == pytest.approx(math.sqrt(1.6 / 1.8))
    assert ranking_reliability({"a": {0: 1.0}, "b": {0: 2.0}, "c": {0: 3.0}}) is None  # one seed


def test_a_reward_that_ignores_the_completion_is_flagged():
    ro = _rollouts([["a", "b", "c", "d"], ["e", "f", "g", "h"]], no_target_groups=set())
    scores = {"per_prompt": {"values": [0.3] * 4 + [0.8] * 4, "seconds": 0.0, "failed": 0}}
    report = probe.analyse("gres", ro, scores, {"per_prompt": 1.0}, [0.1, 0.5, 0.9, 0.2] * 2, [False] * 8)
    kinds = {w["kind"] for w in report["warnings"]}
    assert {"ignores_completion", "no_gradient"} <= kinds and report["flagged"]
    assert "100% of groups give no gradient" in " ".join(w["text"] for w in report["warnings"])


def test_collapse_and_opposite_rankings_are_named():
    n, a = NO_TARGET, "<|mt_start|><|mt_0001|><|mt_0257|><|mt_end|>"
    # The only spread is on a no-target prompt; the target groups all score 0: the paper's reward in the 2x256 regime.
    ro = _rollouts([[n, a, n, a], [a, a, a, a], [a, a, a, a]], no_target_groups={0})
    scores = {"binary": {"values": [1, 0, 1, 0] + [0] * 8, "seconds": 0.0, "failed": 0},
              "against": {"values": [0, 0, 0, 0, 0.9, 0.1, 0.5, 0.3, 0.9, 0.1, 0.5, 0.3], "seconds": 0.0, "failed": 0}}
    iou = [1, 0, 1, 0, 0.1, 0.9, 0.5, 0.7, 0.1, 0.9, 0.5, 0.7]
    report = probe.analyse("gres", ro, scores, {"binary": 1.0}, iou, [False] * 12)
    texts = " ".join(w["text"] for w in report["warnings"])
    assert "67% of groups give no gradient" in texts and "expect collapse into 'No target.'" in texts
    assert "against ranks completions opposite to IoU" in texts and report["flagged"]


def test_rescoring_logged_completions_equals_scoring_them_live(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path, "grpo.log_completions=true", "grpo.logging_steps=1", "grpo.max_steps=3")
    train_tiny(recipe)
    from rl.grpo.data import load_datasets

    ds, _ = load_datasets(recipe)
    ro = probe.logged_rollouts(tmp_path / "run", ds)
    assert len(ro.texts) == 3 * 8 and all(len(g) == 4 for g in ro.groups)  # 2 prompts x 4 per step
    rewards = probe.build_probe_rewards(recipe, None)
    scores = probe.score(ro, rewards)
    for name in ("answer_match", "mask_format", "varied_reward"):
        assert scores[name]["values"] == pytest.approx(ro.logged[name]), name  # what TRL logged at training time


def test_completion_ids_are_decoded_once_per_round_for_all_rewards_and_the_completion_log(tmp_path, monkeypatch):
    import pandas as pd

    from rewards import runtime
    from rl.grpo.trainer import SamtokGRPOTrainer

    decoded, rounds = [], []
    real_decode, real_after = runtime.decode_raw, SamtokGRPOTrainer.after_rewards
    monkeypatch.setattr(runtime, "decode_raw", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    monkeypatch.setattr(SamtokGRPOTrainer, "after_rewards", lambda *a: rounds.append(1) or real_after(*a))
    torch.manual_seed(0)
    train_tiny(tiny_recipe(tmp_path, "grpo.log_completions=true", "grpo.max_steps=2"))
    assert len(rounds) == 2 and len(decoded) == len(rounds)  # three rewards and the log share one decode
    logged = pd.concat(pd.read_parquet(f) for f in sorted((tmp_path / "run" / "completions").glob("*.parquet")))
    assert {"raw_completion", "pred_masks", "row_id"} <= set(logged.columns) and len(logged) == 2 * 8


def test_bad_inputs_are_named_and_nothing_is_written(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "out"
    args = ["rewards", "probe", str(tmp_path / "recipe.yaml")]
    from rl.recipe.config import save_resolved

    save_resolved(recipe, tmp_path / "recipe.yaml")
    assert cli.main([*args, "--completions", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert f"--completions {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main([*args, "--completions", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no logged completions" in capsys.readouterr().err
    # A reward that raises on every completion.
    (tmp_path / "bad.py").write_text("def boom(completions, **kw):\n    raise RuntimeError('kaput')\n")
    policy = tmp_path / "run" / "policy-init"
    from rl.policy.model import prepare_policy

    prepare_policy(recipe, tmp_path / "run")
    assert cli.main([*args, "--policy", str(policy), "--prompts", "2", "--reward", f"{tmp_path / 'bad.py'}:boom",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "reward 'boom' failed on every completion (RuntimeError: kaput)" in err
    # An empty training set.
    assert cli.main([*args, "data.max_train_samples=0", "--policy", str(policy), "--out", str(out)]) == 2
    assert "the recipe's training set is empty" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".probe-*"))


def test_probe_command_end_to_end(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, "rewards=[{name: answer_match, params: {grading: binary}}, {name: mask_iou}]",
                         "data.mask_tokenizer=random")
    from rl.policy.model import prepare_policy
    from rl.recipe.config import save_resolved

    save_resolved(recipe, tmp_path / "recipe.yaml")
    prepare_policy(recipe, tmp_path / "run")
    out = tmp_path / "out"
    rc = cli.main(["rewards", "probe", str(tmp_path / "recipe.yaml"), "--policy", str(tmp_path / "run" / "policy-init"),
                   "--prompts", "3", "--reward", 'answer_match{"grading": "coarse"}', "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "signal score:" in printed and "answer_match_2" in printed and "exact match" in printed
    report = json.loads((out / "probe.json").read_text())
    assert report["groups"] == 3 and report["completions"] == 12 and report["rewards"]["answer_match_2"]["weight"] is None
    assert set(report["rewards"]) == {"answer_match", "mask_iou", "answer_match_2", "total"}
    assert (out / "probe.png").stat().st_size > 5000
    assert Path(report["policy"]) == tmp_path / "run" / "policy-init"


def test_a_plan_is_probed_variant_by_variant_and_ranked_against_measured_deltas(tmp_path, capsys):
    from rl.policy.model import prepare_policy
    from rl.recipe.config import load_recipe, save_resolved

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "shapes_gres.yaml", [
        "data.mask_tokenizer=random", "data.shapes.n_train=8", f"run.output_dir={tmp_path / 'run'}",
        "grpo.num_generations=4", "grpo.per_device_train_batch_size=8", "grpo.max_completion_length=8"])
    save_resolved(recipe, tmp_path / "recipe.yaml")
    prepare_policy(recipe, tmp_path / "run")
    (tmp_path / "plan.yaml").write_text(
        "task: gres\nrecipe: recipe.yaml\nvariants:\n  varied: []\n"
        "  binary: [\"rewards=[{name: answer_match, params: {grading: binary}}]\"]\n"
        "  flat: [\"rewards=[{name: 'tiny_runs:constant_reward'}]\"]\n"
        "  hot: [grpo.temperature=1.7]\n")
    runs = [{"variant": "sft", "seed": s, "policy": "SFT", "metrics": {"gIoU": 50.0}} for s in (0, 1)]
    runs += [{"variant": v, "seed": s, "policy": "RL", "metrics": {"gIoU": 50.0 + d * (1 + s)}}
             for v, d in (("varied", 3.0), ("binary", -1.0), ("flat", 0.0)) for s in (0, 1)]
    (tmp_path / "summary.json").write_text(json.dumps(
        {"task": "gres", "runs": runs, "sft_of": {"varied": "sft", "binary": "sft", "flat": "sft"}}))
    rc = cli.main(["rewards", "probe", str(tmp_path / "plan.yaml"), "--policy", str(tmp_path / "run" / "policy-init"),
                   "--prompts", "3", "--out", str(tmp_path / "probe"), "--against", str(tmp_path / "summary.json")])
    assert rc == 0
    ranking = json.loads((tmp_path / "probe" / "ranking.json").read_text())
    assert set(ranking["variants"]) == {"varied", "binary", "flat", "hot"}
    assert ranking["variants"]["varied"]["measured"] == 4.5 and "spearman_signal_vs_measured" in ranking
    assert "spearman_signal_all_vs_measured" in ranking
    # both seeds order the variants alike: the measured ranking is fully reproducible
    assert ranking["measured_reliability"]["pairwise"] == 1.0 and ranking["measured_reliability"]["seeds"] == 2
    assert ranking["variants"]["flat"]["flagged"] and ranking["variants"]["flat"]["signal"] == 0.0
    assert (tmp_path / "probe" / "binary" / "probe.json").is_file()
    printed = capsys.readouterr().out
    assert "Spearman(signal, mean RL - SFT gIoU" in printed and "reliability of the 2-seed mean 1.00" in printed
    # Variants that differ only in their rewards are scored on one set of completions; another temperature resamples.
    assert printed.count("probe: sampling 3 prompts") == 2 and printed.count("rescored, not resampled") == 2
    # and rescoring the shared completions equals probing that variant on its own
    alone = tmp_path / "binary_alone"
    assert cli.main(["rewards", "probe", str(tmp_path / "recipe.yaml"), "rewards=[{name: answer_match, params: {grading: "
                     "binary}}]", "--policy", str(tmp_path / "run" / "policy-init"), "--prompts", "3", "--out", str(alone)]) == 0
    shared = json.loads((tmp_path / "probe" / "binary" / "probe.json").read_text())
    own = json.loads((alone / "probe.json").read_text())
    for key in ("mean", "spread", "zero_spread", "signal"):
        assert shared["rewards"]["answer_match"][key] == own["rewards"]["answer_match"][key], key
    assert shared["decoded_iou"] == own["decoded_iou"]
