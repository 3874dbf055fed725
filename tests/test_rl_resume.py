"""Resume is exact: N steps straight and the same run stopped and resumed in new processes agree bit for bit.

Compared at the last checkpoint (``resume_run.checkpoint_state``): the weights (whole model, or LoRA adapter
plus the mask-token rows), the optimizer's moments, the scheduler, every rank's RNG streams and the logged
history (losses, rewards, KL, ...); and per logged step the prompts, sampled completions and rewards. The
data have 8 prompts and each step takes 2, so an epoch is 4 steps and a resume at step 5 is in the second
epoch. A run killed with SIGKILL resumes from its last complete checkpoint with exactly its weights.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch
from resume_run import assert_same_state, checkpoint_state, completions
from tiny_runs import write_prepared

from rl.grpo import checkpoint

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "resume_run.py")
REWARDS = "rewards=[{name: answer_match, params: {grading: coarse}}, {name: 'tiny_runs:varied_reward'}]"


def _overrides(data: Path, run: Path, *extra) -> list[str]:
    return [
        "data.env=grefcoco", f"data.train={data}", "sft.enabled=false", f"run.output_dir={run}", "run.report_to=[none]",
        "monitor.eval_steps=0", "monitor.image_steps=0", "run.keep_checkpoints=2", "grpo.save_strategy=steps", "grpo.save_steps=1", "grpo.logging_steps=1",
        "grpo.per_device_train_batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=8",
        "grpo.learning_rate=0.01", "grpo.temperature=1.5", "grpo.log_completions=true", REWARDS, *extra,
    ]


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, **extra}


def _start(stop_at: int, overrides: list[str], launcher=(), **env) -> subprocess.Popen:
    # Output to files, not pipes: a job that runs alongside another is read only at the end, and a full pipe
    # would block it.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, *launcher, DRIVER, str(stop_at), *overrides], cwd=ROOT,
                            env=_env(**env), stdout=out, stderr=err, text=True)
    proc.files = out, err
    return proc


def _finish(proc: subprocess.Popen, kill: bool = False) -> subprocess.CompletedProcess:
    try:
        if kill:
            proc.kill()
        proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for f in proc.files:
        f.seek(0)
    out, err = (f.read() for f in proc.files)
    assert kill or proc.returncode == 0, (out + err)[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _train(stop_at: int, overrides: list[str], launcher=(), **env) -> subprocess.CompletedProcess:
    return _finish(_start(stop_at, overrides, launcher, **env))


@contextmanager
def _alongside(stop_at: int, overrides: list[str]):
    """A training job that runs while the block does, checked once the block is done (killed if it fails)."""
    proc = _start(stop_at, overrides)
    try:
        yield proc
    except BaseException:
        _finish(proc, kill=True)
        raise
    _finish(proc)


def _straight_and_resumed(tmp_path, stops, *extra, launcher=()):
    """Train 6 steps straight, and again stopped after each step in ``stops`` and resumed in a new process.
    A single-process straight run goes alongside the resumed chain (start-up is mostly single-threaded: on 2
    cores this saves a third of the test's time); a launched multi-rank one goes first (4 gloo ranks on 2 cores
    took twice as long as one job after the other)."""
    data = write_prepared(tmp_path / "data", n=8)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight_run = _overrides(data, straight, "grpo.max_steps=6", *extra)
    if launcher:
        _train(0, straight_run, launcher)
    with nullcontext() if launcher else _alongside(0, straight_run):
        for i, stop in enumerate([*stops, 0]):
            resume = ["run.resume=true"] if i else []
            done = _train(stop, _overrides(data, resumed, "grpo.max_steps=6", *extra, *resume), launcher)
            if i:
                assert f"resuming from {resumed / f'checkpoint-{stops[i - 1]}'}" in done.stderr
    return straight, resumed


def test_full_finetune_resumed_twice_and_after_an_epoch_equals_straight(tmp_path):
    straight, resumed = _straight_and_resumed(tmp_path, [3, 5])
    a, b = checkpoint_state(straight / "checkpoint-6"), checkpoint_state(resumed / "checkpoint-6")
    assert "model.safetensors" in a and "optimizer.pt" in a and "rng_state.pth" in a
    assert [h["step"] for h in a["log_history"] if "loss" in h] == list(range(1, 7))
    assert_same_state(a, b)
    assert completions(straight).keys() == {f"completions_{s:05d}.parquet" for s in range(1, 7)}
    assert completions(straight) == completions(resumed)
    # The weights did move: a resume that fell back to the initial policy would not pass the comparison.
    init = checkpoint_state(resumed / "checkpoint-5")["model.safetensors"]
    assert any(not torch.equal(init[k], v) for k, v in b["model.safetensors"].items())

    # `samtok-rl eval --policy <run>/checkpoint-N` loads that checkpoint's trained weights: the same as final/.
    from rl.policy.model import load_policy

    (ckpt, _), (final, _) = load_policy(resumed / "checkpoint-6"), load_policy(resumed / "final")
    assert ckpt.state_dict().keys() == final.state_dict().keys()
    assert all(torch.equal(v, final.state_dict()[k]) for k, v in ckpt.state_dict().items())


def test_lora_resume_equals_straight(tmp_path):
    lora = ("model.finetune=lora", "model.lora.r=4", "grpo.learning_rate=0.05")
    straight, resumed = _straight_and_resumed(tmp_path, [3], *lora)
    a, b = checkpoint_state(straight / "checkpoint-6"), checkpoint_state(resumed / "checkpoint-6")
    assert {"adapter_model.safetensors", "mask_token_rows.safetensors", "optimizer.pt"} <= a.keys()
    assert_same_state(a, b)
    assert completions(straight) == completions(resumed)

    from rl.policy.model import load_policy

    (ckpt, _), (final, _) = load_policy(resumed / "checkpoint-6"), load_policy(resumed / "final")
    assert all(torch.allclose(v, final.state_dict()[k], atol=1e-6) for k, v in ckpt.state_dict().items())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DeepSpeed's CPU backend is tested on Linux")
def test_two_ranks_zero3_lora_resume_equals_straight(tmp_path):
    """Launched as the README says (accelerate launch, ZeRO-3, 2 gloo ranks), with dynamic sampling: the
    partitioned optimizer state of every rank, the gathered mask-token rows and both ranks' RNG streams continue
    exactly. The straight run
    is also checked as a plain ZeRO-3 LoRA run: final/ is the merged policy with trained mask-token rows."""
    from tiny_runs import assert_mask_rows_trained, before_after, changed_params

    launcher = ["-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/zero3.yaml",
                "--num_processes", "2", "--main_process_port", str(30500 + os.getpid() % 1000)]
    lora = ("model.finetune=lora", "grpo.learning_rate=0.05", "grpo.per_device_train_batch_size=4",
            "grpo.max_completion_length=6", "grpo.save_steps=2")
    # With dynamic sampling on and a reward without spread on no-target prompts: both ranks must make the same
    # number of extra generation rounds (ZeRO-3's generate gathers parameters across ranks: a mismatch hangs),
    # and a resumed run must draw the same extra prompts.
    dynamic = ("sampling.dynamic.enabled=true", "sampling.dynamic.max_rounds=1",
               "rewards=[{name: answer_match, params: {grading: coarse}}, {name: 'test_rl_sampling:target_only_reward'}]")
    straight, resumed = _straight_and_resumed(tmp_path, [2], *lora, *dynamic, launcher=launcher)
    a, b = checkpoint_state(straight / "checkpoint-6"), checkpoint_state(resumed / "checkpoint-6")
    ranks = [k for k in a if k.endswith("optim_states.pt")]
    assert len(ranks) == 2 and {"rng_state_0.pth", "rng_state_1.pth", "mask_token_rows.safetensors"} <= a.keys()
    assert_same_state(a, b)
    assert completions(straight) == completions(resumed)
    # The two ranks drew the same prompt groups: each group of 4 generations (spread over the ranks, gathered
    # in the log) shares one prompt.
    for step in completions(straight).values():
        groups = [step["prompt"][i : i + 4] for i in range(0, len(step["prompt"]), 4)]
        assert groups and all(len(set(g)) == 1 for g in groups)

    rounds = [h["sampling/extra_rounds"] for h in a["log_history"] if "sampling/extra_rounds" in h]
    assert len(rounds) == 6 and any(r > 0 for r in rounds)  # groups were filtered and refilled

    m0, m1, tokenizer = before_after(straight)
    changed = changed_params(m0, m1)
    assert any("self_attn.q_proj" in k for k in changed) and not any("visual" in k for k in changed)
    assert_mask_rows_trained(straight, m0, m1, tokenizer, step=6)


def test_killed_run_resumes_from_last_complete_checkpoint_with_its_weights(tmp_path):
    data = write_prepared(tmp_path / "data", n=16)
    run = tmp_path / "run"
    base = _overrides(data, run, "grpo.save_steps=2", "grpo.log_completions=false")
    proc = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(ROOT / "recipes" / "shapes_gres.yaml"), *base,
                             "grpo.max_steps=1000"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            last = checkpoint.last_checkpoint(run)
            if last is not None and int(last.name.split("-")[1]) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.kill()  # SIGKILL: no cleanup, possibly in the middle of writing the next checkpoint
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not (run / "final").exists()
    last = checkpoint.last_checkpoint(run)
    killed_at = int(last.name.split("-")[1])
    target = killed_at + 2

    # A run started before the environments were renamed saved data.env's old name: it resumes as the same env.
    saved = (run / "recipe.yaml").read_text()
    assert "env: grefcoco" in saved
    (run / "recipe.yaml").write_text(saved.replace("env: grefcoco", "env: gres"))
    dump = tmp_path / "resumed_weights.safetensors"
    done = _train(0, [*base, f"grpo.max_steps={target}", "run.resume=true"], RESUME_RUN_DUMP=str(dump))
    assert f"resuming from {last}" in done.stderr
    state = json.loads((run / f"checkpoint-{target}" / "trainer_state.json").read_text())
    assert state["global_step"] == target
    steps = [h["step"] for h in state["log_history"] if "reward" in h]
    assert steps == list(range(1, target + 1))  # the first run's history continued, no step redone
    assert (run / "final" / "config.json").is_file()
    assert not any((run / checkpoint.STAGING).glob("checkpoint-*"))

    # The resumed process trained on from exactly the checkpoint's weights (read through the eval loader).
    from safetensors.torch import load_file

    from rl.policy.model import load_policy

    started, (saved, _) = load_file(dump), load_policy(last)
    assert started.keys() == saved.state_dict().keys()
    assert all(torch.equal(started[k], v) for k, v in saved.state_dict().items())
    init, _ = load_policy(run / "policy-init")
    assert any(not torch.equal(started[k], v) for k, v in init.state_dict().items())


# ---------------------------------------------------------------- refusals: never resume from part of a state


def test_a_checkpoint_that_does_not_fit_is_an_error_naming_the_keys(tmp_path):
    from rl.policy.model import build_tiny_policy, save_policy

    save_policy(*build_tiny_policy(num_layers=2), tmp_path / "ckpt")
    three_layers, _ = build_tiny_policy(num_layers=3)
    before = {k: v.clone() for k, v in three_layers.state_dict().items()}
    with pytest.raises(checkpoint.CheckpointError, match=r"missing keys: \[.*layers\.2\."):
        checkpoint.load_full_weights(three_layers, tmp_path / "ckpt")
    assert all(torch.equal(before[k], v) for k, v in three_layers.state_dict().items())  # nothing half-loaded

    two_layers, _ = build_tiny_policy(num_layers=2, seed=1)
    checkpoint.load_full_weights(two_layers, tmp_path / "ckpt")  # the checkpoint-format names map onto it
    saved, _ = build_tiny_policy(num_layers=2)
    assert all(torch.equal(saved.state_dict()[k], v) for k, v in two_layers.state_dict().items())


def test_an_adapter_checkpoint_missing_tensors_is_an_error(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file

    from rl.policy.model import build_tiny_policy

    model = get_peft_model(build_tiny_policy()[0], LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "ckpt")
    checkpoint.check_adapter_loaded(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "adapter_model.safetensors"
    saved = load_file(path)
    dropped = sorted(saved)[0]
    save_file({k: v for k, v in saved.items() if k != dropped}, path)
    with pytest.raises(checkpoint.CheckpointError, match="missing keys"):
        checkpoint.check_adapter_loaded(model, tmp_path / "ckpt")


def test_checkpoints_inside_a_generation_block_are_refused():
    from rl.recipe.config import RecipeError, load_recipe

    recipe = ROOT / "recipes" / "shapes_gres.yaml"
    with pytest.raises(RecipeError, match="grpo.save_steps: 3 x gradient_accumulation_steps 1 must be a multiple"):
        load_recipe(recipe, ["grpo.steps_per_generation=2", "grpo.save_steps=3"])
    load_recipe(recipe, ["grpo.steps_per_generation=2", "grpo.save_steps=4"])
    with pytest.raises(RecipeError, match="num_iterations"):
        load_recipe(recipe, ["grpo.num_iterations=2", "grpo.save_steps=5"])


def test_resuming_with_a_changed_model_tokenizer_or_group_size_is_refused(tmp_path):
    from tiny_runs import fake_checkpoint

    from rl.grpo.train import refuse_changed_resume
    from rl.recipe.config import RecipeError, load_recipe, save_resolved

    run = tmp_path / "run"
    base = [f"run.output_dir={run}", "run.resume=true"]
    recipe = ROOT / "recipes" / "shapes_gres.yaml"
    fake_checkpoint(run, 1)
    save_resolved(load_recipe(recipe, base), run / "recipe.yaml")
    refuse_changed_resume(load_recipe(recipe, [*base, "grpo.learning_rate=1e-6"]), run)  # may change
    for change, key in (("model.tiny.hidden_size=32", "model"), ("data.mask_tokenizer=random", "data.mask_tokenizer"),
                        ("grpo.num_generations=4", "grpo.num_generations")):
        with pytest.raises(RecipeError, match=rf"{key}: .* in {run / 'recipe.yaml'}"):
            refuse_changed_resume(load_recipe(recipe, [*base, change]), run)
    with pytest.raises(RecipeError, match=r"sampling.balance: None in .*, \{'no_target': 1.0\} now"):
        refuse_changed_resume(load_recipe(recipe, [*base, "sampling.balance={no_target: 1.0}"]), run)

    # A run saved before the sampling section and reward isolation existed ran with their defaults: it resumes.
    import yaml

    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    del saved["sampling"], saved["reward_runtime"]["isolation"]
    saved["data"]["env"] = "shapes"  # and one saved before the environments were renamed: the same env
    (run / "recipe.yaml").write_text(yaml.safe_dump(saved))
    old_defaults = [*base, "sampling.stratify=false"]  # the recipe now stratifies; that run used the default
    refuse_changed_resume(load_recipe(recipe, old_defaults), run)
    with pytest.raises(RecipeError, match=r"sampling.stratify: False in .*, True now"):
        refuse_changed_resume(load_recipe(recipe, base), run)
    with pytest.raises(RecipeError, match=r"data.env: 'shapes_gres' in .*, 'shapes_gcg' now"):
        refuse_changed_resume(load_recipe(recipe, [*old_defaults, "data.env=shapes_gcg"]), run)


def test_sigterm_saves_a_complete_checkpoint_exits_0_and_resumes_exactly(tmp_path):
    """Cluster preemption: SIGTERM mid-run finishes the step, checkpoints it (although no periodic save was
    due), exits 0 without final/; the resumed run then equals one that ran straight to the same step."""
    import signal

    data = write_prepared(tmp_path / "data", n=8)
    run = tmp_path / "run"
    base = _overrides(data, run, "grpo.save_steps=1000")
    proc = subprocess.Popen([sys.executable, "-m", "rl.cli", "train", str(ROOT / "recipes" / "shapes_gres.yaml"), *base,
                             "grpo.max_steps=1000"], cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not (run / "completions" / "completions_00002.parquet").exists():
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, err[-3000:]
    stopped = checkpoint.last_checkpoint(run)
    assert stopped is not None and "preempted: stopped on SIGTERM after saving" in err
    assert not (run / "final").exists()
    step = int(stopped.name.split("-")[1])
    assert step >= 2

    straight = tmp_path / "straight"
    with _alongside(0, _overrides(data, straight, f"grpo.max_steps={step + 2}", "grpo.save_steps=1000")):
        _train(0, [*base, f"grpo.max_steps={step + 2}", "run.resume=true"])
    last = f"checkpoint-{step + 2}"
    assert_same_state(checkpoint_state(straight / last), checkpoint_state(run / last))
    assert completions(straight) == completions(run)


# ---------------------------------------------------------------- distributed faults (2 gloo ranks, torchrun)


def _torchrun(tmp_path, fault: str, *extra, restarts: int = 0, timeout: int = 300):
    data = write_prepared(tmp_path / "data", n=8)
    run = tmp_path / "run"
    # torchrun's default (static) rendezvous: with --rdzv-backend c10d a restarted gloo job was seen reading the
    # dead attempt's addresses from the store (torch 2.14) and failing to connect.
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--max-restarts", str(restarts),
                "--master-port", str(31500 + os.getpid() % 1000)]
    overrides = _overrides(data, run, "grpo.max_steps=4", "grpo.per_device_train_batch_size=4",
                           "grpo.max_completion_length=4", "grpo.log_completions=false", *extra)
    started = time.perf_counter()
    # Its own session, so that a timeout kills the workers too (killing torchrun alone would orphan them).
    proc = subprocess.Popen([sys.executable, *launcher, DRIVER, "0", *overrides], cwd=ROOT,
                            env=_env(RESUME_RUN_FAULT=fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run, time.perf_counter() - started


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo ranks under torchrun are tested on Linux")
def test_a_rank_killed_under_torchrun_restarts_the_job_which_resumes(tmp_path):
    """torchrun --max-restarts=1: SIGKILL on rank 1 at step 3 ends the first attempt; the restarted job joins its
    process group under its own store prefix (rl.recipe.config), resumes from the last complete checkpoint (step 2) and
    finishes with one continuous history. Without the prefix this failed on 4 of 5 runs (stale addresses)."""
    done, run, _ = _torchrun(tmp_path, "kill:1:3", "run.resume=true", "run.dist_timeout_s=60", restarts=1,
                             timeout=420)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "failed (exitcode: -9) local_rank: 1" in done.stderr  # the first attempt did die: the job was restarted
    assert f"resuming from {run / 'checkpoint-2'}" in done.stderr
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "reward" in h] == [1, 2, 3, 4]
    assert (run / "final" / "config.json").is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo ranks under torchrun are tested on Linux")
def test_a_rank_that_stops_participating_fails_the_others_within_the_timeout(tmp_path):
    done, run, wall = _torchrun(tmp_path, "hang:1:3", "run.dist_timeout_s=8")
    assert done.returncode != 0
    err = done.stderr
    assert "rank 0 of 2 waited 8 s (run.dist_timeout_s) for the other ranks in" in err, err[-4000:]
    assert f"Last complete checkpoint: {run / 'checkpoint-2'}" in err
    assert wall < 120  # not torch's 30-minute default


def test_a_checkpoint_inside_a_generation_block_is_refused_at_resume_with_its_path():
    """The run-time guard behind the recipe check above (a checkpoint written by other settings or by hand)."""
    from types import SimpleNamespace as NS

    from rl.grpo.checkpoint import CheckpointError
    from rl.grpo.trainer import SamtokGRPOTrainer

    trainer = NS(state=NS(global_step=3), args=NS(gradient_accumulation_steps=1, steps_per_generation=2),
                 num_iterations=1)
    with pytest.raises(CheckpointError, match="checkpoint-3: saved inside a generation block"):
        SamtokGRPOTrainer.resume_micro_step(trainer, "run/checkpoint-3")


@pytest.mark.parametrize("step,accum,spg,iterations,between", [
    (3, 1, 1, 1, True), (3, 1, 2, 1, False), (4, 1, 2, 1, True), (2, 4, 8, 1, True), (1, 4, 8, 1, False),
    (5, 1, 1, 2, False), (6, 1, 1, 2, True),
])
def test_the_generation_block_rule(step, accum, spg, iterations, between):
    """The one statement of where checkpoints may fall (rl.grpo.checkpoint), as recipe validation uses it."""
    from rl.recipe.config import RecipeError, load_recipe
    from rl.recipe.schema import between_generation_blocks

    assert between_generation_blocks(step, accum, spg, iterations) is between
    overrides = [f"grpo.save_steps={step}", f"grpo.gradient_accumulation_steps={accum}",
                 f"grpo.steps_per_generation={spg}", f"grpo.num_iterations={iterations}"]
    if between:
        load_recipe(ROOT / "recipes" / "shapes_gres.yaml", overrides)
    else:
        with pytest.raises(RecipeError, match="generation block"):
            load_recipe(ROOT / "recipes" / "shapes_gres.yaml", overrides)
