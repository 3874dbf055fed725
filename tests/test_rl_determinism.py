"""Determinism: the same seed gives the same trajectory (losses, rewards, sampled completions); another seed
gives other rollouts; data-loading workers do not change the batches."""

import pandas as pd
import pytest
import torch
from resume_run import untimed
from tiny_runs import tiny_recipe

from rl.grpo import data as rl_data
from rl.grpo import trainer as tr
from rl.policy import model as rl_policy

# Tiny matrices: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _trajectory(tmp_path, name, *overrides):
    recipe = tiny_recipe(tmp_path, f"run.output_dir={tmp_path / name}", "grpo.max_steps=3", "grpo.log_completions=true",
                         *overrides)
    ds, _ = rl_data.load_datasets(recipe)
    model, processor = rl_policy.prepare_policy(recipe, tmp_path / name)
    trainer = tr.build_trainer(recipe, tmp_path / name, ds, None, model, processor)
    trainer.train()
    history = [untimed(h) for h in trainer.state.log_history]
    frames = [pd.read_parquet(f) for f in sorted((tmp_path / name / "completions").glob("*.parquet"))]
    return history, [f[["prompt", "completion"]].to_dict("list") for f in frames]


def test_same_seed_same_trajectory_other_seed_other_rollouts_workers_change_nothing(tmp_path):
    torch.manual_seed(123)  # the run must not depend on the caller's global RNG state
    a = _trajectory(tmp_path, "a")
    torch.manual_seed(456)
    assert _trajectory(tmp_path, "b") == a
    assert _trajectory(tmp_path, "workers", "grpo.dataloader_num_workers=2") == a  # batches built in 2 workers
    c = _trajectory(tmp_path, "c", "run.seed=1")
    assert [f["completion"] for f in c[1]] != [f["completion"] for f in a[1]]
