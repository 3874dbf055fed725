"""reward_runtime.isolation=process: a hanging reward is killed at its timeout with no process left behind, a
reward that aborts its process costs only that sample, rewards using signal.alarm work, results are the
in-process ones."""

import os
import signal
import time

import pytest

from rewards import get_reward
from rewards.runtime import SafeReward

A = "<|mt_start|><|mt_0001|><|mt_0300|><|mt_end|>"


def picky(completions, **kwargs):
    """Aborts its process on 'abort', hangs in a C call on 'hang', raises on 'raise'."""
    out = []
    for c in completions:
        if c == "abort":
            os.abort()
        if c == "hang":
            time.sleep(60)  # one long C call: SIGALRM could not interrupt it before it returns
        if c == "raise":
            raise KeyError("bad row")
        out.append(float(len(c)))
    return out


def uses_alarm(completions, **kwargs):
    """A reward that times its own work with signal.alarm (only possible on a main thread)."""
    def on_alarm(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(5)
    try:
        return [1.0 for _ in completions]
    finally:
        signal.alarm(0)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0): reaped means gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def test_a_crash_costs_one_sample_and_a_hang_is_killed():
    r = SafeReward(picky, timeout_s=1.0, max_failure_rate=1.0, isolation="process")
    try:
        out = r(completions=["ab", "abort", "abcd", "raise", "hang", "x"])
        assert out == [2.0, None, 4.0, None, None, 1.0]
        assert r.failures == {"WorkerCrashed": 1, "KeyError": 1, "Timeout": 1}
        assert "exit code -6" in r.last_error["WorkerCrashed"]  # SIGABRT
        assert r.worker.started == 3  # restarted after the abort and after the hang
        hung = r.worker.pid()
        r.close()
        assert not _alive(hung)
    finally:
        r.close()


def test_the_hung_worker_is_gone_after_its_timeout():
    r = SafeReward(picky, timeout_s=0.5, max_failure_rate=1.0, isolation="process")
    try:
        r(completions=["a"])
        pid = r.worker.pid()
        t = time.perf_counter()
        assert r(completions=["hang"]) == [None]
        assert time.perf_counter() - t < 5
        assert not _alive(pid)  # killed, not abandoned
    finally:
        r.close()


def test_signal_alarm_rewards_and_builtin_results_match_in_process():
    r = SafeReward(uses_alarm, timeout_s=2.0, isolation="process")
    try:
        assert r(completions=["a", "b"]) == [1.0, 1.0]
    finally:
        r.close()
    builtin = get_reward("answer_match", grading="coarse")
    batch = dict(completions=[A, "No target.", "<|mt_start|><|mt_0001|><|mt_0301|><|mt_end|>"], answer=[A, A, A])
    inside = SafeReward(builtin, timeout_s=5.0, isolation="process")
    try:
        assert inside(**batch) == SafeReward(builtin)(**batch) == [1.0, 0.0, 0.4]
    finally:
        inside.close()


def test_bad_isolation_is_refused():
    with pytest.raises(ValueError, match="isolation must be one of"):
        SafeReward(picky, isolation="thread")


def test_the_recipe_switch_reaches_the_trainers_rewards(tmp_path):
    from pathlib import Path

    from rl.grpo import trainer as tr
    from rl.policy.model import build_tokenizer
    from rl.recipe.config import RecipeError, load_recipe

    recipe_file = Path(__file__).resolve().parents[1] / "recipes" / "shapes_gres.yaml"
    recipe = load_recipe(recipe_file, ["reward_runtime.isolation=process",
                                       "rewards=[{name: answer_match}, {name: 'test_rewards_isolation:picky'}]"])
    rewards = tr.build_rewards(recipe, build_tokenizer("tiny"))
    try:
        assert all(getattr(r, "reward", r).worker is not None for r in rewards)
        assert rewards[1](completions=["abc", "abort"]) == [3.0, None]
    finally:
        for r in rewards:
            getattr(r, "reward", r).close()
    with pytest.raises(RecipeError, match="reward_runtime.isolation"):
        load_recipe(recipe_file, ["reward_runtime.isolation=threads"])
