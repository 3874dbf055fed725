"""``samtok-rl eval``: generate with a policy over an environment split and report the official metrics
(``rl.eval.evaluate``)."""

from __future__ import annotations

import sys

from rl.cli.errors import bad_input


def command(policy: str, env: str, out: str, split: str = "val", option: list[str] = (), tokenizer: str = "tiny16",
            tokenizer_device: str | None = None, limit: int | None = None, batch_size: int = 8,
            max_new_tokens: int = 256, grid: int = 16, no_captions: bool = False, bert: str | None = None,
            lenient: bool = False, backend: str = "auto", device: str | None = None, **vllm_options) -> int:
    """Generate with ``policy`` over ``env``'s ``split`` and write the official metrics to ``out``.
    ``vllm_options``: ``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``tensor_parallel_size``
    (``rl.eval.vllm_backend.engine_kwargs``, which holds their defaults). The exit status."""
    from envs import get_env
    from envs.prepare import parse_options
    from rl.eval.evaluate import complete, default_device, eval_rows, format_table, report
    from rl.grpo.preemption import Stopped, sigterm_stops
    from tokenizer.load import load_mask_tokenizer

    def run():
        environment = get_env(env, **parse_options(option))
        rows = eval_rows(environment, split, limit, strict=not lenient)
        embed = None
        if bert:
            from envs.metrics import bert_embed

            embed = bert_embed(bert)
        mask_tokenizer = load_mask_tokenizer(tokenizer)  # on the CPU until the policy is gone
        texts, info = complete(rows, policy, out, backend, device, max_new_tokens, batch_size, **vllm_options)
        mask_tokenizer = mask_tokenizer.to(tokenizer_device or default_device())
        return environment, rows, info, report(rows, texts, mask_tokenizer, environment.task, out, grid, embed,
                                               not no_captions, info)

    try:
        with sigterm_stops():
            environment, rows, info, metrics = run()
    except (ValueError, FileNotFoundError) as e:
        return bad_input("samtok-rl eval: error", e)
    except Stopped:
        print(f"stopped on SIGTERM: the evaluation did not finish (what {out} holds is incomplete); run the same "
              "command again", file=sys.stderr)
        return 0
    print(f"{environment.name} {split}: {len(rows)} samples, {info['backend']} backend")
    print(format_table(metrics))
    return 0
