"""TRL's generation batch by its layout: the dict ``_generate_and_score_completions`` returns, whose per-sample
tensors are padded to the batch's longest prompt (on the left) and longest completion (on the right).

Dynamic sampling takes rows of several such batches and joins them (``take``, ``join``); every micro-step's slice
loses the columns that are padding in all its rows before the loss's forward pass (``trim_padding``).
"""

from __future__ import annotations

import torch

from rl.grpo.seam import pad

# How each per-sample tensor is padded. ``tests/test_trl_contract.py`` checks that these and OTHER_KEYS name every key
# TRL's generation batch can hold, so that a key TRL adds cannot be joined or trimmed wrongly unnoticed.
LEFT_PADDED = {"prompt_ids": "pad", "prompt_mask": 0}
# Per-token over prompt + completion: TRL extends the (left-padded) prompt part with zeros for the completion.
PROMPT_THEN_COMPLETION = ("token_type_ids", "mm_token_type_ids")
RIGHT_PADDED = {"completion_ids": "pad", "completion_mask": 0, "old_per_token_logps": 0.0,
                "sampling_per_token_logps": 0.0, "ref_per_token_logps": 0.0, "importance_sampling_ratio": 1.0,
                "tool_mask": 1}
# Keys without a token axis (per sample, per image, or one number).
OTHER_KEYS = ("advantages", "num_items_in_batch", "pixel_values", "image_grid_thw", "pixel_attention_mask",
              "spatial_shapes", "image_sizes", "image_position_ids", "num_images", "num_tiles")


def take(batch: dict, index: list[int]) -> dict:
    """Rows ``index`` of a split generation batch (``split_pixel_values_by_grid``: per-sample lists)."""
    out = {}
    for key, v in batch.items():
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            out[key] = v
        elif isinstance(v, torch.Tensor):
            out[key] = v[index]
        else:
            out[key] = [v[i] for i in index]
    return out


def join(batches: list[dict], pad_token_id: int) -> dict:
    """Split generation batches concatenated row-wise, each padded tensor re-padded to the longest."""
    keys = batches[0].keys()
    out = {}
    for key in keys:
        values = [b[key] for b in batches]
        if any((v is None) != (values[0] is None) for v in values):
            raise ValueError(f"dynamic sampling: '{key}' is present in some generation rounds only")
        if values[0] is None or (isinstance(values[0], torch.Tensor) and values[0].ndim == 0):
            out[key] = values[0]  # num_items_in_batch: recomputed by the caller
        elif not isinstance(values[0], torch.Tensor):
            out[key] = [x for v in values for x in v]
        elif values[0].ndim == 1:
            out[key] = torch.cat(values)
        elif key in PROMPT_THEN_COMPLETION:
            widths = [b["prompt_ids"].shape[1] for b in batches]
            head = pad([row for v, w in zip(values, widths) for row in v[:, :w]], padding_value=0, padding_side="left")
            tail = pad([row for v, w in zip(values, widths) for row in v[:, w:]], padding_value=0, padding_side="right")
            out[key] = torch.cat([head, tail], dim=1)
        elif key in LEFT_PADDED or key in RIGHT_PADDED:
            side = "left" if key in LEFT_PADDED else "right"
            fill = {**LEFT_PADDED, **RIGHT_PADDED}[key]
            fill = pad_token_id if fill == "pad" else fill
            out[key] = pad([row for v in values for row in v], padding_value=fill, padding_side=side)
        else:
            raise ValueError(f"dynamic sampling does not know how to join the generation batch's '{key}' "
                             f"(shape {tuple(values[0].shape)}); turn sampling.dynamic off for this model")
    return out


def trim_padding(batch: dict) -> dict:
    """``batch`` without the columns that are padding in every row (the same dict when there are none).

    TRL pads a whole generation batch (``per_device_train_batch_size x steps_per_generation`` completions) to its
    longest prompt and completion, then trains on slices of it; a slice without the longest rows carries columns of
    padding only, and its forward and backward passes would compute them for nothing (one completion that runs to
    ``max_completion_length`` pads every slice to that length). The positions dropped are masked in every row, and
    Qwen-VL's rotary positions count attended tokens only, so the loss is the same up to float rounding
    (``tests/test_rl_sampling.py``)."""
    prompt, completion = batch["prompt_mask"], batch["completion_mask"]
    width_p, width_c = prompt.shape[1], completion.shape[1]
    real = prompt.any(0).nonzero()
    first = int(real[0]) if len(real) else 0
    real = completion.any(0).nonzero()
    last = int(real[-1]) + 1 if len(real) else width_c
    if first == 0 and last == width_c:
        return batch
    out = dict(batch)
    for key in LEFT_PADDED:
        if key in out:
            out[key] = out[key][:, first:]
    for key in PROMPT_THEN_COMPLETION:
        if out.get(key) is not None:
            out[key] = out[key][:, first:width_p + last]
    for key in (*RIGHT_PADDED, "advantages"):  # advantages: per token in subclasses that score tokens
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == width_c:
            out[key] = value[:, :last]
    return out
