"""Generation with the HF model: the chat prompt and image of a row, and greedy (or sampled) completions decoded
with special tokens kept. ``rl.eval.vllm_backend`` serves the same prompts and images with vLLM."""

from __future__ import annotations

from envs.base import load_image
from rewards.runtime import decode_raw


def chat_input(processor, row) -> tuple:
    """``(prompt text, image)`` of a row, as both generation backends feed it (one ``<|image_pad|>``)."""
    return processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False), load_image(row["image"])


def generate(model, processor, rows, max_new_tokens: int = 256, batch_size: int = 8, do_sample: bool = False,
             return_ids: bool = False, **sampling):
    """The policy's completion for every row, special tokens kept (pad/eos dropped). ``sampling``: generate's
    sampling settings (``grpo_sampling`` gives GRPO's); ``return_ids``: ``(texts, completion ids without padding)``."""
    import torch

    tok = processor.tokenizer
    image_token = tok.convert_tokens_to_ids("<|image_pad|>")
    device = next(model.parameters()).device
    model.eval()
    out: list[str] = []
    all_ids: list[list[int]] = []
    drop = {tok.pad_token_id}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        prompts, images = zip(*(chat_input(processor, r) for r in batch))
        inputs = processor(text=list(prompts), images=list(images), return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            ids = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id,
                suppress_tokens=[image_token],  # as TRL does: the policy must not emit image placeholders
                **sampling,
            )
        new = ids[:, inputs["input_ids"].shape[1] :].tolist()
        out += decode_raw(new, tok)
        all_ids += [_until_eos(seq, tok.eos_token_id, drop) for seq in new]
    return (out, all_ids) if return_ids else out


def grpo_sampling(args) -> dict:
    """The sampling settings TRL's GRPOTrainer gives HF ``generate`` (from a ``GRPOConfig``), so that other
    callers (``samtok-rl rewards probe``) draw completions as GRPO does."""
    kwargs = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
              "repetition_penalty": args.repetition_penalty}
    kwargs.update(args.generation_kwargs or {})
    return kwargs


def _until_eos(seq: list[int], eos, drop: set) -> list[int]:
    """A completion's ids as TRL gives them to rewards: up to and including the first EOS, padding removed."""
    eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    out = []
    for t in seq:
        if t in drop and t not in eos:
            continue
        out.append(t)
        if t in eos:
            break
    return out
