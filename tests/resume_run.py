"""Support for the resume tests: a training process, and the checkpoint state two runs are compared by.

``python tests/resume_run.py STOP_AT key=value ...`` runs ``rl.grpo.train.run`` on ``recipes/shapes_gres.yaml``
with the overrides given and, when STOP_AT > 0, stops after that step as a preempted job would (after its
checkpoint is written), so that a second process can resume it. It works under ``accelerate launch`` too.
With ``RESUME_RUN_DUMP=FILE`` it writes the policy's weights as the first step begins (after any resume
has loaded them) to FILE; ``RESUME_RUN_FAULT`` makes one rank die or hang at a step (``FaultAt``).
"""

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
# Logged values that measure time, not training.
TIMING = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "seconds_per_call")
TIMING_PREFIXES = ("timing_s/", "timing_share/")  # rl.grpo.timing's phases: wall clock, not training state


def untimed(entry: dict) -> dict:
    """A log-history entry without its wall-clock values."""
    return {k: v for k, v in entry.items() if not k.endswith(TIMING) and not k.startswith(TIMING_PREFIXES)}


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step and state.global_step >= self.step:
            control.should_training_stop = True


class DumpWeights(TrainerCallback):
    def __init__(self, path: str):
        self.path = path

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.path and not os.path.exists(self.path):
            from safetensors.torch import save_file

            save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, self.path)


class FaultAt(TrainerCallback):
    """``RESUME_RUN_FAULT=kill:RANK:STEP`` SIGKILLs that rank as the step begins (first attempt of a torchrun
    job only, so that a restarted job runs through); ``hang:RANK:STEP`` makes it stop participating there
    (it sleeps; the launcher's SIGTERM ends it, as it would a rank stuck in compute)."""

    def __init__(self, spec: str):
        self.kind, self.rank, self.step = (spec.split(":") + ["", "", ""])[:3] if spec else ("", "", "")

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.kind or int(self.rank) != args.process_index or state.global_step + 1 != int(self.step):
            return
        if self.kind == "kill" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "hang":
            signal.signal(signal.SIGTERM, lambda *a: os._exit(1))
            time.sleep(3600)


def main(argv):
    from rl.grpo import train
    from rl.grpo.distributed import leave_process_group
    from rl.recipe.config import load_recipe

    logging.basicConfig(level=logging.INFO)
    stop_at, overrides = int(argv[0]), argv[1:]
    recipe = load_recipe(ROOT / "recipes" / "shapes_gres.yaml", overrides)
    train.run(recipe, callbacks=[StopAt(stop_at), DumpWeights(os.environ.get("RESUME_RUN_DUMP", "")),
                                 FaultAt(os.environ.get("RESUME_RUN_FAULT", ""))])
    leave_process_group()  # as samtok-rl train does


# ---------------------------------------------------------------- the state compared


def tensors(obj, prefix: str = "") -> dict:
    """Every tensor inside a (nested) checkpoint object, keyed by its path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def checkpoint_state(ckpt: Path) -> dict:
    """What a run's ``checkpoint-N`` holds, as comparable values: weights (whole model or adapter + mask-token
    rows), optimizer moments (the Trainer's file or DeepSpeed's partitions), scheduler, every rank's RNG
    streams, and the logged history without timings."""
    from safetensors.torch import load_file

    state = {}
    for name in ("model.safetensors", "adapter_model.safetensors", "mask_token_rows.safetensors"):
        if (ckpt / name).is_file():
            state[name] = load_file(ckpt / name)
    blobs = sorted(ckpt.glob("optimizer.pt")) + sorted(ckpt.glob("global_step*/*optim_states.pt"))
    blobs += sorted(ckpt.glob("scheduler.pt")) + sorted(ckpt.glob("rng_state*.pth"))
    for f in blobs:
        state[str(f.relative_to(ckpt))] = tensors(torch.load(f, map_location="cpu", weights_only=False))
    history = json.loads((ckpt / "trainer_state.json").read_text())["log_history"]
    state["log_history"] = [untimed(h) for h in history]
    return state


def completions(run: Path) -> dict:
    """Per logged step: the prompts, sampled completions and rewards (TRL's completion parquet files)."""
    import pandas as pd

    out = {}
    for f in sorted((run / "completions").glob("*.parquet")):
        frame = pd.read_parquet(f)
        out[f.name] = frame[[c for c in frame.columns if c not in ("step",)]].to_dict("list")
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for part in a:
        if part == "log_history":
            assert a[part] == b[part]
            continue
        assert a[part].keys() == b[part].keys(), part
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {len(differ)} of {len(a[part])} tensors differ, e.g. {differ[:3]}"


if __name__ == "__main__":
    main(sys.argv[1:])
