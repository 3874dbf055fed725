"""The held-out monitor (rl.grpo.monitor): official metrics every eval_steps and rollout grids every image_steps, logged
through the Trainer (log_history, TensorBoard) and saved under <run>/monitor/, without changing the rollouts."""

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_recipe, write_prepared
from transformers import TrainerCallback

from rl.grpo import monitor, timing
from rl.grpo import train as train_mod
from rl.recipe.config import RecipeError, load_recipe

# Tiny matrices: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
GRES = ("gIoU", "cIoU", "N-acc", "T-acc")


class History(TrainerCallback):
    """The trainer's log history at the end of training (rl.grpo.train.run returns only the final policy's path)."""

    def on_train_end(self, args, state, control, **kwargs):
        self.logs = list(state.log_history)


def _run(tmp_path, name, *overrides):
    eval_data = tmp_path / "eval"
    if not eval_data.exists():
        write_prepared(eval_data, n=8, split="val")
    recipe = tiny_recipe(tmp_path, f"data.eval={eval_data}", f"run.output_dir={tmp_path / name}", "grpo.max_steps=3",
                         *overrides)
    history = History()
    torch.manual_seed(0)
    train_mod.run(recipe, callbacks=[history])
    return history.logs, tmp_path / name


def _training_values(logs):
    """Per-step loss, rewards and the other training scalars, without wall-clock timings."""
    timing = ("second", "time", "runtime", "timing_")
    return [{k: v for k, v in h.items() if not any(t in k for t in timing)} for h in logs if "loss" in h]


def test_monitor_logs_metrics_and_images_without_changing_the_rollouts(tmp_path):
    on = ["monitor.eval_steps=2", "monitor.eval_samples=4", "monitor.image_steps=3", "monitor.image_samples=2",
          "monitor.max_new_tokens=12"]
    logs, run = _run(tmp_path, "on", *on)
    # Metrics at step 0 (the baseline) and every eval_steps, through Trainer.log.
    evals = [h for h in logs if "eval_metrics/gIoU" in h]
    assert [h["step"] for h in evals] == [0, 2]
    for h in evals:
        assert all(0 <= h[f"eval_metrics/{k}"] <= 100 for k in GRES)
        assert h["eval_metrics/seconds"] > 0
        assert not any(k.startswith("reward") for k in h)  # GRPO's pending reward means are not flushed into it
    # The rewards are still logged at every step, next to them.
    assert [h["step"] for h in logs if "reward" in h] == [1, 2, 3]
    # On disk: one metrics line per evaluation, a grid per image step.
    lines = [json.loads(line) for line in (run / "monitor" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["samples"], r["task"]) for r in lines] == [(0, 4, "gres"), (2, 4, "gres")]
    assert lines[1]["gIoU"] == pytest.approx(evals[1]["eval_metrics/gIoU"])
    assert sorted(p.name for p in (run / "monitor").glob("*.png")) == ["step_0.png", "step_3.png"]
    assert not [p for p in (run / "monitor").iterdir() if p.is_dir()]  # scoring scratch removed
    # TensorBoard: the scalars (transformers writes eval_* keys as eval/...) and the image summary.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in (run / "runs").rglob("events.out.tfevents*")}
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for k in GRES:
        assert [e.step for e in acc.Scalars(f"eval/metrics/{k}")] == [0, 2]
    assert [e.step for e in acc.Scalars("train/reward")] == [1, 2, 3]
    # The phase timings reach TensorBoard with the rewards (issue 25: "in the demo's TensorBoard").
    for phase in ("step", *timing.PHASES):
        assert [e.step for e in acc.Scalars(f"train/timing_s/{phase}")] == [1, 2, 3]
    images = acc.Images(monitor.IMAGE_TAG)
    assert [e.step for e in images] == [0, 3] and images[0].width > 0 and images[0].height > 0

    # The same run without the monitor samples exactly the same rollouts: same losses and rewards at every step.
    off_logs, off_run = _run(tmp_path, "off")
    assert not (off_run / "monitor").exists()
    assert _training_values(logs) == _training_values(off_logs)
    assert len(_training_values(logs)) == 3


def test_shapes_gcg_is_monitored_with_the_gcg_metrics(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "shapes_gcg.yaml", [
        "sft.enabled=false", f"run.output_dir={tmp_path / 'run'}", "run.report_to=[none]", "data.mask_tokenizer=random",
        "data.shapes.n_train=4", "data.shapes.n_eval=0", "grpo.max_steps=1", "grpo.save_strategy=no",
        "grpo.logging_steps=1", "grpo.per_device_train_batch_size=4", "grpo.num_generations=4",
        "grpo.max_completion_length=8", "grpo.log_completions=false", "monitor.eval_steps=1", "monitor.eval_samples=3",
        "monitor.max_new_tokens=8",
    ])
    history = History()
    train_mod.run(recipe, callbacks=[history])
    evals = [h for h in history.logs if "eval_metrics/AP50" in h]
    assert [h["step"] for h in evals] == [0, 1]
    assert all({"eval_metrics/mIoU", "eval_metrics/recall"} <= set(h) for h in evals)
    lines = (tmp_path / "run" / "monitor" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["task"] for line in lines] == ["gcg", "gcg"]


def test_metrics_history_is_trimmed_to_the_resumed_step(tmp_path):
    cb = monitor.HeldOutEval.__new__(monitor.HeldOutEval)  # only the file logic: no trainer needed
    cb.out_dir = tmp_path
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 2, 4, 6)))
    cb._trim_history(4)  # resumed from checkpoint-4: steps 6+ came from the crashed run's tail
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 2, 4]
    cb._trim_history(0)  # a fresh run starts anew
    assert path.read_text() == ""


def test_preserved_rng_restores_every_generator():
    import random

    import numpy as np

    with monitor.preserved_rng():
        expected = (random.random(), np.random.rand(), torch.rand(1).item())
    with monitor.preserved_rng():
        random.seed(1), np.random.seed(1), torch.manual_seed(1)
        random.random(), np.random.rand(), torch.rand(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ---------------------------------------------------------------- recipe


def _shapes(*overrides):
    return load_recipe(ROOT / "recipes" / "shapes_gres.yaml", list(overrides))


def test_monitor_section_is_off_by_default_and_validated():
    from rl.recipe.schema import Monitor

    assert (Monitor().eval_steps, Monitor().image_steps) == (0, 0)
    assert not monitor.enabled(_shapes("monitor.eval_steps=0"))
    r = _shapes()  # the shapes recipes turn it on: their learning curves
    assert monitor.enabled(r) and (r.monitor.eval_steps, r.monitor.eval_samples) == (15, 64)
    r = _shapes("monitor.eval_steps=5", "monitor.eval_samples=32", "monitor.max_new_tokens=32")
    assert monitor.enabled(r) and r.monitor.eval_samples == 32 and monitor.task_of(r) == "gres"
    with pytest.raises(RecipeError, match=r"monitor\.eval_stepz: unknown key \(did you mean 'eval_steps'\?\)"):
        _shapes("monitor.eval_stepz=5")
    with pytest.raises(RecipeError) as e:
        _shapes("monitor.eval_steps=-1", "monitor.image_steps=-2", "monitor.eval_samples=0", "monitor.max_new_tokens=0")
    text = str(e.value)
    assert "4 problem(s)" in text and "monitor.eval_steps: -1 must be >= 0" in text
    assert "monitor.image_steps: -2 must be >= 0" in text and "monitor.eval_samples: 0 must be >= 1" in text
    with pytest.raises(RecipeError, match="expected int"):
        _shapes("monitor.eval_steps=often")


def test_prepared_data_needs_an_eval_split_to_be_monitored(tmp_path):
    (tmp_path / "train").mkdir()
    base = ["data.env=grefcoco", f"data.train={tmp_path / 'train'}", "monitor.eval_steps=0"]
    _shapes(*base)  # unmonitored: no eval split needed
    with pytest.raises(RecipeError, match="monitor: env 'grefcoco' needs held-out rows to evaluate on: set data.eval"):
        _shapes(*base, "monitor.image_steps=10")
    (tmp_path / "eval").mkdir()
    assert monitor.task_of(_shapes(*base, "monitor.eval_steps=10", f"data.eval={tmp_path / 'eval'}")) == "gres"
    assert monitor.task_of(_shapes("data.env=shapes_gcg")) == "gcg"


def test_monitoring_is_refused_under_zero3(tmp_path, monkeypatch):
    recipe = _shapes("monitor.eval_steps=5")
    assert monitor.zero3_problem(recipe) is None and train_mod.preflight(recipe) is None
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))  # accelerate launch --config_file zero3.yaml
    assert "does not run under DeepSpeed ZeRO-3" in train_mod.preflight(recipe)
    with pytest.raises(monitor.MonitorError, match="ZeRO-3"):
        train_mod.run(recipe)
    assert monitor.zero3_problem(_shapes("monitor.eval_steps=0")) is None  # not monitored: nothing to refuse
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert monitor.zero3_problem(recipe) is None


def test_wandb_gets_the_metrics_and_the_image(tmp_path, monkeypatch):
    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "samtok-rl-tests"}.items():
        monkeypatch.setenv(key, value)
    try:
        logs, _ = _run(tmp_path, "wandb", "run.report_to=[wandb]", "grpo.max_steps=1", "grpo.log_completions=false",
                       "monitor.eval_steps=1", "monitor.eval_samples=2", "monitor.image_steps=1",
                       "monitor.image_samples=1", "monitor.max_new_tokens=8")
    finally:
        wandb.finish()
        wandb.teardown()  # wandb keeps its settings (WANDB_DIR) in a process-wide singleton otherwise
    assert [h["step"] for h in logs if "eval_metrics/gIoU" in h] == [0, 1]
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    images = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 2 and all(name.startswith("rollouts_") for name in images)  # steps 0 and 1


def test_vllm_sync_check_logs_the_gap_and_warns_above_the_tolerance(caplog):
    """TRL logs, per step, the largest gap between the policy's and vLLM's log-probs of vLLM's samples; the check
    republishes it every N steps and warns when it exceeds the tolerance (stale weights after a sync)."""
    import logging
    from types import SimpleNamespace

    from rl.grpo.monitor import VllmSyncCheck

    check = VllmSyncCheck(steps=2, tolerance=0.5)
    seen = []
    for step, gap in [(1, 9.0), (2, 0.1), (4, 3.2), (6, float("nan"))]:
        logs = {VllmSyncCheck.SOURCE: gap, "loss": 0.0}
        with caplog.at_level(logging.WARNING, logger="rl.grpo.monitor"):
            check.on_log(None, SimpleNamespace(global_step=step), None, logs=logs)
        seen.append(logs.get("sampling/vllm_sync_max_logp_gap"))
    assert seen[0] is None and seen[1] == 0.1 and seen[2] == 3.2  # step 1 is not a check step
    assert [s for s, _ in check.flagged] == [4, 6]  # 3.2 > 0.5, and NaN is never fine
    assert "step 4: vLLM's log-probs" in caplog.text and "trl#5312" in caplog.text
    check.on_log(None, SimpleNamespace(global_step=8), None, logs={"loss": 0.0})  # no vLLM metric: nothing


def test_vllm_sync_check_is_validated():
    with pytest.raises(RecipeError, match="grpo.use_vllm is off"):
        load_recipe(ROOT / "recipes" / "shapes_gres.yaml", ["monitor.vllm_sync_steps=10"])
    with pytest.raises(RecipeError, match="keep grpo.vllm_importance_sampling_correction on"):
        load_recipe(ROOT / "recipes" / "gres_grpo.yaml", ["monitor.vllm_sync_steps=10", "grpo.use_vllm=true",
                    "grpo.vllm_importance_sampling_correction=false"], check_files=False)
