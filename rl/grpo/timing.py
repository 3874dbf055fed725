"""Where a GRPO step's time goes, as verl's ``timing_s/*``: seconds per phase, and each phase's share of the step.

Phases of one optimizer step (``on_step_begin`` to ``on_step_end``, every gradient-accumulation micro-step in it):

- ``generation``: the policy sampling completions (HF ``generate`` or vLLM);
- ``rewards``: every reward of the step (each reward's own time is ``rewards/<name>/seconds_per_call``);
- ``logprobs``: the old-policy and reference log-probs computed for the rollouts (none when TRL needs neither);
- ``rollout_other``: the rest of making the rollouts (tokenising, advantages, dynamic sampling's bookkeeping);
- ``forward_backward``: the loss's forward and backward passes (the training step without the rollouts);
- ``optimizer``: clipping aside, the optimizer step.

They sum to the step's time up to what happens between them (the data loader's prefetch, gradient clipping), which
``timing_s/unaccounted`` shows. After a step, outside it: ``checkpoint`` (writing a checkpoint, logged with the next
step). Every value is logged through the Trainer's log to every backend (``timing_s/<phase>`` in seconds, and
``timing_share/<phase>`` of ``timing_s/step``), and ``summary`` turns a run's log history into the console table
``samtok-rl train`` prints at the end.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

from transformers import TrainerCallback

PHASES = ("generation", "rewards", "logprobs", "rollout_other", "forward_backward", "optimizer")
PREFIX, SHARE = "timing_s/", "timing_share/"


class PhaseTimer(TrainerCallback):
    """Collects the phases' seconds of the current step (``span``) and hands them to the trainer's metrics."""

    def __init__(self, metrics):
        self.metrics = metrics  # the trainer's ``_metrics``: TRL averages each key over a logging interval
        self.spans = defaultdict(float)
        self.carry = defaultdict(float)  # time spent after a step's end (checkpoints), logged with the next step
        self._begin = None
        self._optimizer = None

    @contextmanager
    def span(self, name: str, into: str = "step"):
        start = time.perf_counter()
        try:
            yield
        finally:
            (self.spans if into == "step" else self.carry)[name] += time.perf_counter() - start

    def on_step_begin(self, args, state, control, **kwargs):
        self.spans.clear()
        self._begin = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._optimizer = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._optimizer is not None:
            self.spans["optimizer"] += time.perf_counter() - self._optimizer
            self._optimizer = None

    def on_step_end(self, args, state, control, **kwargs):
        if self._begin is None:
            return
        step = time.perf_counter() - self._begin
        s = self.spans
        rollout = s.pop("rollout", 0.0)
        s["rollout_other"] = max(0.0, rollout - s["generation"] - s["rewards"] - s["logprobs"])
        s["forward_backward"] = max(0.0, s.pop("training_step", 0.0) - rollout)
        values = {p: s[p] for p in PHASES}
        values["unaccounted"] = max(0.0, step - sum(values.values()))
        train = self.metrics["train"]
        train[f"{PREFIX}step"].append(step)
        for name, seconds in values.items():
            train[f"{PREFIX}{name}"].append(seconds)
            train[f"{SHARE}{name}"].append(seconds / step if step > 0 else 0.0)
        for name, seconds in self.carry.items():
            train[f"{PREFIX}{name}"].append(seconds)
        self.carry.clear()
        self._begin = None


def summary(log_history: list[dict]) -> str:
    """The console table: mean seconds per step of each phase over the run's logged steps, and its share."""
    rows = [h for h in log_history if f"{PREFIX}step" in h]
    if not rows:
        return ""
    step = sum(h[f"{PREFIX}step"] for h in rows) / len(rows)
    lines = [f"GRPO step time by phase (mean over {len(rows)} logged intervals; timing_s/* in the logs):",
             f"  {'phase':<18} {'s/step':>8} {'share':>7}"]
    for name in (*PHASES, "unaccounted"):
        values = [h[f"{PREFIX}{name}"] for h in rows if f"{PREFIX}{name}" in h]
        if values:
            mean = sum(values) / len(values)
            lines.append(f"  {name:<18} {mean:8.3f} {mean / step if step else 0:7.1%}")
    lines.append(f"  {'step':<18} {step:8.3f} {1:7.1%}")
    ckpt = [h[f"{PREFIX}checkpoint"] for h in log_history if f"{PREFIX}checkpoint" in h]
    if ckpt:
        lines.append(f"  checkpoints (outside the steps): {sum(ckpt) / len(ckpt):.3f} s on average")
    return "\n".join(lines)
