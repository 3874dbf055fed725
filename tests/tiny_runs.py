"""Helpers shared by the tests that train the tiny policy: a fast stand-in mask encoder, a prepared GRES
dataset, the recipe and in-process GRPO run most trainer tests start from, and the checks on what moved.

A plain module (not conftest.py) because subprocesses import it too: the reward spec
``tiny_runs:varied_reward`` is resolved inside training processes with ``tests/`` on ``PYTHONPATH``.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from rl.grpo import checkpoint
from rl.grpo import data as rl_data
from rl.grpo import trainer as tr
from rl.policy import model as rl_policy
from rl.policy import trainable
from rl.policy.model import load_policy
from rl.recipe.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


class CentroidCodes:
    """A stand-in MaskTokenizer encoder: deterministic codes from a mask's centroid and area (fast, no model)."""

    def encode(self, image, masks, boxes=None):
        out = []
        for m in np.asarray(masks, bool):
            ys, xs = np.nonzero(m)
            out.append([int(ys.mean() // 14) * 8 + int(xs.mean() // 14), min(255, int(m.sum()) // 8)])
        return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


def varied_reward(completions, **kwargs):
    """A reward with variance even for an untrained policy (text length), so GRPO has a signal to follow."""
    return [len(c[0]["content"] if isinstance(c, list) else c) % 7 / 7 for c in completions]


def token_id_reward(completions, completion_ids, **kwargs):
    """A reward with variance read from the token ids alone: the same for our trainer, whose rewards see the text
    with its mask tokens, and for plain TRL, whose rewards see it without."""
    return [sum(ids) % 7 / 7 for ids in completion_ids]


def constant_reward(completions, **kwargs):
    """A reward that ignores the completion (the probe must flag it)."""
    return [0.5] * len(completions)


def mask_token_share(completions, completion_ids=None, **kwargs):
    """A dense reward any policy can climb: the share of completion tokens that are mask tokens (a third of the tiny
    vocabulary, so an untrained policy scores about 0.3 with spread within every group)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [t.count("<|mt_") / max(1, len(ids)) for t, ids in zip(texts, completion_ids, strict=True)]


def write_prepared(out: Path, n: int = 16, split: str = "train") -> Path:
    """A prepared GRES dataset (save_to_disk) of shapes rows with CentroidCodes answers."""
    from envs.base import build_rows, rows_to_dataset
    from envs.shapes import gres_samples

    rows = [r for s in gres_samples(split, n, seed=0) for r in build_rows([s], CentroidCodes())]
    rows_to_dataset(rows).save_to_disk(str(out))
    return out


def tiny_recipe(tmp_path, *overrides):
    data = write_prepared(tmp_path / "data") if not (tmp_path / "data").exists() else tmp_path / "data"
    return load_recipe(ROOT / "recipes" / "shapes_gres.yaml", [
        "data.env=grefcoco", f"data.train={data}", "sft.enabled=false", f"run.output_dir={tmp_path / 'run'}",
        "run.report_to=[tensorboard]", "grpo.max_steps=2", "grpo.save_strategy=no", "grpo.logging_steps=1",
        "grpo.per_device_train_batch_size=8", "grpo.num_generations=4", "grpo.max_completion_length=12",
        "grpo.learning_rate=0.01", "grpo.temperature=1.5", "monitor.eval_steps=0",
        "rewards=[{name: answer_match, params: {grading: coarse}}, {name: mask_format}, "
        "{name: 'tiny_runs:varied_reward'}]", *overrides,
    ])


def train_tiny(recipe):
    """GRPO on ``recipe`` in this process: ``(trainer, model, parameters before training)``."""
    run_dir = Path(recipe.run.output_dir)
    ds, _ = rl_data.load_datasets(recipe)
    model, processor = rl_policy.prepare_policy(recipe, run_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = tr.build_trainer(recipe, run_dir, ds, None, model, processor)
    trainer.train()
    return trainer, model, before


def fake_checkpoint(run: Path, step: int) -> Path:
    """A committed ``checkpoint-<step>`` of made-up bytes (for the manifest and rotation tests)."""
    staged = Path(checkpoint.staging_dir(run)) / f"checkpoint-{step}"
    (staged / "sub").mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(bytes(range(256)) * (step + 1))
    (staged / "sub" / "optim_states.pt").write_bytes(b"moments" * step)
    return checkpoint.commit(run, f"checkpoint-{step}")


def before_after(run: Path):
    """``(policy-init, final, tokenizer)`` of a run. Loaded here, in the test process: inside a training
    process a live ZeRO-3 config would load them partitioned."""
    (m0, proc), (m1, _) = load_policy(run / "policy-init"), load_policy(run / "final")
    return m0, m1, proc.tokenizer


def changed_params(m0, m1) -> list[str]:
    before, after = dict(m0.named_parameters()), dict(m1.named_parameters())
    return [k for k in before if not torch.equal(before[k], after[k])]


def assert_mask_rows_trained(run: Path, m0, m1, tokenizer, step: int = 2) -> None:
    """Only the mask-token rows of the embedding moved in ``run/final``, and ``checkpoint-<step>`` carries them."""
    rows = trainable.mask_token_ids(tokenizer)
    e0, e1 = m0.get_input_embeddings().weight, m1.get_input_embeddings().weight
    others = torch.ones(len(e0), dtype=torch.bool)
    others[rows] = False
    assert not torch.equal(e0[rows], e1[rows]) and torch.equal(e0[others], e1[others])
    saved = load_file(run / f"checkpoint-{step}" / "mask_token_rows.safetensors")
    assert torch.allclose(saved["input_embeddings"], e1[rows])
