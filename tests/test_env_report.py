"""samtok-rl env: the versions a bug report needs, and one line per thing a recipe needs that is missing."""

from pathlib import Path

from rl import cli
from rl.cli import env as env_report

ROOT = Path(__file__).resolve().parents[1]


def test_the_report_names_every_package_and_the_gpus(capsys):
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "transformers", "trl", "deepspeed", "vllm", "sam2", "flash-attn", "gpus:"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "CUDA" in out and "TRL supports 0.22.0-0.31.0" in out  # read from TRL's own vllm extra


def test_a_cpu_default_recipe_needs_nothing(capsys):
    assert cli.main(["env", "--recipe", str(ROOT / "recipes" / "shapes_gres.yaml")]) == 0
    assert "nothing missing" in capsys.readouterr().out


def test_a_gpu_recipe_on_this_machine_lists_each_missing_thing_and_exits_1(capsys, monkeypatch):
    monkeypatch.setattr(env_report, "version", lambda dist: None if dist in ("vllm", "flash-attn") else "1.0")
    code = cli.main(["env", "--recipe", str(ROOT / "recipes" / "gres_grpo.yaml"), "grpo.use_vllm=true",
                     "model.attn_implementation=flash_attention_2"])
    lines = capsys.readouterr().out.splitlines()
    problems = [line for line in lines if line.startswith("problem: ")]
    assert code == 1
    assert any("data.train" in p for p in problems)  # validation's own problems, then the rest still checked
    assert any("needs vLLM" in p for p in problems) and any("flash-attn" in p for p in problems)
    import torch

    if not torch.cuda.is_available():
        assert any("grpo.bf16=true needs a GPU" in p for p in problems)
    assert any(line.startswith("note: model.path") for line in lines)  # a hub id: noted, not a problem


def test_compiled_decoding_without_a_compiler_is_a_problem(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    recipe = [str(ROOT / "recipes" / "shapes_gres.yaml"), "grpo.cache_implementation=static", "rollout.compile=true"]
    assert cli.main(["env", "--recipe", *recipe]) == 0  # this machine has g++
    monkeypatch.setattr(env_report.shutil, "which", lambda name: None)
    assert cli.main(["env", "--recipe", *recipe]) == 1
    assert "problem: rollout.compile=true on the CPU needs a C++ compiler" in capsys.readouterr().out


def test_vllm_outside_trls_window_is_flagged():
    assert env_report._in_window("0.24.0+cu129", ("0.22.0", "0.31.0"))
    assert not env_report._in_window("0.32.1", ("0.22.0", "0.31.0"))


def test_a_user_reward_that_decodes_masks_needs_sam2_by_its_own_declaration(tmp_path, capsys, monkeypatch):
    """No list of reward names: a factory taking ``mask_tokenizer`` declares that it decodes masks."""
    import importlib.util

    (tmp_path / "my_reward.py").write_text(
        "def my_iou(mask_tokenizer=None):\n    return lambda completions, **kw: [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sam2" else real(name, *a))
    code = cli.main(["env", "--recipe", str(ROOT / "recipes" / "shapes_gres.yaml"), "data.env=grefcoco",
                     f"data.train={tmp_path}", "monitor.eval_steps=0", "monitor.image_steps=0",
                     "rewards=[{name: 'my_reward:my_iou'}, {name: answer_match}]"])
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert code == 1
    assert any("needed by my_reward:my_iou)" in p and "needs sam2" in p for p in problems), problems
