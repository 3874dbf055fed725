"""Rollout backends side by side, in one run: generated tokens/s of HF ``generate`` (what GRPO uses without
vLLM) against HF ``generate`` with a static KV cache (compiled decoding on a GPU) and transformers' continuous
batching (``generate_batch``), on the same policy, prompts and sampling settings; vLLM's offline engine too when it
is installed. For the static cache it also reports whether greedy decoding gives the same tokens.

Every backend gets the same chat prompts, each repeated once per generation in the batch as TRL's sampler lays
them out. They are text-only by default: ``generate_batch`` takes token ids only (no pixel values), and TRL 1.16
refuses continuous batching for multimodal GRPO (``rl.recipe.config`` reports it at validation), so no
image-bearing rollout can use it today. ``--images`` gives every prompt a shapes-world image (448 px for the 3B, as
``bench/trainer.py``'s rollouts: 256 image tokens), the rollouts GRPO runs, for the HF backends only: Qwen-VL's
multimodal rotary positions are computed at prefill, so this is the check that compiled decoding works with them. End-of-sequence is disabled so every sequence generates exactly
``--new-tokens`` tokens: the backends do the same work and tokens/s compare directly. Each backend runs once
to warm up (allocations, kernel selection, CUDA graphs), then the best of ``--repeat`` timed runs counts.

Usage:
  python bench/rollout.py                         # the tiny policy on the CPU (1 thread)
  python bench/rollout.py --qwen-3b               # a random Qwen2.5-VL-3B architecture in bf16 on the GPU
  python bench/rollout.py --qwen-3b --prompts 2 16 32   # 16, 128 and 256 sequences per generate call
  python bench/rollout.py --qwen-3b --prompts 16 --images --backends hf_generate hf_static   # image prompts
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


def _prompts(processor, n: int, generations: int, images: bool, image_size: int) -> dict:
    """The model inputs of ``n`` chat prompts, each repeated ``generations`` times (TRL's layout), left-padded."""
    texts = [f"Please segment the {c} shape in the {w} of the picture." for c in ("red", "blue", "green", "yellow")
             for w in ("left", "right", "middle", "top")]
    chats = [[{"role": "user", "content": ([{"type": "image"}] if images else []) + [{"type": "text", "text": t}]}]
             for t in (texts[i % len(texts)] for i in range(n))]
    chats = [c for c in chats for _ in range(generations)]
    text = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    processor.tokenizer.padding_side = "left"
    if not images:
        return dict(processor.tokenizer(text, return_tensors="pt", padding=True))
    from envs.shapes import gres_samples

    pictures = [s["image"].convert("RGB").resize((image_size, image_size)) for s in gres_samples("train", n, seed=0)]
    return dict(processor(text=text, images=[[pictures[i // generations]] for i in range(len(text))],
                          return_tensors="pt", padding=True))


def _ids(batch: dict) -> list[list[int]]:
    """The batch's prompts as unpadded token ids (what ``generate_batch`` and vLLM take)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


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


def hf_generate(model, batch, config):
    """One ``generate`` call for the whole batch (as TRL's HF path)."""
    batch = {k: v.to(model.device) for k, v in batch.items()}

    def run():
        with torch.no_grad():
            out = model.generate(**batch, generation_config=config)
        return (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]

    return run


def static_config(config):
    """``config`` with a static KV cache and compiled decoding, set as ``rollout.compile`` sets the trainer's
    (``rl.grpo.seam.enable_compiled_decoding``: CUDA graphs on a GPU)."""
    import copy

    from rl.grpo.seam import enable_compiled_decoding

    config = copy.deepcopy(config)
    config.cache_implementation = "static"
    enable_compiled_decoding(config)
    return config


def hf_static(model, batch, config):
    """HF ``generate`` with a static KV cache and compiled decoding: the candidate for a faster HF path."""
    return hf_generate(model, batch, static_config(config))


def same_greedy_tokens(model, batch, config) -> float:
    """Share of greedy sequences whose tokens the static-cache path reproduces exactly (it may only become a setting
    if decoding is unchanged)."""
    import copy

    batch = {k: v.to(model.device) for k, v in batch.items()}
    greedy = copy.deepcopy(config)
    greedy.do_sample, greedy.temperature, greedy.top_p = False, None, None
    outs = []
    for c in (greedy, static_config(greedy)):
        with torch.no_grad():
            outs.append(model.generate(**batch, generation_config=c)[:, batch["input_ids"].shape[1]:])
    return float((outs[0] == outs[1]).all(1).float().mean())


def continuous_batching(model, batch, config):
    inputs = _ids(batch)

    def run():
        with torch.no_grad():
            out = model.generate_batch(inputs=inputs, generation_config=config, warmup=False)
        return sum(len(o.generated_tokens) for o in out.values())

    return run


def vllm_engine(path, batch, new_tokens):
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(path), dtype="bfloat16" if torch.cuda.is_available() else "float32", enforce_eager=False)
    params = SamplingParams(n=1, temperature=1.0, max_tokens=new_tokens, ignore_eos=True)
    prompts = _ids(batch)

    def run():
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    return run


def build(qwen_3b: bool, shrink: int, folder: Path):
    """``(model, processor, saved policy folder, label, image size)``."""
    from rl.policy.model import build_tiny_policy, load_policy, save_policy

    cuda = torch.cuda.is_available()
    if qwen_3b:
        from trainer import qwen25vl_3b  # bench/trainer.py: this script's folder is on sys.path, after ROOT

        path = qwen25vl_3b(folder / "policy", "cuda" if cuda else "cpu", shrink)
        model, processor = load_policy(path, dtype=torch.bfloat16 if cuda else torch.float32)
        label = "random Qwen2.5-VL-3B architecture" + (f" / {shrink}" if shrink > 1 else "")
        image_size = 448
    else:
        model, processor = build_tiny_policy(head_dim=32)  # vLLM's CPU attention needs heads of 32 or more
        path = folder / "policy"
        save_policy(model, processor, path)
        label = "tiny policy (hidden 64, 2 layers, tiny vocabulary)"
        image_size = 112
    model = model.to("cuda" if cuda else "cpu").eval()
    return model, processor, path, label, image_size


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
    p.add_argument("--images", action="store_true",
                   help="every prompt carries an image (HF backends only; continuous batching and vLLM are skipped)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--shrink", type=int, default=1, help=argparse.SUPPRESS)  # CPU smoke check of --qwen-3b
    args = p.parse_args(argv)
    if args.images and "continuous_batching" in args.backends:
        p.error("--images: continuous batching takes token ids only; choose --backends hf_generate hf_static")
    from transformers import GenerationConfig

    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    runs, skipped = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model, processor, path, label, image_size = build(args.qwen_3b, args.shrink, Path(tmp))
        config = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True,
                                  temperature=1.0, top_p=1.0, eos_token_id=None,
                                  pad_token_id=processor.tokenizer.pad_token_id)
        for n in args.prompts:
            batch = _prompts(processor, n, args.generations, args.images, image_size)
            results = {name: _measure(BACKENDS[name](model, batch, config), args.repeat) for name in args.backends}
            run = {"prompts": n, "sequences": n * args.generations, "prompt_tokens": batch["input_ids"].shape[1],
                   "results": results}
            if "hf_static" in args.backends:
                run["hf_static_same_greedy_tokens"] = same_greedy_tokens(model, batch, config)
            runs.append(run)
        try:
            import vllm  # noqa: F401
        except ImportError:
            skipped["vllm"] = "vLLM is not installed in this environment"
        else:
            if args.images:
                skipped["vllm"] = "image prompts are measured on the HF backends only"
            else:
                del model
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for run in runs:
                    batch = _prompts(processor, run["prompts"], args.generations, False, image_size)
                    run["results"]["vllm"] = _measure(vllm_engine(path, batch, args.new_tokens), args.repeat)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (1 thread)"
    kind = f"prompts with a {image_size} px image each" if args.images else "text-only prompts"
    print(f"{label} on {device}: {args.generations} generations per prompt, {args.new_tokens} new tokens each, "
          f"{kind}, best of {args.repeat}")
    for run in runs:
        base = run["results"].get("hf_generate", next(iter(run["results"].values())))["tokens_per_s"]
        run["ratio_to_hf_generate"] = {k: round(r["tokens_per_s"] / base, 3) for k, r in run["results"].items()}
        print(f" {run['prompts']} prompts x {args.generations} = {run['sequences']} sequences of "
              f"{run['prompt_tokens']} prompt tokens (padded):")
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
                                         "new_tokens": args.new_tokens, "images": args.images, "runs": runs,
                                         "skipped": skipped}, indent=2))
    return 0


def _measure(fn, repeat: int) -> dict:
    seconds, tokens = _best(fn, repeat)
    return {"seconds": round(seconds, 4), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}


BACKENDS = {"hf_generate": hf_generate, "hf_static": hf_static, "continuous_batching": continuous_batching}


if __name__ == "__main__":
    sys.exit(main())
