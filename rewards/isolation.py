"""Rewards in a worker process (``reward_runtime.isolation: process``): a reward that hangs is killed at its
timeout, one that crashes its process (a segfault in a C extension, ``os.abort()``) costs only the sample it was
scoring, and neither can take the trainer down.

One worker process per reward, started on first use and restarted after a crash or a timeout. On Linux it is
forked, so the reward needs no pickling and starts instantly; elsewhere it is spawned and the reward must pickle
(every built-in reward does). The reward runs on the worker's main thread, so rewards that use ``signal.alarm``
themselves work. What crosses the pipe is the call's keyword arguments and the returned list: TRL's
``log_metric``/``log_extra`` callbacks stay behind (they belong to the trainer), so a reward in a worker cannot log
extra columns or metrics. Fork and CUDA do not mix: keep GPU rewards (``mask_iou`` on a GPU) in the trainer's
process (``isolation: none``).
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import os
import signal
import weakref

# TRL's per-call callbacks: bound to the trainer, neither picklable nor meaningful in another process.
_STAY_BEHIND = ("log_metric", "log_extra")


class WorkerCrashed(RuntimeError):
    """The reward's worker process died while scoring (its exit code says how)."""


class WorkerTimeout(BaseException):
    # BaseException, as rewards.runtime.RewardTimeout: nothing on the caller's side may swallow it.
    pass


def _serve(conn, func) -> None:
    import faulthandler

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the trainer, which then closes the pipe
    faulthandler.disable()  # a crash is reported by its exit code; a forked dump of every thread is only noise
    while True:
        try:
            kwargs = conn.recv()
        except EOFError:  # the trainer went away
            return
        if kwargs is None:
            return
        try:
            out = func(**kwargs)
            if inspect.isawaitable(out):
                out = asyncio.run(_await(out))
            conn.send(("ok", out))
        except BaseException as e:  # noqa: BLE001 - reported to the trainer, which counts it per type
            conn.send(("error", type(e).__name__, str(e)[:2000]))


async def _await(x):
    return await x


def _context():
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


class ProcessReward:
    """Calls ``func(**kwargs)`` in a worker process; ``call`` raises ``WorkerTimeout`` or ``WorkerCrashed``."""

    def __init__(self, func):
        self.func = func
        self.proc = self.conn = None
        self.started = 0  # worker processes started so far (1 + restarts)
        weakref.finalize(self, ProcessReward._stop, self.__dict__)

    def call(self, timeout_s: float | None, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in _STAY_BEHIND}
        if self.proc is None or not self.proc.is_alive():
            self._start()
        try:
            self.conn.send(kwargs)
        except (BrokenPipeError, EOFError, OSError):
            self._kill()
            raise WorkerCrashed(f"reward process died before scoring (exit code {self._exitcode()})") from None
        if not self.conn.poll(timeout_s):
            self._kill()  # the worker, and whatever it was stuck in, goes: nothing is left behind
            raise WorkerTimeout()
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            code = self._exitcode()
            self._kill()
            raise WorkerCrashed(f"reward process died while scoring (exit code {code})") from None
        if reply[0] == "ok":
            return reply[1]
        raise _Remote(reply[1], reply[2])

    def close(self) -> None:
        ProcessReward._stop(self.__dict__)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _start(self) -> None:
        self._kill()
        ctx = _context()
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, self.func), daemon=True, name="reward-worker")
        self.proc.start()
        child.close()
        self.conn = parent
        self.started += 1

    def _exitcode(self):
        if self.proc is None:
            return None
        self.proc.join(1)
        return self.proc.exitcode

    def _kill(self) -> None:
        ProcessReward._stop(self.__dict__, graceful=False)

    @staticmethod
    def _stop(state: dict, graceful: bool = True) -> None:
        proc, conn = state.get("proc"), state.get("conn")
        if conn is not None:
            if graceful and proc is not None and proc.is_alive():
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            conn.close()
        if proc is not None:
            proc.join(1 if graceful else 0)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            if proc.pid and proc.exitcode is None:  # pragma: no cover - a zombie the OS will not reap
                os.kill(proc.pid, signal.SIGKILL)
        state["proc"] = state["conn"] = None


class _Remote(Exception):
    """An exception raised by the reward in its worker, re-raised here under its own type name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
