"""Non-finite gradients: the step is skipped with weights and optimizer moments untouched, counted and logged;
too many in a row stop the run with a clear error and the last checkpoint intact."""

import pytest
import torch
from tiny_runs import tiny_recipe
from transformers import TrainerCallback

from rl import cli
from rl.grpo import checkpoint
from rl.grpo import data as rl_data
from rl.grpo import trainer as tr
from rl.policy import model as rl_policy

# Tiny matrices: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


class NaNGradientsAt(TrainerCallback):
    """Poisons one trainable parameter's gradient during the given steps; snapshots the state after every step."""

    def __init__(self, steps):
        self.steps, self.handle, self.after = set(steps), None, {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 in self.steps:
            p = next(p for n, p in model.named_parameters() if p.requires_grad and "layers.0" in n)
            self.handle = p.register_hook(lambda g: g * float("nan"))

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        moments = [s["exp_avg"].clone() for s in optimizer.state.values() if "exp_avg" in s]
        self.after[state.global_step] = ({n: p.detach().clone() for n, p in model.named_parameters()}, moments)


def _trainer(tmp_path, *overrides, callback):
    recipe = tiny_recipe(tmp_path, *overrides)
    ds, _ = rl_data.load_datasets(recipe)
    model, processor = rl_policy.prepare_policy(recipe, tmp_path / "run")
    return tr.build_trainer(recipe, tmp_path / "run", ds, None, model, processor, callbacks=[callback])


def test_a_non_finite_step_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    poison = NaNGradientsAt({2})
    trainer = _trainer(tmp_path, "grpo.max_steps=3", callback=poison)
    trainer.train()
    (w1, m1), (w2, m2), (w3, _) = poison.after[1], poison.after[2], poison.after[3]
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # step 2 left the weights ...
    assert len(m1) == len(m2) and all(torch.equal(a, b) for a, b in zip(m1, m2))  # ... and Adam's moments alone
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # step 3 trained again
    logged = [h["nonfinite_skipped"] for h in trainer.state.log_history if "nonfinite_skipped" in h]
    assert logged == [0.0, 1.0, 1.0] and trainer.nonfinite_skipped == 1


def test_too_many_non_finite_steps_in_a_row_stop_with_the_last_checkpoint_intact(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, "grpo.max_steps=5", "grpo.save_strategy=steps", "grpo.save_steps=1",
                       "run.max_nonfinite_steps=2", callback=NaNGradientsAt({2, 3}))
    with pytest.raises(tr.NonFiniteError, match="2 optimizer steps in a row had non-finite gradients"):
        trainer.train()
    last = checkpoint.last_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "checkpoint-2"
    from rl.policy.model import load_policy

    model, _ = load_policy(last)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_mid_step_applies_nothing_saves_the_last_step_and_says_what_to_lower(tmp_path, monkeypatch):
    """An OOM in the loss of step 3's second micro-step (after the first one's backward): the accumulated
    gradients are dropped, the weights stay those of step 2, which is saved, and the error names the knobs."""
    torch.manual_seed(0)
    snap = NaNGradientsAt(())  # no poison: only its per-step snapshots
    trainer = _trainer(tmp_path, "grpo.max_steps=5", "grpo.gradient_accumulation_steps=2",
                       "grpo.per_device_train_batch_size=4", "grpo.save_strategy=no", callback=snap)
    calls = {"n": 0}
    real = tr.SamtokGRPOTrainer.compute_loss

    def loss_then_oom(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # step 3 = micro-steps 5 and 6
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(tr.SamtokGRPOTrainer, "compute_loss", loss_then_oom)
    with pytest.raises(tr.OutOfMemoryStop) as e:
        trainer.train()
    msg = str(e.value)
    assert "out of memory in step 3" in msg and "update was not applied" in msg
    assert "grpo.per_device_train_batch_size (4" in msg and "grpo.max_completion_length (12)" in msg
    saved = tmp_path / "run" / "checkpoint-2"
    assert f"saved {saved}" in msg and checkpoint.last_checkpoint(tmp_path / "run") == saved
    weights, _ = snap.after[2]
    now = dict(trainer.model.named_parameters())
    assert all(torch.equal(weights[k], now[k].detach()) for k in weights)  # no partial update of step 3
    assert all(p.grad is None for p in trainer.model.parameters())  # the half-accumulated gradients are gone

    from rl.policy.model import load_policy

    reloaded, _ = load_policy(saved)
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trainer.model.state_dict().items())


def test_the_cli_exits_1_on_out_of_memory(tmp_path, monkeypatch, capsys):
    from rl.grpo import train as train_mod
    from rl.grpo.preemption import OutOfMemoryStop

    def oom(recipe, callbacks=()):
        raise OutOfMemoryStop("out of memory in step 1 (...). Lower grpo.per_device_train_batch_size (32)")

    monkeypatch.setattr(train_mod, "run", oom)
    monkeypatch.setattr(train_mod, "preflight", lambda recipe: None)
    assert cli.main(["train", "recipes/shapes_gres.yaml", f"run.output_dir={tmp_path}"]) == 1
    assert "error: out of memory in step 1" in capsys.readouterr().err


def none_on_no_target(completions, no_target=None, **kwargs):
    """Not applicable (None) on no-target rows, a varied score elsewhere."""
    return [None if nt else len(c if isinstance(c, str) else c[0]["content"]) % 7 / 7
            for c, nt in zip(completions, no_target)]


def test_a_group_whose_rewards_are_all_none_contributes_nothing_and_is_counted(tmp_path):
    torch.manual_seed(0)
    snap = NaNGradientsAt(())
    trainer = _trainer(tmp_path, "rewards=[{name: 'test_rl_nonfinite:none_on_no_target'}]",
                       "sampling.balance={no_target: 1.0}", "grpo.max_steps=1", "grpo.log_completions=true",
                       callback=snap)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/unscorable_groups" in h]
    assert logs[0]["rewards/unscorable_groups"] == 2 and logs[0]["rewards/unscorable_completions"] == 8
    import pandas as pd

    logged = pd.read_parquet(sorted((tmp_path / "run" / "completions").glob("*.parquet"))[-1])
    assert (logged["advantage"] == 0).all()
    weights, _ = snap.after[1]
    assert all(torch.equal(before[k], weights[k]) for k in before)  # nothing to learn from: nothing moved
