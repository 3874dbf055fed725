"""The task object: a new task and a new environment are added the way the docs say (one ``Task``, one
``register_env``), and evaluation, recipes, reports, the demo's scoring and the reward probe then serve them
without an edit anywhere else. The toy task here counts objects: its answer is the mask groups in a row."""

import json

import numpy as np
import pytest

import envs
from envs import get_env, register_env, task_of
from envs.base import Environment, build_rows, predicted_masks
from envs.shapes import shapes_env
from envs.task import GRES, TASKS, Task, get_task, register_task
from rl.eval import evaluate
from rl.experiments import demo, probe_analysis
from rl.experiments import report as flags
from rl.grpo.data import shapes_rows
from rl.recipe.config import recipe_from_dict
from tests.test_eval_cli import LookupTokenizer


def _score_count(rows, texts, mask_tokenizer, out_dir, embed=None, with_captions=True):
    """Percent of rows with the right number of masks, and their mean best-match IoU."""
    right, ious = [], []
    with open(out_dir / "predictions.jsonl", "w") as f:
        for row, text in zip(rows, texts):
            pred = predicted_masks(text, row, mask_tokenizer)
            right.append(len(pred) == len(row["masks"]))
            ious.append(1.0 if right[-1] else 0.0)
            f.write(json.dumps({"id": row["id"], "masks": len(pred)}) + "\n")
    return {"count-acc": 100 * float(np.mean(right)), "IoU": 100 * float(np.mean(ious))}


COUNT = Task(
    name="count", metrics=("count-acc", "IoU"), mask_metric="IoU", max_new_tokens=40,
    recommended_rewards=("mask_iou", "no_repeat"),
    answer=lambda sample, texts: " ".join(texts) or "none",
    score=_score_count,
    kind=lambda row: f"{len(row['masks'])} objects",
    exact=lambda text, answer: text.strip() == answer.strip(),
    iou_mode="instances",
    gain_sources=(("better masks", "IoU"),),
    mask_flag_reason=lambda d: "more rows have the right count, but not better masks",
)


def _count_env(train_size=4, eval_size=4, seed=0, image_size=112):
    base = shapes_env("gres", train_size=train_size, eval_size=eval_size, seed=seed, image_size=image_size)

    def samples(split, bad_rows=None):
        return [{**s, "task": "count"} for s in base.samples(split)]

    return Environment(name="count_world", task="count", splits=base.splits, samples=samples)


@pytest.fixture
def registered():
    """The toy task and its world registered as a plugin would, and removed afterwards."""
    saved = (dict(TASKS), dict(envs.ENVIRONMENTS), dict(envs.TASK_OF), set(envs.GENERATED))
    register_task(COUNT)
    register_env("count_world", _count_env, "count", generated=True)
    register_env("tiny_gres_world", lambda **o: shapes_env("gres", **o), "gres")  # an env of an existing task
    yield
    for live, old in zip((TASKS, envs.ENVIRONMENTS, envs.TASK_OF, envs.GENERATED), saved):
        live.clear()
        live.update(old)


def test_a_new_task_flows_through_rows_evaluation_and_reports(registered, tmp_path):
    env = get_env("count_world", eval_size=6)
    assert task_of("count_world") is COUNT and envs.is_generated("count_world")
    tok = LookupTokenizer()
    samples = env.samples("val")
    rows = [r for s in samples for r in build_rows([s], tok)]
    assert rows[0]["answer"] == COUNT.answer(samples[0], [a for a in rows[0]["answer"].split(" ") if a != "none"])

    texts = [r["answer"] for r in rows]
    metrics = evaluate.report(rows, texts, tok, "count", tmp_path, grid=2)
    assert metrics == {"count-acc": 100.0, "IoU": 100.0}
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "count"
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == len(rows)

    # The reports speak the task's metrics: a count gain without a mask gain is flagged in its own words.
    d = flags.delta({"count-acc": 50, "IoU": 60}, {"count-acc": 70, "IoU": 55})
    assert flags.pair_flags("count", d) == [
        "IoU did not rise (-5.00) while count-acc rose (+20.00): more rows have the right count, but not better masks."]
    assert flags.gain_source("count", d).startswith("count-acc +20.00 with no rise")
    assert probe_analysis.answer_kind("count", rows[0]) == f"{len(rows[0]['masks'])} objects"

    # The demo's scoring and report text come from the task, and a recipe without rewards gets the task's.
    assert demo.RECIPES.keys() >= {"gres", "gcg"}
    recipe = recipe_from_dict({"data": {"env": "count_world"}}, check_files=False)
    assert [r.name for r in recipe.rewards] == ["mask_iou", "no_repeat"]
    # Training rows of a generated world come from the same registry.
    train_rows = shapes_rows(recipe, "train", 3, LookupTokenizer())
    assert train_rows and {r["task"] for r in train_rows} == {"count"} and all(r["answer"] for r in train_rows)


def test_an_env_of_an_existing_task_needs_only_its_registration(registered):
    assert task_of("tiny_gres_world") is GRES and not envs.is_generated("tiny_gres_world")
    with pytest.raises(Exception, match="data.train: required for env 'tiny_gres_world'"):
        recipe_from_dict({"data": {"env": "tiny_gres_world"}}, check_files=False)


def test_unknown_tasks_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; choose one of \['gcg', 'gres'\]"):
        get_task("nope")
    with pytest.raises(ValueError, match="unknown task"):
        register_env("broken", lambda **o: None, "nope")
    assert "broken" not in envs.ENVIRONMENTS
