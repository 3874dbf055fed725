"""rl.grpo.sampling: GRPO prompts drawn by answer kind in the configured proportions, in TRL's repeat layout,
reproducibly per epoch; the recipe switch reaches the trainer and bad shares are refused."""

from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rl.grpo import sampling
from rl.grpo.batch import join, take, trim_padding
from rl.grpo.trainer import SamtokGRPOTrainer
from rl.recipe.config import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["no_target"] * 10 + ["single"] * 60 + ["multi"] * 30


def test_answer_kinds_and_exact_counts():
    assert [sampling.answer_kind(nt, n) for nt, n in [(True, 0), (False, 0), (False, 1), (False, 3)]] == [
        "no_target", "no_target", "single", "multi"]
    assert sampling.kind_counts({"no_target": 1, "single": 1, "multi": 1}, 100) == {
        "no_target": 34, "single": 33, "multi": 33}
    assert sum(sampling.kind_counts({"no_target": 0.5, "single": 0.3, "multi": 0.2}, 37).values()) == 37


def test_balanced_sampler_draws_the_shares_and_keeps_trls_layout():
    s = sampling.BalancedRepeatSampler(list(range(100)), mini_repeat_count=4, batch_size=5, repeat_count=2, seed=3,
                                       kinds=KINDS, shares={"no_target": 0.5, "single": 0.3, "multi": 0.2})
    out = list(s)
    assert len(out) == len(s) == 100 * 4 * 2
    # TRL's layout: each prompt's 4 copies together, each batch of 5 prompts repeated twice
    prompts = out[::4]
    assert all(out[i : i + 4] == [out[i]] * 4 for i in range(0, len(out), 4))
    batches = [prompts[i : i + 10] for i in range(0, len(prompts), 10)]
    assert all(b[:5] == b[5:] for b in batches)
    order = [b[0:5] for b in batches]
    drawn = Counter(KINDS[i] for batch in order for i in batch)
    assert drawn == {"no_target": 50, "single": 30, "multi": 20}  # exact, the 10 no-target rows cycled 5 times
    no_target = Counter(i for batch in order for i in batch if KINDS[i] == "no_target")
    assert set(no_target.values()) == {5}
    # per epoch reproducible (resume, every rank alike), and a new order each epoch
    again = sampling.BalancedRepeatSampler(list(range(100)), 4, 5, 2, seed=3, kinds=KINDS,
                                           shares={"no_target": 0.5, "single": 0.3, "multi": 0.2})
    assert list(again) == out
    again.set_epoch(1)
    assert list(again) != out


def _prefix_gap(order, kinds, shares) -> float:
    """The largest gap, over every prefix of ``order``, between a kind's count and its share of the prefix."""
    seen, worst = Counter(), 0.0
    for t, i in enumerate(order, 1):
        seen[kinds[i]] += 1
        worst = max(worst, *(abs(seen[k] - t * share) for k, share in shares.items()))
    return worst


def test_stratified_order_spreads_the_kinds_evenly_and_keeps_the_prompts():
    # The uniform shuffle's prompts, each once per epoch, in an order where every stretch holds each kind in share.
    plain = sampling.EpochSeededRepeatSampler(list(range(100)), 1, 1, 1, True, seed=3)
    strat = sampling.EpochSeededRepeatSampler(list(range(100)), 1, 1, 1, True, seed=3)
    strat.kinds = KINDS
    order = list(strat)
    assert sorted(order) == sorted(plain) == list(range(100))
    shares = {"no_target": 0.1, "single": 0.6, "multi": 0.3}
    assert _prefix_gap(order, KINDS, shares) <= 1.0 < _prefix_gap(list(plain), KINDS, shares)
    again = sampling.EpochSeededRepeatSampler(list(range(100)), 1, 1, 1, True, seed=3)
    again.kinds = KINDS
    assert list(again) == order  # a function of seed and epoch (resume, every rank alike)
    again.set_epoch(1)
    assert list(again) != order and sorted(again) == list(range(100))
    # With balance: the same exact counts per kind as unstratified, spread evenly.
    bal = {"no_target": 0.5, "single": 0.3, "multi": 0.2}
    b = sampling.BalancedRepeatSampler(list(range(100)), 1, kinds=KINDS, shares=bal, seed=3, stratify=True)
    drawn = b.epoch_order()
    assert Counter(KINDS[i] for i in drawn) == {"no_target": 50, "single": 30, "multi": 20}
    assert _prefix_gap(drawn, KINDS, bal) <= 1.0


def test_a_kind_without_rows_is_an_error_naming_it():
    with pytest.raises(ValueError, match="asks for multi prompts.*'multi': 0"):
        sampling.BalancedRepeatSampler(list(range(3)), 2, kinds=["single", "no_target", "single"],
                                       shares={"multi": 1.0, "single": 1.0})


def test_recipe_refuses_bad_shares():
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "shapes_gres.yaml",
                    ["sampling.balance={no_targets: 0.5, single: -1}", "sampling.blance=1"])
    msg = str(e.value)
    assert "sampling.balance.no_targets: unknown answer kind (did you mean 'no_target'?)" in msg
    assert "sampling.balance.single: -1 must be a number >= 0" in msg
    assert "sampling.blance: unknown key" in msg


def test_the_trainer_draws_balanced_prompts(tmp_path):
    """Through the recipe: every prompt GRPO generates for is a no-target one when the share says so."""
    from tiny_runs import tiny_recipe, train_tiny

    torch.set_num_threads(1)
    recipe = tiny_recipe(tmp_path, "sampling.balance={no_target: 1.0}", "grpo.max_steps=1",
                         "grpo.log_completions=true")
    trainer, _, _ = train_tiny(recipe)
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    assert isinstance(sampler, sampling.BalancedRepeatSampler)
    rows = trainer.train_dataset
    assert any(not nt for nt in rows["no_target"])  # the data has target rows; none was drawn
    assert all(rows[i]["no_target"] or not rows[i]["masks"] for i in sampler)
    import pandas as pd

    logged = pd.read_parquet(sorted((tmp_path / "run" / "completions").glob("*.parquet"))[-1])
    no_target_prompts = {p for i in range(len(rows)) if rows[i]["no_target"] for p in [rows[i]["question"]]}
    assert all(any(q in str(p) for q in no_target_prompts) for p in logged["prompt"])


def test_the_trainer_stratifies_and_logs_the_reward_by_kind(tmp_path):
    from tiny_runs import tiny_recipe, train_tiny

    torch.set_num_threads(1)
    trainer, _, _ = train_tiny(tiny_recipe(tmp_path, "sampling.stratify=true", "grpo.max_steps=2"))
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    assert sampler.kinds == sampling.dataset_kinds(trainer.train_dataset)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    by_kind = {k for h in logged for k in h if k.startswith("reward_by_kind/")}
    assert by_kind and by_kind <= {f"reward_by_kind/{k}" for k in ("no_target", "single", "multi")}


# ---------------------------------------------------------------- dynamic sampling


def test_group_spread_counts_scorable_completions_only():
    nan = float("nan")
    r = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0],  # group 0: totals 1, 1, 1, 2
                      [0.5, 0.5], [0.5, 0.5], [nan, nan], [1.0, 0.0],  # group 1: 1, 1, unscorable, 1 -> 0
                      [nan, nan], [nan, nan], [nan, nan], [3.0, nan]])  # group 2: one scorable -> NaN
    s = sampling.group_spread(r, torch.tensor([1.0, 1.0]), 4)
    assert s[0] == pytest.approx(torch.tensor([1.0, 1, 1, 2]).std().item())
    assert s[1] == 0 and torch.isnan(s[2])


def test_take_and_join_repad_left_and_right():
    a = {"prompt_ids": torch.tensor([[0, 5], [6, 7]]), "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
         "completion_ids": torch.tensor([[1, 0], [2, 3]]), "completion_mask": torch.tensor([[1, 0], [1, 1]]),
         "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(3),
         "pixel_values": [torch.ones(2, 3), torch.ones(4, 3)], "num_images": [1, 1],
         "mm_token_type_ids": torch.tensor([[0, 1, 0, 0], [1, 1, 0, 0]])}
    b = {"prompt_ids": torch.tensor([[9, 9, 9]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[4, 4, 4]]), "completion_mask": torch.tensor([[1, 1, 1]]),
         "advantages": torch.tensor([1.0]), "num_items_in_batch": torch.tensor(3),
         "pixel_values": [torch.zeros(1, 3)], "num_images": [1],
         "mm_token_type_ids": torch.tensor([[1, 1, 0, 0, 0, 0]])}
    out = join([take(a, [1]), b], pad_token_id=0)
    # prompt part left-padded to the joined prompt width (3), completion part right-padded (3): rows stay aligned
    # with cat(prompt_ids, completion_ids), as the model's rope index needs
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert out["mm_token_type_ids"].shape[1] == out["prompt_ids"].shape[1] + out["completion_ids"].shape[1]
    assert out["prompt_ids"].tolist() == [[0, 6, 7], [9, 9, 9]]  # prompts stay left-padded
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[2, 3, 0], [4, 4, 4]]  # completions right-padded
    assert out["completion_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert out["advantages"].tolist() == [-0.5, 1.0]
    assert [p.shape[0] for p in out["pixel_values"]] == [4, 1] and out["num_images"] == [1, 1]
    with pytest.raises(ValueError, match="does not know how to join.*'weird'"):
        join([{"weird": torch.ones(1, 2)}, {"weird": torch.ones(1, 3)}], 0)


def target_only_reward(completions, no_target=None, **kwargs):
    """Constant on no-target rows (those groups have no spread), varied on the others."""
    return [0.5 if nt else len(c if isinstance(c, str) else c[0]["content"]) % 7 / 7
            for c, nt in zip(completions, no_target)]


def test_dynamic_sampling_trains_only_groups_with_spread(tmp_path, monkeypatch):
    from tiny_runs import tiny_recipe, train_tiny

    torch.set_num_threads(1)
    batches = []
    real = SamtokGRPOTrainer.dynamic_rollout
    monkeypatch.setattr(SamtokGRPOTrainer, "dynamic_rollout", lambda *a: batches.append(real(*a)) or batches[-1])
    recipe = tiny_recipe(tmp_path, "rewards=[{name: 'test_rl_sampling:target_only_reward'}]",
                         "sampling.balance={no_target: 0.5, single: 0.5}", "sampling.dynamic.enabled=true",
                         "sampling.dynamic.max_rounds=4", "grpo.max_steps=2", "grpo.gradient_accumulation_steps=2",
                         "grpo.per_device_train_batch_size=4", "grpo.save_strategy=no")
    trainer, _, _ = train_tiny(recipe)
    assert len(batches) == 2  # one generation batch per step (steps_per_generation = GA = 2)
    for batch in batches:
        assert batch["completion_ids"].shape[0] == 8  # the batch keeps its size (2 micro-steps x 4)
        groups = batch["advantages"].view(-1, 4)
        assert (groups.abs().sum(1) > 0).all()  # every trained group has a learning signal
        assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"].sum())
    logs = [h for h in trainer.state.log_history if "sampling/frac_filtered" in h]
    assert len(logs) == 2 and all(h["sampling/effective_batch"] == 8 for h in logs)
    # with half the prompts no-target, some group was filtered and replaced by an extra round
    assert any(h["sampling/frac_filtered"] > 0 and h["sampling/extra_rounds"] >= 1 for h in logs)


def test_dynamic_sampling_is_validated():
    with pytest.raises(RecipeError) as e:
        load_recipe(ROOT / "recipes" / "shapes_gres.yaml", [
            "sampling.dynamic.enabled=true", "sampling.dynamic.min_std=-1", "sampling.dynamic.max_rounds=-2"])
    msg = str(e.value)
    assert "min_std: -1" in msg and "max_rounds: -2" in msg


class _OneRank:
    process_index, num_processes, device = 0, 1, torch.device("cpu")

    @staticmethod
    def gather(t):
        return t


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dynamic_sampling_keeps_vllm_rollouts_aligned(level):
    """vLLM rollouts add per-token sampling log-probs and TRL's importance-sampling ratio (per token, or one per
    sequence in the sequence_* modes) to the generation batch: a refilled batch carries each row's own values."""
    g, calls = 2, []

    def rollout(inputs):  # round r: completions of length r + 2; group 0 of round 0 has no reward spread
        r, n = len(calls), len(inputs)
        calls.append([row["id"] for row in inputs])
        length = r + 2
        ids = torch.arange(n * length).view(n, length) + 100 * r
        logps = -ids.float() / 1000
        ratio = torch.full((n, 1), 1.0 + r) if level == "sequence" else 1.0 + logps.abs()
        rewards = torch.tensor([[0.5], [0.5], [0.0], [1.0]]) if r == 0 else torch.tensor([[0.0], [1.0], [0.2], [0.9]])
        trainer.round_rewards = rewards
        return {"prompt_ids": torch.ones(n, 3, dtype=torch.long), "prompt_mask": torch.ones(n, 3, dtype=torch.long),
                "completion_ids": ids, "completion_mask": torch.ones(n, length, dtype=torch.long),
                "advantages": torch.arange(n, dtype=torch.float) + 10 * r, "num_items_in_batch": torch.tensor(0),
                "old_per_token_logps": logps, "sampling_per_token_logps": logps - 0.01,
                "importance_sampling_ratio": ratio}

    metrics = {"train": defaultdict(list)}
    trainer = SimpleNamespace(  # the trainer's state that dynamic sampling reads, without a model
        sampling=SimpleNamespace(dynamic=SimpleNamespace(min_std=0.1, max_rounds=2)), accelerator=_OneRank(),
        num_generations=g, reward_weights=torch.ones(1), args=SimpleNamespace(seed=0),
        state=SimpleNamespace(global_step=0),
        sampler=sampling.EpochSeededRepeatSampler(list(range(6)), mini_repeat_count=g, batch_size=2),
        train_dataset=[{"id": i} for i in range(6)], pad_token_id=0, metrics=metrics.__getitem__)
    out = SamtokGRPOTrainer.dynamic_rollout(trainer, [{"id": 0}] * g + [{"id": 1}] * g, rollout)

    assert len(calls) == 2  # one extra round refilled the dropped group
    # kept: round 0's group 1 (rows 2-3), then round 1's group 0 (rows 0-1); completions padded to the longest
    assert out["advantages"].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert out["completion_ids"][:2, 2].tolist() == [0, 0] and out["completion_mask"][:2].sum().item() == 4
    for key in ("old_per_token_logps", "sampling_per_token_logps"):
        assert torch.allclose(out[key][out["completion_mask"].bool()], torch.cat([
            -torch.arange(4, 8).float() / 1000 - (0.01 if key[0] == "s" else 0),
            -(torch.arange(0, 6).float() + 100) / 1000 - (0.01 if key[0] == "s" else 0)]))
    ratio = out["importance_sampling_ratio"]
    if level == "sequence":
        assert ratio.shape == (4, 1) and ratio.flatten().tolist() == [1.0, 1.0, 2.0, 2.0]
    else:
        assert ratio.shape == out["completion_ids"].shape and (ratio[:2, 2] == 1.0).all()  # neutral padding
    assert int(out["num_items_in_batch"]) == 10
    assert metrics["train"]["sampling/frac_filtered"] == [0.5]
    assert metrics["train"]["sampling/effective_batch"] == [4.0]


def test_trim_padding_drops_the_columns_no_row_uses():
    slice_ = {"prompt_ids": torch.tensor([[0, 0, 5, 6], [0, 7, 7, 7]]), "prompt_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
              "completion_ids": torch.tensor([[1, 0, 0, 0], [2, 3, 0, 0]]),
              "completion_mask": torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]]),
              "ref_per_token_logps": torch.tensor([[-1.0, 0, 0, 0], [-2.0, -3.0, 0, 0]]),
              "importance_sampling_ratio": torch.ones(2, 1),  # sequence-level: no token axis to trim
              "mm_token_type_ids": torch.tensor([[0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]),
              "advantages": torch.tensor([0.5, -0.5]), "num_items_in_batch": torch.tensor(9)}
    out = trim_padding(slice_)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [7, 7, 7]] and out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[1, 0], [2, 3]] and out["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert out["ref_per_token_logps"].tolist() == [[-1.0, 0.0], [-2.0, -3.0]]
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0], [1, 1, 0, 0, 0]]  # still prompt then completion
    assert out["importance_sampling_ratio"].shape == (2, 1) and out["advantages"] is slice_["advantages"]
    assert slice_["prompt_ids"].shape == (2, 4)  # the generation batch's own tensors are left as they were
    assert trim_padding(out) is out  # nothing left to drop: the same dict


def test_trimmed_micro_steps_give_trls_loss_and_train_alike(tmp_path, monkeypatch):
    """Two micro-steps per generation batch, so each slice is padded to the whole batch's longest sequences: the
    trimmed slices give TRL's loss on the untrimmed ones (to float rounding), and training with trimming ends where
    training without it does (to float rounding, as Adam carries it)."""
    from tiny_runs import tiny_recipe, train_tiny
    from trl import GRPOTrainer

    from rl.grpo import trainer as tr

    seen = []

    def recording(inputs):
        out = trim_padding(inputs)
        seen.append((inputs, out))
        return out

    runs = {}
    for trim in (True, False):
        monkeypatch.setattr(tr, "trim_padding", recording if trim else (lambda inputs: inputs))
        torch.manual_seed(0)
        recipe = tiny_recipe(tmp_path / str(trim), "grpo.gradient_accumulation_steps=2", "grpo.max_steps=3",
                             "grpo.per_device_train_batch_size=4", "sampling.stratify=false",
                             # <|im_end|> (id 2) made likely: completions of many lengths, so slices differ
                             "grpo.generation_kwargs={sequence_bias: [[[2], 8.0]]}")
        runs[trim] = train_tiny(recipe)
    trimmed = [(a, b) for a, b in seen if b is not a]
    assert trimmed, "no micro-step had padding-only columns: the test does not exercise the trim"
    trainer, model, _ = runs[True]
    model.eval()
    for full, cut in trimmed:
        assert cut["prompt_ids"].shape[1] + cut["completion_ids"].shape[1] < full["prompt_ids"].shape[1] + full["completion_ids"].shape[1]
        with torch.no_grad():
            theirs = GRPOTrainer.compute_loss(trainer, model, full)
            ours = trainer.compute_loss(model, full)
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=1e-5), (ours, theirs)
    # Adam turns float rounding in near-zero gradients into visible steps, so "alike" is measured against how far
    # training moved the weights: the two runs differ by under 1% of it (a different rollout would be ~100%).
    before = runs[True][2]
    with_trim, without = dict(runs[True][1].named_parameters()), dict(runs[False][1].named_parameters())
    moved = sum(float((p.detach() - before[n]).norm() ** 2) for n, p in with_trim.items()) ** 0.5
    apart = sum(float((p.detach() - without[n].detach()).norm() ** 2) for n, p in with_trim.items()) ** 0.5
    assert moved > 0 and apart < 0.01 * moved, (apart, moved)
