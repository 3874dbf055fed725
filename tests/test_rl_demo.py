"""The default run's pipeline end to end at toy size: SFT, GRPO, both evaluations, the report and its figures.

The real `make demo` (trained tiny mask tokenizer, full step counts) takes minutes; this checks the plumbing
with the random-init tokenizer and a few steps.
"""

import torch

from rl import cli
from rl.experiments import demo


def test_demo_pipeline_writes_the_report(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        rc = cli.main(["demo", "--out", str(tmp_path / "demo"), "--test-samples", "6",
            "data.mask_tokenizer=random", "data.shapes.n_train=16", "data.shapes.n_eval=0", "sft.args.max_steps=3",
            "grpo.max_steps=5", "grpo.save_steps=5", "grpo.logging_steps=1", "grpo.max_completion_length=16",
            "run.report_to=[none]", "monitor.eval_steps=2", "monitor.eval_samples=4",
        ])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "| SFT |" in report and "| RL |" in report and "gIoU gain of RL over SFT" in report
    assert "GRPO 5 steps with answer_match (coarse) x1 + mask_iou x1." in report  # what GRPO optimised, from the recipe
    # Learning: the sampled reward per fifth of the run and the held-out monitor's first and last points.
    assert "mean per fifth of GRPO" in report and "held-out monitor (4 val samples, greedy), step 0 -> 4: gIoU" in report
    assert report.splitlines()[0] in capsys.readouterr().out  # printed too
    for png in ("learning_curves.png", "eval_sft/grid.png", "eval_rl/grid.png"):
        assert (out / png).stat().st_size > 1000, png
    assert (out / "recipe.yaml").is_file() and (out / "final" / "config.json").is_file()


def test_report_names_every_reward_of_the_recipe():
    from rl.recipe.config import load_recipe

    recipe = load_recipe(demo.RECIPE, ["rewards=[{name: mask_iou, weight: 2}, {name: answer_match, weight: 0.5}]"])
    assert demo.reward_summary(recipe) == "mask_iou x2 + answer_match x0.5"
    assert demo.answer_grading(recipe) == "binary"  # the column's grading is answer_match's, not the first reward's
