"""2 GRPO steps under DeepSpeed ZeRO-2 and ZeRO-3 on the CPU (gloo), through rl.train.

Both stages run in one subprocess: DeepSpeed's first engine start JIT-compiles a communication op (~25 s on a
clean machine, cached afterwards), and a single process pays the imports and that compile once. Outside a
launcher DeepSpeed needs the torch.distributed variables, which the subprocess sets.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rl.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from test_rl_trainer import write_prepared
    from rl.config import load_recipe
    from rl import train
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            self.optimizer = type(getattr(optimizer, "optimizer", optimizer)).__name__

    tmp = Path(sys.argv[1])
    write_prepared(tmp / "data", n=8)
    for stage in (2, 3):
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        run = tmp / f"zero{stage}"
        recipe = load_recipe(Path("recipes/shapes_gres.yaml"), [
            "data.env=gres", f"data.train={tmp / 'data'}", "sft.enabled=false", f"run.output_dir={run}",
            "run.report_to=[none]", "grpo.max_steps=2", "grpo.save_strategy=no", "grpo.learning_rate=0.01",
            "grpo.per_device_train_batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=8",
            f"grpo.deepspeed=recipes/accelerate/ds_zero{stage}.json",
            "rewards=[{name: answer_match}, {name: 'test_rl_trainer:varied_reward'}]",
        ])
        seen = Seen()
        final = train.run(recipe, callbacks=[seen])
        print(stage, seen.optimizer, flush=True)
        assert seen.optimizer == {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[stage]
        print(f"ZERO{stage} OK", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DeepSpeed's CPU backend is tested on Linux")
def test_grpo_under_zero2_and_zero3(tmp_path):
    env = {
        **os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }  # fmt: skip
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "ZERO2 OK" in done.stdout and "ZERO3 OK" in done.stdout
    for stage in (2, 3):  # compared here: inside the subprocess a live ZeRO-3 config would load them partitioned
        run = tmp_path / f"zero{stage}"
        (m0, _), (m1, _) = load_policy(run / "policy-init"), load_policy(run / "final")
        before, after = dict(m0.named_parameters()), dict(m1.named_parameters())
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert any("language_model" in k for k in changed), f"ZeRO-{stage}: weights did not change"
        assert not any("visual" in k for k in changed), f"ZeRO-{stage}: the frozen vision tower moved"
