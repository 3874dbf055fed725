"""Preemption: SIGTERM finishes the current GRPO step, writes a complete checkpoint and stops the run cleanly.

Clusters send SIGTERM some seconds before they kill a job. The handler only raises a flag; at the end of
the step every rank agrees on it (one all-reduce, so that no rank saves alone and the others hang), the
Trainer writes its checkpoint through the usual staged path, and ``rl.grpo.train.run`` raises ``Preempted``,
which ``samtok-rl train`` turns into exit status 0. ``run.resume=true`` then continues exactly. Inside a
generation block (``steps_per_generation`` or ``num_iterations`` > 1) the stop waits for the block's end:
its rollouts live in memory only.

Commands that run more than one stage (``samtok-rl experiment``, ``demo``, ``eval``) hold ``sigterm_stops``:
outside GRPO's own handler a SIGTERM raises ``Stopped`` at once, and the command ends with one line saying what was
kept and how to continue, exit status 0, as ``train`` does.

An out-of-memory error mid-step is the other early stop: ``SamtokGRPOTrainer`` drops the step's partial
gradients, saves the last complete step when that is safe and raises ``OutOfMemoryStop`` (exit status 1),
whose message says what was saved and what to lower.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from rl.recipe.schema import between_generation_blocks


class Preempted(Exception):
    """The run stopped on SIGTERM after saving ``checkpoint``."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        super().__init__(f"stopped on SIGTERM after saving {checkpoint}; continue with run.resume=true")


class Stopped(Exception):
    """SIGTERM outside a GRPO stage (SFT, evaluation, data encoding): the work under way is dropped."""


@contextmanager
def sigterm_stops():
    """While the block runs, SIGTERM raises ``Stopped`` (GRPO's ``StopOnSigterm`` takes over during training and
    puts this handler back after). Main thread only: signals are delivered there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped("stopped on SIGTERM")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OutOfMemoryStop(RuntimeError):
    """Out of memory mid-step: the step was not applied; the message names what was saved and what to lower."""


class StopOnSigterm(TrainerCallback):
    def __init__(self, num_iterations: int = 1):
        self.num_iterations = num_iterations
        self.requested = False
        self.stopped_at: int | None = None

    @contextmanager
    def installed(self):
        """SIGTERM raises the flag while the block runs (main thread only: signals are delivered there)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._on_signal)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_signal(self, signum, frame):
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if not between_generation_blocks(state.global_step, args.gradient_accumulation_steps,
                                         args.steps_per_generation, self.num_iterations):
            return  # inside a generation block: a checkpoint here could not be resumed exactly
        if _any_rank(self.requested):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step


def _any_rank(flag: bool) -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())
