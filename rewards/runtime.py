"""What the trainer puts around reward functions: raw-text decoding, fault isolation and logging.

``wrap_rewards(funcs, tokenizer=..., timeout_s=..., max_failure_rate=...)`` returns TRL-compatible reward
functions (same ``__name__`` as the wrapped ones) that

* hand the reward the *raw* completion text, decoded from ``completion_ids`` with
  ``skip_special_tokens=False`` (pad/eos removed): TRL decodes ``completions`` with ``skip_special_tokens=True``,
  which strips Qwen's ``<|object_ref_start|>``/``<|object_ref_end|>`` (special tokens) that GCG rewards need;
* turn an exception, a timeout (per sample: with ``timeout_s`` set the reward is called one completion
  at a time), NaN/inf or a non-number on a sample into ``None`` for that sample (TRL then
  leaves that reward out for that sample, and out of the group baseline), counted per exception type;
* raise ``RewardFailureError`` when the failure rate over the recent samples exceeds ``max_failure_rate``;
* report seconds per call and failures through TRL's ``log_metric`` kwarg, which reaches every logging
  backend (TRL's own reward timing goes only to wandb/mlflow/trackio). Mean and std per reward are logged by
  TRL itself as ``rewards/<name>/mean`` and ``rewards/<name>/std`` to every backend.

Isolation (``isolation="process"``, ``rewards.isolation``): each reward runs in a worker process, one sample per
call; a timeout kills the worker (nothing is left running) and a crashed worker costs only its sample (counted
as ``WorkerCrashed``); the worker is restarted on the next sample.

Timeouts (in-process): on the main thread (where TRL calls synchronous rewards) a ``SIGALRM`` timer interrupts the reward
at its next Python bytecode, so a reward stuck inside one long C call is interrupted only when that call
returns. Off the main thread the call runs in a helper thread that is abandoned on timeout (Python cannot kill
threads): its sample scores ``None`` and the thread finishes in the background.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import signal
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager

from rewards.isolation import ProcessReward, WorkerTimeout, _Remote  # stdlib only: cheap, and off the per-sample path

ISOLATION = ("none", "process")


class RewardFailureError(RuntimeError):
    """Too many samples of one reward failed: the run stops rather than train on a broken signal."""


class RewardContractError(ValueError):
    """A reward returned something that is not one value per completion: a bug, reported loudly."""


class RewardTimeout(BaseException):
    # BaseException, so that a reward's own ``except Exception`` cannot swallow the timeout.
    pass


# ---------------------------------------------------------------------------------------------- raw text


def _token_ids_to_drop(tokenizer, extra=()) -> set[int]:
    ids = set(extra)
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(i for i in v if isinstance(i, int))
    return ids


def decode_raw(completion_ids, tokenizer, drop_ids=None) -> list[str]:
    """Decode token ids keeping special tokens (mask and object-ref tokens), without pad/eos.

    Ids the tokenizer does not know (a model vocabulary padded past the tokenizer) become U+FFFD, so that an
    unknown id inside a mask group breaks the group instead of silently disappearing.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
    drop = _token_ids_to_drop(tokenizer) if drop_ids is None else set(drop_ids)
    vocab = len(tokenizer)
    out = []
    for ids in completion_ids:
        ids = [int(i) for i in ids if int(i) not in drop]
        if all(0 <= i < vocab for i in ids):
            out.append(tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
            continue
        pieces, run = [], []
        for i in ids + [-1]:
            if 0 <= i < vocab:
                run.append(i)
                continue
            if run:
                pieces.append(tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False))
                run = []
            pieces.append("\ufffd")
        out.append("".join(pieces[:-1]))  # the last piece is the sentinel's
    return out


class RawText:
    """Decodes a batch once for all the rewards of a step, and for the trainer's completion log (TRL passes the same
    list object to each)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.drop = _token_ids_to_drop(getattr(tokenizer, "tokenizer", tokenizer))
        self._key = None  # the list object last decoded: kept alive so its id cannot be reused
        self._texts = None

    def texts(self, completion_ids) -> list[str]:
        """The raw text of every completion (special tokens kept); decoded once per batch object."""
        if self._key is not completion_ids:
            self._texts = decode_raw(completion_ids, self.tokenizer, self.drop)
            self._key = completion_ids
        return self._texts

    def __call__(self, completions, completion_ids):
        if self.tokenizer is None or completion_ids is None or len(completion_ids) != len(completions):
            return completions
        return [
            [{"role": "assistant", "content": t}] if isinstance(c, list) else t
            for c, t in zip(completions, self.texts(completion_ids))
        ]


# ------------------------------------------------------------------------------------------- timeouts


def _raise_timeout(signum, frame):
    raise RewardTimeout()


def _can_signal() -> bool:
    return threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")


@contextmanager
def _alarm_handler():
    """Install the SIGALRM handler for a batch of timed calls (once: it costs more than the timer)."""
    previous = signal.signal(signal.SIGALRM, _raise_timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _timed_call(fn, timeout_s, use_signal: bool):
    if use_signal:  # the handler is installed by the caller
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True, name="reward-timeout-worker")
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


# -------------------------------------------------------------------------------------------- wrapper


class SafeReward:
    """A TRL reward function around ``func``; see the module docstring. ``summary()`` gives the running totals."""

    def __init__(self, func, name=None, raw_text=None, timeout_s=None, max_failure_rate=0.1,
                 failure_window=512, min_samples=32, isolation: str = "none"):
        if not callable(func):
            raise TypeError(f"reward must be callable, got {type(func).__name__}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s!r}")
        if not 0 <= max_failure_rate <= 1:
            raise ValueError(f"max_failure_rate must be in [0, 1], got {max_failure_rate!r}")
        if isolation not in ISOLATION:
            raise ValueError(f"isolation must be one of {ISOLATION}, got {isolation!r}")
        self.func = func
        self.worker = None
        if isolation == "process":
            self.worker = ProcessReward(func)
        self.__name__ = name or getattr(func, "__name__", type(func).__name__)
        self.raw_text = raw_text or RawText(None)
        self.timeout_s = timeout_s
        self.max_failure_rate = max_failure_rate
        self.min_samples = min_samples
        self._recent = deque(maxlen=failure_window)  # True for a failed sample
        self.failures = Counter()  # exception type name -> count, over the whole run
        self.last_error = {}  # exception type name -> message of the latest one
        self.calls = 0
        self.samples = 0
        self.seconds = 0.0

    def __call__(self, prompts=None, completions=(), completion_ids=None, **columns):
        start = time.perf_counter()
        n = len(completions)
        texts = self.raw_text(completions, completion_ids)
        failed = Counter()
        values = self._batch(prompts, texts, completion_ids, columns, n, failed)
        elapsed = time.perf_counter() - start
        self._account(n, values, failed, elapsed, columns.get("log_metric"))
        return values

    # Without a timeout: one batch call, and only if it raises, every sample on its own to find the bad ones.
    # With a timeout: every sample on its own, each under the limit (a few microseconds per sample).
    def _batch(self, prompts, texts, completion_ids, columns, n, failed):
        if self.worker is not None:  # one sample per call: a crash or a hang costs that sample only
            return [self._single(i, prompts, texts, completion_ids, columns, n, failed) for i in range(n)]
        if self.timeout_s:
            if _can_signal():
                with _alarm_handler():
                    return [self._single(i, prompts, texts, completion_ids, columns, n, failed, True) for i in range(n)]
            return [self._single(i, prompts, texts, completion_ids, columns, n, failed, False) for i in range(n)]
        try:
            out = self._invoke(prompts, texts, completion_ids, columns)
        except Exception:  # noqa: BLE001 - isolated per sample below
            return [self._single(i, prompts, texts, completion_ids, columns, n, failed) for i in range(n)]
        if not isinstance(out, (list, tuple)) or len(out) != n:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise RewardContractError(f"reward {self.__name__!r} returned {got} for {n} completions")
        return [self._check(v, failed) for v in out]

    def _single(self, i, prompts, texts, completion_ids, columns, n, failed, use_signal=False):
        def pick(v):
            return v[i : i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v

        args = (pick(prompts), pick(texts), pick(completion_ids), {k: pick(v) for k, v in columns.items()})
        try:
            if self.worker is not None:
                out = self.worker.call(self.timeout_s, prompts=args[0], completions=args[1], completion_ids=args[2],
                                       **args[3])
            elif self.timeout_s:
                out = _timed_call(lambda: self._invoke(*args), self.timeout_s, use_signal)
            else:
                out = self._invoke(*args)
        except (RewardTimeout, WorkerTimeout):
            return self._fail(failed, "Timeout", f"sample exceeded {self.timeout_s} s")
        except _Remote as e:  # raised by the reward in its worker process
            return self._fail(failed, e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - the point of the wrapper
            return self._fail(failed, type(e).__name__, str(e))
        if not isinstance(out, (list, tuple)) or len(out) != 1:
            raise RewardContractError(f"reward {self.__name__!r} returned {out!r:.80} for 1 completion")
        return self._check(out[0], failed)

    def _invoke(self, prompts, completions, completion_ids, columns):
        out = self.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out

    def _check(self, v, failed):
        if v is None:
            return None  # "not applicable": TRL's contract, not a failure
        if not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            return self._fail(failed, "NotANumber", f"reward value {v!r:.80} is not a number")
        try:
            v = float(v)
        except (TypeError, ValueError) as e:
            return self._fail(failed, "NotANumber", str(e))
        if not math.isfinite(v):
            return self._fail(failed, "NonFinite", f"reward value {v}")
        return v

    def _fail(self, failed, kind, message):
        failed[kind] += 1
        self.last_error[kind] = message
        return None

    def _account(self, n, values, failed, elapsed, log_metric):
        self.calls += 1
        self.samples += n
        self.seconds += elapsed
        self.failures.update(failed)
        n_failed = sum(failed.values())
        self._recent.extend([True] * n_failed + [False] * (n - n_failed))
        if callable(log_metric):
            log_metric(f"rewards/{self.__name__}/seconds_per_call", elapsed)
            log_metric(f"rewards/{self.__name__}/failure_rate", n_failed / n if n else 0.0)
            # Every kind seen so far, 0 when absent: TRL averages a metric over the calls that logged it.
            for kind in self.failures:
                log_metric(f"rewards/{self.__name__}/failures/{kind}", float(failed.get(kind, 0)))
        recent = len(self._recent)
        rate = sum(self._recent) / recent if recent else 0.0
        if recent >= self.min_samples and rate > self.max_failure_rate:
            detail = "; ".join(f"{k}: {c} (last: {self.last_error.get(k, '')[:200]})" for k, c in self.failures.items())
            raise RewardFailureError(
                f"reward {self.__name__!r} failed on {rate:.1%} of the last {recent} samples "
                f"(max_failure_rate={self.max_failure_rate}); failures over the run: {detail}"
            )

    def close(self) -> None:
        """Stop the worker process, if any (also done when the reward is garbage-collected or Python exits)."""
        if self.worker is not None:
            self.worker.close()

    def summary(self) -> dict:
        return {
            "calls": self.calls,
            "samples": self.samples,
            "seconds_per_call": self.seconds / self.calls if self.calls else 0.0,
            "failures": dict(self.failures),
        }


async def _await(x):
    return await x


def wrap_rewards(funcs, tokenizer=None, timeout_s=None, max_failure_rate=0.1, failure_window=512,
                 min_samples=32, isolation: str = "none", raw_text: RawText | None = None) -> list[SafeReward]:
    """Wrap reward functions for ``trl.GRPOTrainer(reward_funcs=...)``; see the module docstring.

    ``tokenizer`` (or a processor) enables raw-text decoding of ``completion_ids``; without it rewards get
    TRL's ``completions``. ``raw_text``: a ``RawText`` to share the decoded batch with (the trainer's completion log). ``isolation="process"`` runs each reward in its own worker process
    (``rewards.isolation``). Names are made unique (``answer_match``, ``answer_match_2``) because TRL logs
    ``rewards/<name>/...`` and two rewards of one name would share a key.
    """
    raw = raw_text or RawText(tokenizer)
    seen = Counter()
    wrapped = []
    for f in funcs:
        base = getattr(f, "__name__", type(f).__name__)
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        wrapped.append(SafeReward(f, name=name, raw_text=raw, timeout_s=timeout_s, max_failure_rate=max_failure_rate,
                                  failure_window=failure_window, min_samples=min_samples, isolation=isolation))
    return wrapped
