"""What GRPO trains: the vision tower frozen, LoRA on the language projections, and the mask-token rows of the
embeddings (their gradient mask and the one save/load pair of ``mask_token_rows.safetensors``).

TRL refuses a PEFT layer on ``lm_head`` because it computes log-probs from ``lm_head.weight`` directly, and
with tied embeddings (all Qwen-VL 2B-4B checkpoints) PEFT's ``trainable_token_indices`` wraps that tied head.
Our arrangement: LoRA adapters on the projections only, and the tied embedding matrix itself left trainable
with a gradient hook that zeroes every row except the 514 mask tokens (and no weight decay on it). The rows
then move in the input embedding and in the output projection alike, ``lm_head`` stays a plain Linear, and
TRL accepts it. Checkpoints carry those rows next to the adapter (``ROWS_FILE``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rl.policy.embeddings import embedding_weights
from tokenizer.codec import MASK_TOKENS

ROWS_FILE = "mask_token_rows.safetensors"  # trained mask-token rows next to a LoRA adapter
# Each embedding matrix's key in ROWS_FILE, in ``embedding_weights`` order (the output one only when untied).
# Files written before the keys had names used rows_0 / rows_1 in the same order; they still load.
ROW_KEYS = ("input_embeddings", "output_embeddings")


def mask_token_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in MASK_TOKENS)


def freeze_vision_tower(model) -> int:
    """Freeze the vision encoder and its merger; returns how many parameters were frozen."""
    n = 0
    for name, p in model.named_parameters():
        if ".visual." in f".{name}" or name.startswith("visual."):
            p.requires_grad_(False)
            n += getattr(p, "ds_numel", p.numel())  # ZeRO-3 partitioned parameters have numel() == 0
    if n == 0:
        raise ValueError(f"{type(model).__name__}: no vision-tower parameters found to freeze")
    return n


def apply_lora(model, tokenizer, lora_cfg):
    """LoRA on the projections; mask-token rows of the tied embedding trainable (see the module docstring)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=_language_modules(model, lora_cfg.target_modules), task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if lora_cfg.train_mask_tokens:
        for weight in embedding_weights(model):
            train_only_rows(weight, mask_token_ids(tokenizer))
    return model


def _language_modules(model, names: list[str]) -> str:
    """A regex selecting ``names`` in the language model only: adapters in a frozen vision tower are waste."""
    alternatives = "|".join(names)
    return rf"^(?!.*visual).*\.({alternatives})$"


def train_only_rows(weight: torch.nn.Parameter, rows: list[int]) -> None:
    """Make ``weight`` trainable but let gradients through only for ``rows``.

    Under ZeRO-3 the tensor is a partition (``ds_shape`` is the full shape); the gradient the hook sees is
    full-size, since it is computed while the parameter is gathered.
    """
    keep = torch.zeros(getattr(weight, "ds_shape", weight.shape)[0], 1, dtype=weight.dtype, device=weight.device)
    keep[rows] = 1
    weight.requires_grad_(True)
    weight._samtok_rows = rows  # read by save_rows/load_rows and the optimizer grouping
    weight.register_hook(lambda g: g * keep.to(g.dtype))


def row_trained(model) -> dict[str, torch.nn.Parameter]:
    """The embedding matrices that train only their mask-token rows (``train_only_rows``), keyed as in ROWS_FILE."""
    return {key: w for key, w in zip(ROW_KEYS, embedding_weights(model)) if hasattr(w, "_samtok_rows")}


def save_rows(weights: dict[str, torch.nn.Parameter], directory) -> Path:
    """Write each matrix's trained rows (its ``_samtok_rows``) to ``directory/ROWS_FILE``; the full tensors must
    be at hand (under ZeRO-3: inside ``rl.grpo.distributed.gathered``)."""
    from safetensors.torch import save_file

    path = Path(directory) / ROWS_FILE
    save_file({k: w[w._samtok_rows].detach().cpu().contiguous() for k, w in weights.items()}, str(path))
    return path


def load_rows(weights: dict[str, torch.Tensor], directory, rows: list[int]) -> None:
    """Copy the saved rows of ``directory/ROWS_FILE`` into ``rows`` of each matrix, found by its key."""
    from safetensors.torch import load_file

    path = Path(directory) / ROWS_FILE
    saved = load_file(str(path))
    with torch.no_grad():
        for key, w in weights.items():
            legacy = f"rows_{ROW_KEYS.index(key)}"
            if key not in saved and legacy not in saved:
                raise KeyError(f"{path}: no rows for the {key.replace('_', ' ')} (has {sorted(saved)})")
            w[rows] = saved[key if key in saved else legacy].to(device=w.device, dtype=w.dtype)
