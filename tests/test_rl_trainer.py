"""GRPO through rl.grpo.trainer on the tiny policy: weights move, each reward is logged, the vision tower stays
frozen, LoRA trains adapters plus the mask-token rows only, checkpoints are atomic."""

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_runs import fake_checkpoint, tiny_recipe, train_tiny

from rl.grpo import checkpoint
from rl.grpo import data as rl_data
from rl.grpo import trainer as tr
from rl.policy import model as rl_policy
from rl.policy import trainable
from rl.recipe.config import load_recipe

# Tiny matrices: one thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def test_two_grpo_steps_change_weights_and_log_each_reward(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path)
    trainer, model, before = train_tiny(recipe)
    after = dict(model.named_parameters())
    changed = [n for n, p in after.items() if not torch.equal(before[n], p.detach())]
    assert any("language_model" in n for n in changed)
    vision = [n for n in after if "visual" in n]
    assert vision and not any("visual" in n for n in changed)  # vision tower frozen by default
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    assert any(h["reward_std"] > 0 for h in logs)
    for name in ("answer_match", "mask_format", "varied_reward"):
        assert all(math.isfinite(h[f"rewards/{name}/mean"]) for h in logs)
        assert f"rewards/{name}/seconds_per_call" in logs[0]
    assert list((tmp_path / "run").rglob("events.out.tfevents*"))  # TensorBoard by default
    assert (tmp_path / "run" / "policy-init" / "config.json").is_file()
    # Sample completions are logged with their decoded mask codes.
    import pandas as pd

    logged = pd.read_parquet(sorted((tmp_path / "run" / "completions").glob("*.parquet"))[-1])
    assert "pred_masks" in logged.columns and len(logged) == 8


def test_lora_trains_adapters_and_mask_rows_only(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path, "model.finetune=lora", "model.lora.r=4", "grpo.save_strategy=steps",
                         "grpo.save_steps=2")
    trainer, model, before = train_tiny(recipe)
    tok = trainer.processing_class.tokenizer
    rows = trainable.mask_token_ids(tok)
    emb = model.get_input_embeddings().weight.detach()
    name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    moved = (emb != before[name]).any(1).nonzero().flatten().tolist()
    assert moved and set(moved) <= set(rows)  # only mask-token rows moved ...
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # ... in the tied head too
    # With beta > 0, TRL adds a copy of the adapter ("ref") as the KL reference after our snapshot.
    lora = [n for n, p in model.named_parameters() if "lora_" in n and n in before and not torch.equal(before[n], p.detach())]
    assert lora and not any("visual" in n for n in lora)
    ckpt = checkpoint.last_checkpoint(tmp_path / "run")
    assert ckpt is not None and (ckpt / trainable.ROWS_FILE).is_file()
    final = checkpoint.save_final(trainer, trainer.processing_class, tmp_path / "final")
    from rl.policy.model import load_policy

    merged, _ = load_policy(final)
    assert torch.allclose(merged.get_input_embeddings().weight[rows], emb[rows])
    # The LoRA checkpoint itself loads as the same merged policy (adapter onto policy-init, plus the rows).
    from_ckpt, _ = load_policy(ckpt)
    for (name, a), (_, b) in zip(merged.named_parameters(), from_ckpt.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_checkpoints_are_staged_then_committed(tmp_path):
    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path, "grpo.save_strategy=steps", "grpo.save_steps=1", "run.keep_checkpoints=1")
    trainer, _, _ = train_tiny(recipe)
    run = tmp_path / "run"
    assert [p.name for p in checkpoint.complete_checkpoints(run)] == ["checkpoint-2"]  # rotation kept the last
    assert (run / "checkpoint-2" / checkpoint.MARKER).is_file()
    assert not any((run / checkpoint.STAGING).iterdir())
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    # A half-written checkpoint (no marker), as a crash mid-save would leave outside staging, is never resumed.
    (run / "checkpoint-9").mkdir()
    assert checkpoint.last_checkpoint(run).name == "checkpoint-2"


def test_messages_text():
    convo = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Segment the dog."}]},
             {"role": "assistant", "content": "No target."}]
    assert tr.messages_text(convo) == "user: <image>Segment the dog.\nassistant: No target."
    assert tr.messages_text("plain") == "plain"


def test_wandb_logging_with_image_prompts(tmp_path, monkeypatch):
    # TRL logs VLM prompts to a W&B Table as message lists whose parts differ in keys, which wandb refuses
    # ("Data row contained incompatible types"), stopping training at the first log; our trainer logs text.
    import wandb

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "samtok-rl-tests"}.items():
        monkeypatch.setenv(key, value)
    torch.manual_seed(0)
    try:
        train_tiny(tiny_recipe(tmp_path, "run.report_to=[wandb]"))
    finally:
        wandb.finish()
        wandb.teardown()  # wandb keeps its settings (WANDB_DIR) in a process-wide singleton otherwise
    tables = sorted(tmp_path.rglob("completions_*.table.json"))
    assert tables, "no completions table reached W&B"
    table = json.loads(tables[-1].read_text())
    assert {"prompt", "completion", "answer_match", "pred_masks", "advantage"} <= set(table["columns"])
    prompt = table["data"][0][table["columns"].index("prompt")]
    assert prompt.startswith("user: <image>Please segment")


def test_a_base_qwen_vl_gets_the_mask_tokens_and_trains(tmp_path):
    """`model.path=<base Qwen-VL> model.add_mask_tokens=true`: the real Qwen vocabulary grows by the 514 mask
    tokens, policy-init carries the resized embeddings, and the final policy writes and reads mask tokens."""
    from rl.policy.model import build_tiny_policy, load_policy, save_policy
    from tokenizer.codec import format_mask, parse_masks

    model, processor = build_tiny_policy(vocab="qwen", mask_tokens=False)
    n_vocab = len(processor.tokenizer)
    base = save_policy(model, processor, tmp_path / "base")
    with pytest.raises(ValueError, match="has no mask tokens; set model.add_mask_tokens=true"):
        rl_policy.initial_policy(tiny_recipe(tmp_path, f"model.path={base}"))
    torch.manual_seed(0)
    trainer, _, _ = train_tiny(tiny_recipe(tmp_path, f"model.path={base}", "model.add_mask_tokens=true"))
    final, final_processor = load_policy(checkpoint.save_final(trainer, trainer.processing_class, tmp_path / "final"))
    tok = final_processor.tokenizer
    assert len(tok) == n_vocab + 514 and final.get_input_embeddings().weight.shape[0] >= len(tok)
    text = "Sure: " + format_mask((17, 45))
    ids = tok(text)["input_ids"]
    assert len(ids) == len(tok("Sure: ")["input_ids"]) + 4  # one token each: start, two codes, end
    assert parse_masks(tok.decode(ids)) == [(17, 45)]
    init, _ = load_policy(tmp_path / "run" / "policy-init")
    assert init.get_input_embeddings().weight.shape == final.get_input_embeddings().weight.shape


def test_colocated_vllm_rollouts_see_one_placeholder_per_image(tmp_path, monkeypatch):
    # TRL hands vLLM processor-expanded image placeholders plus the image, and vLLM expands them again
    # (tests/test_eval_vllm.py shows it on a real engine). The trainer's wrapper sends one per image.
    import trl.trainer.grpo_trainer as grpo

    class StandInGeneration:
        def __init__(self, **kwargs):
            self.calls = []

        def generate(self, prompts, images, num_generations, profiler=None):
            self.calls.append((prompts, images))
            return "served"

    monkeypatch.setattr(grpo, "VLLMGeneration", StandInGeneration)
    recipe = tiny_recipe(tmp_path, "grpo.use_vllm=true", "grpo.vllm_mode=colocate")
    ds, _ = rl_data.load_datasets(recipe)
    model, processor = rl_policy.prepare_policy(recipe, tmp_path / "run")
    trainer = tr.build_trainer(recipe, tmp_path / "run", ds, None, model, processor)
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    out = trainer.vllm_generation.generate(prompts=[[1, pad, pad, pad, 2], [3, pad, pad, 4]], images=[["a"], ["b"]],
                                           num_generations=4)
    assert out == "served"
    assert trainer.vllm_generation.calls[-1] == ([[1, pad, 2], [3, pad, 4]], [["a"], ["b"]])
    trainer.vllm_generation.generate(prompts=[[1, pad, pad, 2]], images=None, num_generations=4)
    assert trainer.vllm_generation.calls[-1][0] == [[1, pad, pad, 2]]  # no image: nothing to collapse


def test_shapes_rows_are_cached_on_disk_and_identical(tmp_path, monkeypatch):
    """The encoded shapes world is read back from the cache exactly as built, and any change to what the
    rows depend on (here the world's seed) misses the cache."""
    monkeypatch.setenv("SAMTOK_RL_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe(ROOT / "recipes" / "shapes_gres.yaml", ["data.shapes.n_train=6"])
    built = rl_data.shapes_dataset(recipe, "train", 6)
    assert len(list((tmp_path / "cache" / "shapes").iterdir())) == 1
    calls, build = [], rl_data.shapes_rows
    monkeypatch.setattr(rl_data, "shapes_rows", lambda *a, **k: calls.append(a) or build(*a, **k))
    cached = rl_data.shapes_dataset(recipe, "train", 6)
    assert not calls and cached.to_list() == built.to_list()
    other = load_recipe(ROOT / "recipes" / "shapes_gres.yaml", ["data.shapes.n_train=6", "data.shapes.seed=1"])
    rl_data.shapes_dataset(other, "train", 6)
    assert calls  # a different world is built, not read from the cache


def test_damaged_checkpoints_are_skipped_and_rotation_keeps_a_good_one(tmp_path, caplog):
    run = tmp_path / "run"
    for step in (1, 2, 3):
        fake_checkpoint(run, step)
    assert checkpoint.last_checkpoint(run).name == "checkpoint-3"
    # Truncated after the marker was written: the size no longer matches.
    with open(run / "checkpoint-3" / "model.safetensors", "r+b") as f:
        f.truncate(10)
    # Altered in place, same size: only the hash tells.
    path = run / "checkpoint-2" / "sub" / "optim_states.pt"
    path.write_bytes(path.read_bytes().replace(b"moments", b"MOMENTS", 1))
    with caplog.at_level("WARNING", logger="rl.grpo.checkpoint"):
        assert checkpoint.last_checkpoint(run).name == "checkpoint-1"
    assert "checkpoint-3: model.safetensors has 10 bytes" in caplog.text
    assert "checkpoint-2: sub/optim_states.pt changed after it was written" in caplog.text
    # Rotation to 1 counts good checkpoints only: checkpoint-1 stays, the damaged newer ones do not push it out.
    checkpoint.rotate(run, 1)
    assert checkpoint.last_checkpoint(run).name == "checkpoint-1"
    fake_checkpoint(run, 4)
    checkpoint.rotate(run, 1)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]


def test_with_the_project_features_at_rest_training_is_trls_to_the_bit(tmp_path):
    """Our trainer adds hooks, wrapped rewards, timings and checkpoint staging around TRL's GRPO step, none of which
    may change the step: with TRL's prompt order and one reward, it ends in TRL's own weights, bit for bit (the
    reason ``bench/trainer.py``'s ratio measures our overhead and nothing else)."""
    from tiny_runs import token_id_reward
    from trl import GRPOTrainer

    torch.manual_seed(0)
    recipe = tiny_recipe(tmp_path, "grpo.max_steps=3", "sampling.stratify=false",
                         "rewards=[{name: 'tiny_runs:token_id_reward'}]")
    _, ours, before = train_tiny(recipe)
    torch.manual_seed(0)
    model, processor = rl_policy.load_policy(tmp_path / "run" / "policy-init")
    trainable.freeze_vision_tower(model)
    ds, _ = rl_data.load_datasets(recipe)
    GRPOTrainer(model=model, reward_funcs=[token_id_reward], args=tr.grpo_config(recipe, tmp_path / "plain"),
                train_dataset=ds, processing_class=processor).train()
    theirs = dict(model.named_parameters())
    moved = [n for n, p in ours.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("language_model" in n for n in moved)  # a real update, not two untouched copies
    assert [n for n, p in ours.named_parameters() if not torch.equal(p, theirs[n])] == []


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_compiled_decoding_trains_and_keeps_the_greedy_tokens_of_image_prompts(tmp_path, finetune):
    """rollout.compile: TRL's rollouts run a compiled decoding step (static KV cache), the policy trains, and greedy
    decoding of image prompts gives the tokens TRL's eager default gives (so only the speed may change)."""
    import copy

    import numpy as np
    from PIL import Image

    from envs.shapes import gres_samples

    torch.manual_seed(0)
    torch._dynamo.reset()
    recipe = tiny_recipe(tmp_path, "grpo.cache_implementation=static", "rollout.compile=true", f"model.finetune={finetune}")
    trainer, model, before = train_tiny(recipe)
    assert trainer.generation_config.disable_compile is False
    # transformers compiled the decoding step (of the model generate ran on: under LoRA, the base model inside)
    assert any(getattr(m, "_compiled_call", None) is not None for m in model.modules())
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters()
               if n in before and "language_model" in n)

    processor = trainer.processing_class
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Please segment the shapes."}]}]
    images = [[Image.fromarray(np.asarray(s["image"]))] for s in gres_samples("val", 8, seed=1)]
    batch = processor(text=[processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)] * 8,
                      images=images, return_tensors="pt", padding=True)
    greedy = copy.deepcopy(trainer.generation_config)
    greedy.do_sample, greedy.temperature, greedy.top_p = False, None, None
    eager = copy.deepcopy(greedy)
    eager.disable_compile, eager.cache_implementation = True, None
    model.eval()
    with torch.no_grad():
        compiled_ids, eager_ids = (model.generate(**batch, generation_config=c) for c in (greedy, eager))
    assert compiled_ids.shape[1] > batch["input_ids"].shape[1]
    assert torch.equal(compiled_ids, eager_ids)


def test_compiled_decoding_is_refused_where_it_cannot_compile(tmp_path):
    with pytest.raises(ValueError, match=r"rollout.compile: transformers compiles decoding only with a static KV cache"):
        tiny_recipe(tmp_path, "rollout.compile=true")
    with pytest.raises(ValueError, match=r"rollout.compile: .*grpo.use_vllm generates with vLLM"):
        tiny_recipe(tmp_path, "rollout.compile=true", "grpo.use_vllm=true", "grpo.cache_implementation=static")
