"""The report warnings fire on the tables they are about and stay silent on a real gain; the demo's and
the experiment's reports both carry them. Tables are built by hand: no training here."""

import math

import pytest

from rl.experiments import report

# README's measured default run: the gIoU gain is no-target decisions bought with targets.
SFT = {"gIoU": 17.49, "cIoU": 17.30, "N-acc": 0.00, "T-acc": 100.00}
RL = {"gIoU": 25.25, "cIoU": 14.55, "N-acc": 43.48, "T-acc": 87.01}


def _seeds(**columns):
    """Per-seed delta dicts from per-metric lists: _seeds(gIoU=[1, 2], cIoU=[...])."""
    n = len(next(iter(columns.values())))
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def test_mean_std_is_the_sample_std():
    assert report.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # ddof=1; ddof=0 would give 0.816
    mean, std = report.mean_std([4.0])
    assert mean == 4.0 and math.isnan(std)


def test_trade_and_mask_flags_fire_on_the_readme_run():
    flags = report.pair_flags("gres", report.delta(SFT, RL))
    assert len(flags) == 2
    trade, masks = flags
    assert "T-acc fell -12.99" in trade and "'No target.'" in trade
    assert "no skill was gained" not in trade  # T-acc fell less than N-acc rose
    assert "cIoU did not rise (-2.75)" in masks and "no-target decisions (N-acc +43.48)" in masks


def test_trade_flag_says_no_skill_when_t_acc_fell_as_much_as_n_acc_rose():
    d = {"gIoU": 2.0, "cIoU": 1.0, "N-acc": 10.0, "T-acc": -10.0}
    (flag,) = report.pair_flags("gres", d)
    assert "no skill was gained" in flag


def test_gcg_flags_mIoU_falling_while_AP50_rises():
    (flag,) = report.pair_flags("gcg", {"AP50": 4.0, "mIoU": -1.0, "recall": 2.0})
    assert "mIoU did not rise (-1.00) while AP50 rose (+4.00)" in flag
    assert report.pair_flags("gcg", {"AP50": 4.0, "mIoU": 1.0, "recall": 2.0}) == []


def test_no_flags_without_a_gain():
    assert report.pair_flags("gres", {"gIoU": -1.0, "cIoU": -3.0, "N-acc": 5.0, "T-acc": -5.0}) == []


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_seeds_prove_nothing(n):
    deltas = _seeds(gIoU=[5.0, 6.0][:n], cIoU=[4.0, 4.5][:n], **{"N-acc": [0.0] * n, "T-acc": [0.0] * n})
    flags = report.spread_flags("gres", deltas)
    assert len(flags) == 1 and "one seed proves nothing" in flags[0] and f"Only {n} seed" in flags[0]


def test_a_mean_delta_inside_the_seed_spread_is_flagged():
    deltas = _seeds(gIoU=[5.0, -3.0, 1.0], cIoU=[2.0, 2.5, 3.0], **{"N-acc": [0.0] * 3, "T-acc": [0.0] * 3})
    (flag,) = report.spread_flags("gres", deltas)
    assert "gIoU +1.00 ± 4.00" in flag and "cIoU" not in flag  # cIoU's +2.5 ± 0.5 is outside its spread
    gcg = _seeds(AP50=[3.0, 3.2, 2.8], mIoU=[0.5, -0.5, 0.3], recall=[1.0, 1.0, 1.0])
    (flag,) = report.spread_flags("gcg", gcg)
    assert "mIoU" in flag and "AP50" not in flag


def test_a_real_gain_over_three_seeds_raises_no_flag():
    deltas = _seeds(gIoU=[4.0, 5.0, 6.0], cIoU=[3.0, 3.5, 4.0], **{"N-acc": [1.0, 2.0, 1.0], "T-acc": [0.0, 0.0, 0.0]})
    assert report.variant_flags("gres", deltas) == []
    sentence = report.gain_source("gres", report.mean_delta(deltas))
    assert sentence.startswith("gIoU +5.00 comes from better masks (cIoU +3.50) and no-target decisions")


def test_variant_flags_use_the_mean_delta():
    deltas = _seeds(gIoU=[4.0, 5.0, 6.0], cIoU=[3.0, 3.5, 4.0], **{"N-acc": [1.0, 2.0, 1.0], "T-acc": [-1.0, -2.0, -3.0]})
    (flag,) = report.variant_flags("gres", deltas)
    assert "T-acc fell -2.00 points while gIoU rose +5.00" in flag


def test_demo_report_carries_the_flags(tmp_path):
    from rl.experiments import demo
    from rl.recipe.config import load_recipe

    recipe = load_recipe(demo.RECIPE)
    results = {"SFT": {**SFT, "mean reward": 20.0}, "RL": {**RL, "mean reward": 30.0}}
    text = demo.write_report(results, recipe, tmp_path, 60.0, 200, tmp_path / "curve.png")
    assert "Measured gIoU gain of RL over SFT: +7.76 points (target: >= +3)." in text
    notes = [line for line in text.splitlines() if line.startswith("Note: ")]
    assert len(notes) == 3, notes  # trade, masks, one seed
    assert "'No target.'" in notes[0] and "not better masks" in notes[1] and "one seed proves nothing" in notes[2]
    assert (tmp_path / "report.md").read_text() == text + "\n"


def test_demo_report_for_gcg_uses_gcg_metrics(tmp_path):
    from rl.experiments import demo
    from rl.recipe.config import load_recipe

    recipe = load_recipe(demo.RECIPES["gcg"])
    results = {"SFT": {"AP50": 10.0, "mIoU": 30.0, "recall": 20.0, "mean reward": 40.0},
               "RL": {"AP50": 14.0, "mIoU": 28.0, "recall": 25.0, "mean reward": 50.0}}
    text = demo.write_report(results, recipe, tmp_path, 60.0, 50, tmp_path / "curve.png", task="gcg")
    assert "| policy | AP50 | mIoU | recall | mean reward |" in text and "gIoU" not in text
    assert "Measured AP50 gain of RL over SFT: +4.00 points." in text
    assert "Note: mIoU did not rise (-2.00) while AP50 rose (+4.00)" in text
