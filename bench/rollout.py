"""Rollout backends side by side, in one run: generated tokens/s of HF ``generate`` (what GRPO uses without
vLLM) against HF ``generate`` with a static KV cache (compiled decoding on a GPU) and transformers' continuous
batching (``generate_batch``), on the same policy, prompts and sampling settings; vLLM's offline engine too when it
is installed. For the static cache it also reports whether greedy decoding gives the same tokens.

Both backends get the same text-only chat prompts: ``generate_batch`` takes token ids only (no pixel values),
and TRL 1.16 refuses continuous batching for multimodal GRPO (``rl.recipe.config`` reports it at validation), so no
image-bearing rollout can use it today. End-of-sequence is disabled so every sequence generates exactly
``--new-tokens`` tokens: the backends do the same work and tokens/s compare directly. Each backend runs once
to warm up (allocations, kernel selection, CUDA graphs), then the best of ``--repeat`` timed runs counts.

Usage:
  python bench/rollout.py                         # the tiny policy on the CPU (1 thread)
  python bench/rollout.py --qwen-3b               # a random Qwen2.5-VL-3B architecture in bf16 on the GPU
  python bench/rollout.py --qwen-3b --prompts 2 16 32   # 16, 128 and 256 sequences per generate call
  python bench/rollout.py --json out.json         # also write the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prompts(tokenizer, n: int) -> list[list[int]]:
    texts = [f"Please segment the {c} shape in the {w} of the picture." for c in ("red", "blue", "green", "yellow")
             for w in ("left", "right", "middle", "top")]
    out = []
    for i in range(n):
        chat = [{"role": "user", "content": [{"type": "text", "text": texts[i % len(texts)]}]}]
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _best(fn, repeat: int) -> tuple[float, int]:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        _sync()
        t = time.perf_counter()
        tokens = fn()
        _sync()
        runs.append((time.perf_counter() - t, tokens))
    return min(runs)


def hf_generate(model, tokenizer, prompts, generations, new_tokens, config):
    """One ``generate`` call for the whole batch, ``generations`` samples per prompt (as TRL's HF path)."""
    import copy

    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
    config = copy.deepcopy(config)
    config.num_return_sequences = generations

    def run():
        with torch.no_grad():
            out = model.generate(**batch, generation_config=config)
        return (out.shape[1] - batch["input_ids"].shape[1]) * len(prompts) * generations

    return run


def hf_static(model, tokenizer, prompts, generations, new_tokens, config):
    """HF ``generate`` with a static KV cache: on a CUDA device transformers then compiles the decoding step (CUDA
    graphs) unless the generation config says ``disable_compile``, as TRL's does; the candidate for a faster HF path."""
    import copy

    config = copy.deepcopy(config)
    config.cache_implementation = "static"
    config.disable_compile = False
    return hf_generate(model, tokenizer, prompts, generations, new_tokens, config)


def same_greedy_tokens(model, tokenizer, prompts, new_tokens, config) -> float:
    """Share of greedy sequences whose tokens the static-cache path reproduces exactly (it may only become a setting
    if decoding is unchanged)."""
    import copy

    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(model.device)
    outs = []
    for static in (False, True):
        c = copy.deepcopy(config)
        c.do_sample, c.num_return_sequences = False, 1
        c.temperature = c.top_p = None
        if static:
            c.cache_implementation, c.disable_compile = "static", False
        with torch.no_grad():
            outs.append(model.generate(**batch, generation_config=c)[:, batch["input_ids"].shape[1]:])
    return float((outs[0] == outs[1]).all(1).float().mean())


def continuous_batching(model, prompts, generations, config):
    inputs = [p for p in prompts for _ in range(generations)]

    def run():
        with torch.no_grad():
            out = model.generate_batch(inputs=inputs, generation_config=config, warmup=False)
        return sum(len(o.generated_tokens) for o in out.values())

    return run


def vllm_engine(path, prompts, generations, new_tokens):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="bfloat16" if torch.cuda.is_available() else "float32", enforce_eager=False)
    params = SamplingParams(n=generations, temperature=1.0, max_tokens=new_tokens, ignore_eos=True)

    def run():
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    return run


def build(qwen_3b: bool, shrink: int, folder: Path):
    """``(model, tokenizer, saved policy folder, label)``."""
    from rl.policy.model import build_tiny_policy, load_policy, save_policy

    cuda = torch.cuda.is_available()
    if qwen_3b:
        from trainer import qwen25vl_3b  # bench/trainer.py: this script's folder is on sys.path, after ROOT

        path = qwen25vl_3b(folder / "policy", "cuda" if cuda else "cpu", shrink)
        model, processor = load_policy(path, dtype=torch.bfloat16 if cuda else torch.float32)
        label = "random Qwen2.5-VL-3B architecture" + (f" / {shrink}" if shrink > 1 else "")
    else:
        model, processor = build_tiny_policy(head_dim=32)  # vLLM's CPU attention needs heads of 32 or more
        path = folder / "policy"
        save_policy(model, processor, path)
        label = "tiny policy (hidden 64, 2 layers, tiny vocabulary)"
    model = model.to("cuda" if cuda else "cpu").eval()
    return model, processor.tokenizer, path, label


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qwen-3b", action="store_true", help="a random Qwen2.5-VL-3B architecture (bf16 on a GPU)")
    p.add_argument("--prompts", type=int, nargs="+", default=[2],
                   help="prompts per batch, one measurement per value (the released per-device batch: 2; its "
                        "update generates 16 at once: gradient accumulation 8)")
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS),
                   help="which non-vLLM backends to measure (vLLM is measured whenever it is installed)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--shrink", type=int, default=1, help=argparse.SUPPRESS)  # CPU smoke check of --qwen-3b
    args = p.parse_args(argv)
    from transformers import GenerationConfig

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    runs, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, path, label = build(args.qwen_3b, args.shrink, Path(tmp))
        config = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True,
                                  temperature=1.0, top_p=1.0, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
        for n in args.prompts:
            prompts = _prompts(tokenizer, n)
            results = {}
            for name in args.backends:
                fn = BACKENDS[name](model, tokenizer, prompts, args.generations, args.new_tokens, config)
                results[name] = _measure(fn, args.repeat)
            run = {"prompts": n, "sequences": n * args.generations, "results": results}
            if "hf_static" in args.backends:
                run["hf_static_same_greedy_tokens"] = same_greedy_tokens(model, tokenizer, prompts, args.new_tokens, config)
            runs.append(run)
        try:
            import vllm  # noqa: F401
        except ImportError:
            skipped["vllm"] = "vLLM is not installed in this environment"
        else:
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            for run in runs:
                prompts = _prompts(tokenizer, run["prompts"])
                run["results"]["vllm"] = _measure(vllm_engine(path, prompts, args.generations, args.new_tokens),
                                                  args.repeat)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (1 thread)"
    print(f"{label} on {device}: {args.generations} generations per prompt, {args.new_tokens} new tokens each, "
          f"text-only prompts, best of {args.repeat}")
    for run in runs:
        base = run["results"].get("hf_generate", next(iter(run["results"].values())))["tokens_per_s"]
        run["ratio_to_hf_generate"] = {k: round(r["tokens_per_s"] / base, 3) for k, r in run["results"].items()}
        print(f" {run['prompts']} prompts x {args.generations} = {run['sequences']} sequences:")
        for name, r in run["results"].items():
            print(f"  {name:20s} {r['tokens_per_s']:10.1f} tokens/s  ({r['tokens']} tokens in {r['seconds']:.3f} s)"
                  f"  ratio to hf_generate {r['tokens_per_s'] / base:.2f}")
        if "hf_static_same_greedy_tokens" in run:
            print(f"  hf_static reproduces {run['hf_static_same_greedy_tokens']:.0%} of the greedy sequences exactly")
    for name, why in skipped.items():
        print(f"  {name:20s} skipped: {why}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"policy": label, "device": device, "generations": args.generations,
                                         "new_tokens": args.new_tokens, "runs": runs, "skipped": skipped}, indent=2))
    return 0


def _measure(fn, repeat: int) -> dict:
    seconds, tokens = _best(fn, repeat)
    return {"seconds": round(seconds, 4), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


BACKENDS = {
    "hf_generate": hf_generate,
    "hf_static": hf_static,
    "continuous_batching": lambda model, tokenizer, prompts, generations, new_tokens, config:
        continuous_batching(model, prompts, generations, config),
}


if __name__ == "__main__":
    sys.exit(main())
