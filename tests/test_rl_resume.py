"""A run killed mid-training (SIGKILL) resumes from its last complete checkpoint with run.resume=true."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rl import checkpoint
from test_rl_trainer import write_prepared

ROOT = Path(__file__).resolve().parents[1]


def _cmd(tmp_path, *extra):
    return [
        sys.executable, "-m", "rl.train", str(ROOT / "recipes" / "shapes_gres.yaml"),
        "data.env=gres", f"data.train={tmp_path / 'data'}", "sft.enabled=false", f"run.output_dir={tmp_path / 'run'}",
        "run.report_to=[none]", "run.keep_checkpoints=2", "grpo.save_strategy=steps", "grpo.save_steps=2",
        "grpo.per_device_train_batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=8",
        "grpo.logging_steps=1", *extra,
    ]  # fmt: skip


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


def test_killed_run_resumes_from_last_complete_checkpoint(tmp_path):
    write_prepared(tmp_path / "data", n=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(tmp_path, "grpo.max_steps=1000"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            last = checkpoint.last_checkpoint(run)
            if last is not None and _step(last) >= 4:
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
    killed_at = _step(checkpoint.last_checkpoint(run))
    target = killed_at + 2

    done = subprocess.run(_cmd(tmp_path, f"grpo.max_steps={target}", "run.resume=true"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {run / f'checkpoint-{killed_at}'}" in done.stderr
    state = json.loads((run / f"checkpoint-{target}" / "trainer_state.json").read_text())
    assert state["global_step"] == target
    steps = [h["step"] for h in state["log_history"] if "reward" in h]
    assert steps == list(range(1, target + 1))  # the first run's history continued, no step redone
    assert (run / "final" / "config.json").is_file()
    assert not any((run / checkpoint.STAGING).glob("checkpoint-*"))
