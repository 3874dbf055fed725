"""timing_s/*: every GRPO step's time split by phase, logged with the rewards, summed to the step within 10%."""

import pytest
import torch
from tiny_runs import tiny_recipe, train_tiny

from rl.grpo import timing

pytestmark = pytest.mark.usefixtures("one_thread")


def test_phases_are_logged_and_sum_to_the_step(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path, "grpo.max_steps=4", "grpo.save_strategy=steps", "grpo.save_steps=2",
                         "grpo.beta=0.04")  # beta > 0: reference log-probs are computed for the rollouts
    trainer, _, _ = train_tiny(recipe)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 4
    for h in logs:
        step = h["timing_s/step"]
        phases = [h[f"timing_s/{p}"] for p in timing.PHASES]
        assert step > 0 and all(v >= 0 for v in phases)
        assert h["timing_s/generation"] > 0 and h["timing_s/rewards"] > 0 and h["timing_s/forward_backward"] > 0
        assert h["timing_s/logprobs"] > 0 and h["timing_s/optimizer"] > 0
        assert sum(phases) == pytest.approx(step, rel=0.10)  # what no phase covers is under 10% of the step
        assert sum(h[f"timing_share/{p}"] for p in timing.PHASES) == pytest.approx(sum(phases) / step, rel=1e-6)
    assert any("timing_s/checkpoint" in h for h in logs[2:])  # the checkpoint after step 2, logged with step 3
    table = timing.summary(trainer.state.log_history)
    assert "generation" in table and "forward_backward" in table and "checkpoints (outside the steps)" in table
