"""Process-group helpers: joining the group (restarts included) and leaving it, rank 0 / barrier, gathering ZeRO-3
partitions."""

from __future__ import annotations

import os
from contextlib import contextmanager


def init_process_group(timeout_s: float):
    """accelerate's process state (a process group under a launcher) with collectives timing out after
    ``timeout_s``. The first call in a process wins: transformers' own (``TrainingArguments``, when TRL's config
    is built) passes no timeout with ``use_cpu``, so gloo ranks would wait torch's default 30 minutes."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    timeout = timedelta(seconds=timeout_s)
    _join_restarted_attempt(timeout)
    # cpu=True where training will run on the CPU (TRL's use_cpu): accelerate's CPU rendezvous, as transformers'.
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)


def _join_restarted_attempt(timeout) -> None:
    """A job that torchrun restarted (``--max-restarts``) joins its process group under a key prefix of its own.
    The elastic agent keeps one store for every attempt, and the process group's keys (each rank's address) are
    the same names each time: a restarted rank could read a dead rank's address before the new one was written
    and fail to connect (gloo's ``connectFullMesh ... Connection refused``, seen on about half the restarts).
    torch's ``_create_c10d_store`` assumes a new store per retry and adds no prefix. The first attempt is left to
    accelerate, as every launch without restarts is."""
    import torch
    import torch.distributed as dist

    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt == 0 or dist.is_initialized() or "MASTER_ADDR" not in os.environ:
        return
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout, rank=rank,
                            world_size=world_size, store=dist.PrefixStore(f"samtok-rl/attempt-{attempt}", store))


def leave_process_group() -> None:
    """Leave the process group, where this process joined one, as its last act before exiting. A rank that exits
    without it can abort in the interpreter's teardown after a run that succeeded: gloo's worker threads still hold
    work whose tensors need the interpreter then (SIGABRT, "terminate called without an active exception"; seen once
    in a two-rank ZeRO-3 test, pytorch/pytorch#179291), and the launcher reports the job failed. Entry points call
    it (``samtok-rl train``), not ``rl.grpo.train.run``, whose callers may train again in the same group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextmanager
def gathered(params):
    """The full tensors of ZeRO-3 partitioned ``params`` inside the block (collective: every rank enters);
    a no-op for ordinary parameters."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield
