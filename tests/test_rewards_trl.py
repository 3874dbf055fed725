"""The reward contract inside a real 2-step trl.GRPOTrainer run on the tiny policy: wrapped rewards see raw
text (object-ref tokens kept), failures become None without stopping the run, and per-reward mean, std, time
and failures reach the logging backends (checked in TensorBoard's event files)."""

import math

import numpy as np
from PIL import Image

from rewards import get_reward, wrap_rewards
from rewards.runtime import decode_raw

GCG = (
    "A <|object_ref_start|>man<|object_ref_end|> <|mt_start|><|mt_0001|><|mt_0258|><|mt_end|> "
    "and a <|object_ref_start|>dog<|object_ref_end|> <|mt_start|><|mt_0003|><|mt_0260|><|mt_end|>."
)


def test_rewards_inside_grpo_trainer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trl import GRPOConfig, GRPOTrainer

    from rl.policy.model import build_tiny_policy

    model, processor = build_tiny_policy(seed=0)
    tok = processor.tokenizer
    ref_start, ref_end = tok.convert_tokens_to_ids(["<|object_ref_start|>", "<|object_ref_end|>"])
    rng = np.random.default_rng(0)
    rows = [
        {
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
            "image": Image.fromarray((rng.random((56, 56, 3)) * 255).astype(np.uint8)),
            "answer": GCG,
        }
        for _ in range(4)
    ]
    from datasets import Dataset

    seen = {"raw": [], "trl": [], "ids": []}

    def probe(prompts, completions, completion_ids, **kw):
        seen["raw"].extend(c[0]["content"] for c in completions)
        seen["ids"].extend(completion_ids)
        return [len(c[0]["content"]) / 100 for c in completions]  # varies, so the policy gets a gradient

    def trl_text(prompts, completions, **kw):  # unwrapped: sees what TRL decodes
        seen["trl"].extend(c[0]["content"] for c in completions)
        return [0.0] * len(completions)

    calls = {"n": 0}

    def flaky(prompts, completions, **kw):  # with a timeout set, rewards are called one sample at a time
        calls["n"] += 1
        return [math.nan if calls["n"] == 1 else 1.0 for _ in completions]

    wrapped = wrap_rewards(
        [get_reward("answer_match", phrase_weight=1.0), get_reward("gcg_format"), probe, flaky],
        tokenizer=processor, timeout_s=5.0, max_failure_rate=0.5,
    )
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=4,
        num_generations=4, max_completion_length=12, max_steps=2, learning_rate=1e-2, logging_steps=1,
        report_to=["tensorboard"], save_strategy="no", dataloader_num_workers=0,
        seed=0, beta=0.0, gradient_checkpointing=False,
        # Push the random policy towards the object-ref tokens, which TRL's own decoding strips.
        generation_kwargs={"sequence_bias": [[[ref_start], 6.0], [[ref_end], 6.0]]},
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer = GRPOTrainer(model=model, reward_funcs=[*wrapped, trl_text], args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=processor)
    trainer.train()

    # Raw text: exactly the ids decoded with special tokens, object refs included; TRL's text has none.
    assert seen["raw"] == decode_raw(seen["ids"], tok) and len(seen["raw"]) == 8
    assert any("<|object_ref_start|>" in t for t in seen["raw"])
    assert not any("<|object_ref_start|>" in t for t in seen["trl"])
    # Learning happened.
    assert any(not p.detach().equal(b) for p, b in zip(model.parameters(), before))

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for name in ("answer_match", "gcg_format", "probe", "flaky"):
        for key in (f"rewards/{name}/mean", f"rewards/{name}/std", f"rewards/{name}/seconds_per_call"):
            assert all(key in h for h in logs), key
    # The NaN became None: flaky's mean is over the valid values only (NaN would make it NaN, a zero 0.75),
    # and the failure is counted in the step it happened.
    assert [h["rewards/flaky/mean"] for h in logs] == [1.0, 1.0]
    assert [h["rewards/flaky/failures/NonFinite"] for h in logs] == [1.0, 0.0]
    assert not any("rewards/probe/failures" in k for h in logs for k in h)
    assert [h["rewards/flaky/failure_rate"] for h in logs] == [0.25, 0.0]
    assert dict(wrapped[3].failures) == {"NonFinite": 1}

    tags = set()
    for path in tmp_path.rglob("events.out.tfevents.*"):  # TensorBoard writes under output_dir/runs/
        events = EventAccumulator(str(path))
        events.Reload()
        tags |= set(events.Tags()["scalars"])
    for name in ("answer_match", "flaky"):
        assert {f"train/rewards/{name}/mean", f"train/rewards/{name}/std",
                f"train/rewards/{name}/seconds_per_call"} <= tags
