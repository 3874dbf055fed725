"""The tiny QwenVL-SAMTok policy and add_mask_tokens: built offline, round-trips, generates, keeps mask tokens."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM

from rl.policy.embeddings import add_mask_tokens
from rl.policy.model import build_tiny_policy, build_tokenizer, load_policy, save_policy
from tokenizer.codec import MASK_TOKENS, format_mask, parse_masks


def _image(seed=0, size=(112, 96)):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _prompt(processor, text="Please segment the red circle in this image."):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def _lm(tok, tie):
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # known statistics per dimension, so the init rule can be checked
        model.get_input_embeddings().weight.normal_(0.0, 1.0).mul_(torch.linspace(0.5, 2, 32)).add_(torch.arange(32.0))
        if not tie:
            model.get_output_embeddings().weight.normal_(-3.0, 0.1)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_add_mask_tokens_init_statistics_and_idempotence(tie):
    tok = build_tokenizer("tiny", mask_tokens=False)
    n0 = len(tok)
    model = _lm(tok, tie)
    old_in = model.get_input_embeddings().weight[:n0].clone()
    old_out = model.get_output_embeddings().weight[:n0].clone()

    assert add_mask_tokens(tok, model) == 514
    assert len(tok) == n0 + 514
    ids = tok.convert_tokens_to_ids(MASK_TOKENS)
    assert ids == list(range(n0, n0 + 514))
    w_in, w_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert w_in.shape[0] == w_out.shape[0] == len(tok)
    assert (w_in.data_ptr() == w_out.data_ptr()) == tie
    torch.testing.assert_close(w_in[:n0], old_in)  # old rows untouched
    for new, old in [(w_in[n0:], old_in)] + ([] if tie else [(w_out[n0:], old_out)]):
        mean, std = old.mean(0), old.std(0)
        z = (new - mean) / (0.02 * std)  # should be standard normal per dimension
        assert z.mean().abs() < 0.05 and (z.std() - 1).abs() < 0.05
        assert ((new.mean(0) - mean).abs() < 0.01 * std + 1e-4).all()

    snapshot = w_in.clone()
    assert add_mask_tokens(tok, model) == 0  # idempotent: nothing added, nothing re-initialised
    assert len(tok) == n0 + 514 and torch.equal(model.get_input_embeddings().weight, snapshot)


def test_mask_tokens_are_not_special_and_survive_skip_special_tokens():
    tok = build_tokenizer("tiny")
    assert not set(MASK_TOKENS) & set(tok.all_special_tokens)
    text = "Sure. " + format_mask((17, 45)) + "<|object_ref_start|>x<|object_ref_end|>" + format_mask((255, 255))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # every mask token is one id
    assert sum(i in set(tok.convert_tokens_to_ids(MASK_TOKENS)) for i in ids) == 8
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "<|object_ref_start|>" not in decoded  # Qwen's ref tokens ARE special: rewards must decode ids
    assert parse_masks(decoded) == [(17, 45), (255, 255)]


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_tiny_policy_generates_saves_and_loads(arch, tmp_path):
    model, processor = build_tiny_policy(arch=arch, vocab="tiny", seed=0)
    assert type(model).__name__ == {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration", "qwen3_vl": "Qwen3VLForConditionalGeneration"}[arch]
    inputs = processor(text=[_prompt(processor)] * 2, images=[_image(0), _image(1)], return_tensors="pt", padding=True)
    n_image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert 2 <= n_image_tokens <= 64  # a small image costs few tokens
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]

    save_policy(model, processor, tmp_path / "p")
    model2, processor2 = load_policy(tmp_path / "p")
    assert type(model2) is type(model) and type(processor2) is type(processor)
    inputs2 = processor2(text=[_prompt(processor2)] * 2, images=[_image(0), _image(1)], return_tensors="pt", padding=True)
    assert torch.equal(inputs2["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(inputs2["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(model2(**inputs2).logits, model(**inputs).logits)
    assert processor2.tokenizer.convert_tokens_to_ids(MASK_TOKENS) == processor.tokenizer.convert_tokens_to_ids(MASK_TOKENS)


def test_completion_ids_with_mask_tokens_decode_to_the_same_codes():
    model, processor = build_tiny_policy(vocab="tiny")
    tok = processor.tokenizer
    codes = [(3, 200), (250, 0)]
    completion = '```json\n[{"mask_2d": ' + format_mask(codes[0]) + '}, {"mask_2d": ' + format_mask(codes[1]) + "}]\n```"
    ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    # what TRL hands reward functions as `completions`
    assert parse_masks(tok.batch_decode([ids], skip_special_tokens=True)[0]) == codes
    # the model's output head covers every mask token, so it can write them
    assert model.get_output_embeddings().weight.shape[0] >= len(tok)


def test_real_qwen_vocabulary_offline():
    tok = build_tokenizer("qwen")
    assert tok("Hello world, 你好", add_special_tokens=False)["input_ids"] == [9707, 1879, 11, 220, 108386]
    assert tok.convert_tokens_to_ids("<|mt_start|>") == 151669 and len(tok) == 151669 + 514
    assert parse_masks(tok.decode(tok(format_mask((17, 45)))["input_ids"], skip_special_tokens=True)) == [(17, 45)]


@pytest.mark.parametrize("tie", [True, False])
def test_mask_token_rows_save_and_load_by_name(tmp_path, tie):
    """The rows file names each matrix (input / output embedding): what is saved from one model loads into the
    same matrix of another, untied heads included; files from before the names (rows_0, rows_1) still load."""
    from safetensors.torch import load_file, save_file

    from rl.policy.embeddings import embedding_weights
    from rl.policy.trainable import (
        ROW_KEYS,
        ROWS_FILE,
        load_rows,
        mask_token_ids,
        row_trained,
        save_rows,
        train_only_rows,
    )

    tok = build_tokenizer("tiny")
    rows = mask_token_ids(tok)
    src, dst = _lm(tok, tie), _lm(tok, tie)
    for w in embedding_weights(src):
        train_only_rows(w, rows)
        with torch.no_grad():
            w[rows] = torch.randn(len(rows), w.shape[1])
    trained = row_trained(src)
    assert list(trained) == list(ROW_KEYS[: 1 if tie else 2])
    save_rows(trained, tmp_path)
    assert sorted(load_file(tmp_path / ROWS_FILE)) == sorted(trained)
    targets = dict(zip(ROW_KEYS, embedding_weights(dst)))
    before = {k: w.detach().clone() for k, w in targets.items()}
    load_rows(targets, tmp_path, rows)
    other = [i for i in range(len(tok)) if i not in set(rows)]
    for key, w in trained.items():
        assert not torch.equal(before[key][rows], w[rows].detach())
        assert torch.equal(targets[key][rows], w[rows].detach())
        assert torch.equal(targets[key][other], before[key][other])  # only the mask-token rows were copied

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file({f"rows_{i}": w[rows].detach().contiguous() for i, w in enumerate(trained.values())}, legacy / ROWS_FILE)
    fresh = dict(zip(ROW_KEYS, embedding_weights(_lm(tok, tie))))
    load_rows(fresh, legacy, rows)
    assert all(torch.equal(fresh[k][rows], w[rows].detach()) for k, w in trained.items())
    if tie:  # a file without the matrix asked for (a tied model's rows read into an untied head) says so
        with pytest.raises(KeyError, match="no rows for the output embeddings"):
            load_rows({"output_embeddings": fresh["input_embeddings"]}, tmp_path, rows)
