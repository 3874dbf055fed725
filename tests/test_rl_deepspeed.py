"""2 GRPO steps under DeepSpeed ZeRO-2 and ZeRO-3 (full and LoRA; full with compiled decoding, ``rollout.compile``) on
the CPU (gloo), through rl.grpo.train.

All three runs share one subprocess: DeepSpeed's first engine start JIT-compiles a communication op (~25 s on a
clean machine, cached afterwards), and a single process pays the imports and that compile once. Outside a
launcher DeepSpeed needs the torch.distributed variables, which the subprocess sets.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_runs import assert_mask_rows_trained, before_after, changed_params

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from tiny_runs import write_prepared
    from rl.recipe.config import load_recipe
    from rl.grpo import train
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kw):
            self.optimizer = type(getattr(optimizer, "optimizer", optimizer)).__name__

    tmp = Path(sys.argv[1])
    write_prepared(tmp / "data", n=8)
    for stage, finetune, compiled in ((2, "full", False), (3, "full", False), (3, "lora", False), (3, "full", True)):
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        run = tmp / (f"zero{stage}-{finetune}" + ("-compiled" if compiled else ""))
        recipe = load_recipe(Path("recipes/shapes_gres.yaml"), [f"model.finetune={finetune}",
            *(["grpo.cache_implementation=static", "rollout.compile=true"] if compiled else []),
            "data.env=grefcoco", f"data.train={tmp / 'data'}", "sft.enabled=false", f"run.output_dir={run}",
            "run.report_to=[none]", "monitor.eval_steps=0", "monitor.image_steps=0", "grpo.max_steps=2", "grpo.save_strategy=steps", "grpo.save_steps=2",
            "grpo.learning_rate=0.05" if finetune == "lora" else "grpo.learning_rate=0.01",
            "grpo.per_device_train_batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=8",
            f"grpo.deepspeed=recipes/accelerate/ds_zero{stage}.json",
            "rewards=[{name: answer_match}, {name: 'tiny_runs:varied_reward'}]",
        ])
        seen = Seen()
        final = train.run(recipe, callbacks=[seen])
        print(stage, seen.optimizer, flush=True)
        assert seen.optimizer == {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[stage]
        # rollout.compile under ZeRO-3 (parameters gathered for generation): one graph over both steps' rollouts
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs == (1 if compiled else 0), graphs
        print(f"ZERO{stage} {finetune}{' compiled' if compiled else ''} OK", flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DeepSpeed's CPU backend is tested on Linux")
def test_grpo_under_zero2_zero3_and_zero3_lora(tmp_path):
    env = {
        **os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(29500 + os.getpid() % 1000), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    }
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    for name in ("ZERO2 full OK", "ZERO3 full OK", "ZERO3 lora OK", "ZERO3 full compiled OK"):
        assert name in done.stdout, name
    for stage, finetune, compiled in ((2, "full", False), (3, "full", False), (3, "full", True), (3, "lora", False)):
        run = tmp_path / (f"zero{stage}-{finetune}" + ("-compiled" if compiled else ""))
        m0, m1, tokenizer = before_after(run)
        changed = changed_params(m0, m1)
        assert any("language_model.layers" in k for k in changed), f"ZeRO-{stage} {finetune}: weights did not change"
        assert not any("visual" in k for k in changed), f"ZeRO-{stage} {finetune}: the frozen vision tower moved"
        assert (run / "checkpoint-2" / "COMPLETE").is_file()
    # LoRA under ZeRO-3: final/ is the merged policy (adapters folded into the projections) with the trained
    # mask-token rows, which the checkpoint also carries, gathered from the partitions.
    assert_mask_rows_trained(run, m0, m1, tokenizer)


# Two ranks launched as the README says (accelerate launch, ZeRO-3, LoRA): test_rl_resume.py, which runs that
# job straight and resumed, and checks the straight run's merged final/ and mask-token rows with the helpers above.
