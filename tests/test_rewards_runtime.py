"""wrap_rewards: raw-text decoding, failure isolation (exceptions, timeouts, NaN), failure-rate stop, logging."""

import math
import threading
import time

import pytest

from rewards.runtime import RewardContractError, RewardFailureError, SafeReward, decode_raw, wrap_rewards

A = "<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>"


@pytest.fixture(scope="module")
def tok():
    from rl.policy.model import build_tokenizer

    return build_tokenizer("tiny")


def reward_of(values):
    """A reward returning ``values[completion]`` (or raising what is stored there)."""

    def table(prompts, completions, **kw):
        out = []
        for c in completions:
            v = values[c]
            if isinstance(v, BaseException):
                raise v
            out.append(v)
        return out

    return table


def test_decode_raw_keeps_object_refs_and_mask_tokens_drops_pad_and_eos(tok):
    text = f"A <|object_ref_start|>man<|object_ref_end|> {A}."
    ids = tok(text)["input_ids"] + [tok.eos_token_id] + [tok.pad_token_id] * 3
    assert tok.decode(ids, skip_special_tokens=True) != text  # what TRL hands rewards loses the phrase markers
    assert decode_raw([ids], tok) == [text]
    # An id the tokenizer does not know breaks the group it sits in instead of vanishing.
    bad = tok(A)["input_ids"]
    bad.insert(2, len(tok) + 5)
    (decoded,) = decode_raw([bad], tok)
    assert "\ufffd" in decoded and A not in decoded
    assert decode_raw([[]], tok) == [""]


def test_wrapped_rewards_get_raw_text_in_the_completion_shape(tok):
    seen = []

    def probe(prompts, completions, **kw):
        seen.extend(completions)
        return [1.0] * len(completions)

    text = f"<|object_ref_start|>man<|object_ref_end|> {A}"
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    stripped = tok.decode(ids, skip_special_tokens=True)
    (wrapped,) = wrap_rewards([probe], tokenizer=tok)
    wrapped(prompts=["p"], completions=[stripped], completion_ids=[ids])
    wrapped(prompts=["p"], completions=[[{"role": "assistant", "content": stripped}]], completion_ids=[ids])
    assert seen == [text, [{"role": "assistant", "content": text}]]
    # Without a tokenizer, or without ids, rewards get TRL's text unchanged.
    (plain,) = wrap_rewards([probe])
    seen.clear()
    plain(prompts=["p"], completions=[stripped], completion_ids=[ids])
    assert seen == [stripped]


def test_exceptions_and_non_finite_values_become_none_and_are_counted():
    values = {"ok": 0.5, "boom": KeyError("answer"), "nan": math.nan, "inf": math.inf, "str": "high", "none": None}
    logged = []
    (r,) = wrap_rewards([reward_of(values)], max_failure_rate=1.0)
    out = r(prompts=["p"] * 6, completions=list(values), log_metric=lambda k, v: logged.append((k, v)))
    assert out == [0.5, None, None, None, None, None]
    assert dict(r.failures) == {"KeyError": 1, "NonFinite": 2, "NotANumber": 1}  # None is "not applicable"
    metrics = dict(logged)
    assert metrics["rewards/table/failure_rate"] == pytest.approx(4 / 6)
    assert metrics["rewards/table/failures/NonFinite"] == 2.0
    assert metrics["rewards/table/seconds_per_call"] > 0
    assert r.summary()["samples"] == 6


def test_contract_violations_fail_loudly():
    (short,) = wrap_rewards([lambda prompts, completions, **kw: [1.0]])
    with pytest.raises(RewardContractError, match="returned 1 values for 2 completions"):
        short(prompts=["p", "p"], completions=["a", "b"])


def test_timeout_on_one_sample_is_none_and_quick():
    def slow(prompts, completions, **kw):
        out = []
        for c in completions:
            if c == "hang":
                try:  # a reward that swallows errors must still be stopped
                    time.sleep(30)
                except Exception:
                    return [0.0]
            out.append(1.0)
        return out

    (r,) = wrap_rewards([slow], timeout_s=0.2, max_failure_rate=1.0)
    start = time.perf_counter()
    out = r(prompts=["p"] * 4, completions=["a", "hang", "b", "c"])
    assert time.perf_counter() - start < 3
    assert out == [1.0, None, 1.0, 1.0]
    assert dict(r.failures) == {"Timeout": 1}


def test_timeout_off_the_main_thread():
    (r,) = wrap_rewards([reward_of({"a": 1.0})], timeout_s=0.2, max_failure_rate=1.0)
    hang = SafeReward(lambda prompts, completions, **kw: time.sleep(5), timeout_s=0.2, max_failure_rate=1.0)
    result = {}

    def run():
        result["ok"] = r(prompts=["p"], completions=["a"])
        result["hang"] = hang(prompts=["p"], completions=["x"])

    start = time.perf_counter()
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(10)
    assert time.perf_counter() - start < 3
    assert result == {"ok": [1.0], "hang": [None]}
    assert dict(hang.failures) == {"Timeout": 1}


def test_failure_rate_stops_the_run_with_a_clear_error():
    values = {f"ok{i}": 1.0 for i in range(8)} | {"bad": ZeroDivisionError("division by zero")}
    (r,) = wrap_rewards([reward_of(values)], max_failure_rate=0.2, min_samples=16)
    r(prompts=["p"] * 8, completions=[f"ok{i}" for i in range(7)] + ["bad"])  # 1/8 failed: below the limit
    r(prompts=["p"] * 8, completions=[f"ok{i}" for i in range(7)] + ["bad"])  # 2/16: still below
    with pytest.raises(RewardFailureError) as e:
        r(prompts=["p"] * 8, completions=["bad"] * 4 + [f"ok{i}" for i in range(4)])  # 6/24 = 25%
    assert "'table' failed on 25.0% of the last 24 samples" in str(e.value)
    assert "ZeroDivisionError: 6 (last: division by zero)" in str(e.value)


def test_names_are_unique_and_kept():
    from rewards import get_reward

    wrapped = wrap_rewards([get_reward("answer_match"), get_reward("answer_match", grading="coarse"), get_reward("no_repeat")])
    assert [w.__name__ for w in wrapped] == ["answer_match", "answer_match_2", "no_repeat"]


def test_async_rewards_are_awaited():
    async def later(prompts, completions, **kw):
        return [0.25 for _ in completions]

    (r,) = wrap_rewards([later])
    assert r(prompts=["p"], completions=["a"]) == [0.25]
