"""The prompt fix for TRL's colocated vLLM rollouts: one image placeholder per image (huggingface/trl#6294)."""

from __future__ import annotations


def collapse_image_runs(ids: list[int], pad: int) -> list[int]:
    """``ids`` with every run of the image placeholder token shortened to one token."""
    return [t for i, t in enumerate(ids) if t != pad or i == 0 or ids[i - 1] != pad]


def one_placeholder_per_image(generate, pad: int):
    """Wraps TRL's colocated vLLM ``generate`` so that image prompts reach vLLM with one placeholder per image.

    TRL sends the processor's token ids, in which each image is already expanded to its grid of
    ``<|image_pad|>`` tokens, together with the image; vLLM expands the placeholders again, so the policy
    is sampled from a corrupted prompt (huggingface/trl#6294; checked with vLLM 0.31 on Qwen2.5-VL: 56
    prompt tokens became 71 and no completion matched HF generate). TRL keeps its own expanded ids for
    the loss; only what vLLM sees changes, and vLLM expands a single placeholder exactly once.
    """

    def wrapped(prompts, images, *args, **kwargs):
        if images is not None:
            prompts = [collapse_image_runs(list(ids), pad) for ids in prompts]
        return generate(prompts, images, *args, **kwargs)

    return wrapped
