"""Recipes: every file in recipes/ validates; bad recipes fail once, listing every problem."""

from pathlib import Path

import pytest
import yaml

from rl import cli
from rl.recipe.config import RecipeError, load_recipe


def train_main(argv: list[str]) -> int:  # the `samtok-rl train` command line
    return cli.main(["train", *argv])

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def _data_overrides(path: Path, tmp_path: Path) -> list[str]:
    """Released recipes point at prepared data that a fresh clone does not have: stand-ins in tmp_path."""
    data = yaml.safe_load(path.read_text())["data"]
    if data["env"] in ("grefcoco", "grandf"):
        (tmp_path / "prepared").mkdir(exist_ok=True)
        overrides = [f"data.train={tmp_path / 'prepared'}"]
        if "mask_tokenizer" in data:  # the released tokenizer's files
            (tmp_path / "mask_tokenizer").mkdir(exist_ok=True)
            overrides.append(f"data.mask_tokenizer={tmp_path / 'mask_tokenizer'}")
        return overrides
    return []


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"shapes_gres.yaml", "shapes_gcg.yaml", "gres_grpo.yaml", "gcg_grpo.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path, tmp_path):
    recipe = load_recipe(path, _data_overrides(path, tmp_path))
    assert recipe.rewards and recipe.run.output_dir
    header = path.read_text().splitlines()[:4]
    assert all(line.startswith("#") for line in header), "recipes start with a header comment"
    assert "launch" in path.read_text().lower()


@pytest.mark.parametrize("name", ["gres_grpo.yaml", "gcg_grpo.yaml"])
def test_released_setup(name, tmp_path):
    path = next(p for p in RECIPES if p.name == name)
    r = load_recipe(path, _data_overrides(path, tmp_path))
    g = r.grpo
    assert r.model.path == "zhouyik/Qwen2.5-VL-3B-SAMTok-co" and r.model.freeze_vision
    assert (g["num_generations"], g["temperature"], g["top_p"]) == (8, 1.0, 1.0)
    assert (g["learning_rate"], g["weight_decay"], g["beta"]) == (1e-6, 0.01, 0.01)
    assert (g["epsilon"], g["epsilon_high"]) == (0.2, 0.3)
    prompts_per_update = 8 * g["per_device_train_batch_size"] * g["gradient_accumulation_steps"] // g["num_generations"]
    assert prompts_per_update == 128  # on the 8 GPUs the header names
    assert r.rewards[0].name == "answer_match"
    if name == "gcg_grpo.yaml":
        assert r.rewards[0].params["phrase_weight"] > 0 and r.rewards[0].params["no_repeat_weight"] > 0


def test_all_problems_reported_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "run: {output_dir: x, sed: 1}\n"
        "model: {path: ./no/such/model, tiny: {hidden_size: big}}\n"
        "data: {env: shapes_gres}\n"
        "rewards: [{name: not_a_reward}]\n"
        "grpo: {learnin_rate: 1.0, num_generations: two}\n"
    )
    with pytest.raises(RecipeError) as e:
        load_recipe(bad)
    msg = str(e.value)
    for needle in ("run.sed: unknown key", "did you mean 'seed'", "model.tiny.hidden_size: expected int",
                   "model.path: local path", "rewards[0]: unknown reward 'not_a_reward'", "answer_match",
                   "grpo.learnin_rate: not a GRPOConfig field", "learning_rate", "grpo.num_generations: expected int"):
        assert needle in msg, needle
    assert len(e.value.problems) == 6


def test_overrides_are_typed_and_checked():
    path = next(p for p in RECIPES if p.name == "shapes_gres.yaml")
    r = load_recipe(path, ["grpo.max_steps=7", "grpo.save_strategy=no", "run.report_to=[none]", "rewards.0.weight=2"])
    assert r.grpo["max_steps"] == 7 and r.grpo["save_strategy"] == "no"
    assert r.run.report_to == ["none"] and r.rewards[0].weight == 2
    with pytest.raises(RecipeError, match="expected key=value"):
        load_recipe(path, ["grpo.max_steps"])
    with pytest.raises(RecipeError, match="set by the recipe's run section"):
        load_recipe(path, ["grpo.output_dir=elsewhere"])


def test_dry_run_cli(tmp_path, capsys):
    path = next(p for p in RECIPES if p.name == "shapes_gres.yaml")
    assert train_main([str(path), "grpo.max_steps=3", "--dry-run"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out
    assert train_main([str(path), "grpo.nope=1", "--dry-run"]) == 2
    assert "grpo.nope" in capsys.readouterr().err
    gres = next(p for p in RECIPES if p.name == "gres_grpo.yaml")
    assert train_main([str(gres), "--dry-run", "--no-file-checks"]) == 0  # no hub access, no data yet
    assert not (tmp_path / "runs").exists()


def test_tiny_head_dim_is_checked_and_vllm_rollouts_need_a_gpu(tmp_path, capsys, monkeypatch):
    import torch

    path = next(p for p in RECIPES if p.name == "shapes_gres.yaml")
    assert load_recipe(path, ["model.tiny.head_dim=32"]).model.tiny.head_dim == 32
    with pytest.raises(RecipeError, match="model.tiny.head_dim: 48 must be even and split hidden_size 64"):
        load_recipe(path, ["model.tiny.head_dim=48"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = f"run.output_dir={tmp_path / 'run'}"
    assert train_main([str(path), out, "grpo.use_vllm=true", "grpo.vllm_mode=colocate"]) == 2
    assert "grpo.use_vllm=true needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    released = next(p for p in RECIPES if p.name == "gres_grpo.yaml")
    data = _data_overrides(released, tmp_path)
    assert train_main([str(released), *data, out, "grpo.use_vllm=true", "grpo.vllm_mode=server"]) == 2
    assert "grpo.vllm_mode=server needs GPUs" in capsys.readouterr().err


def test_vllm_server_mode_validates_and_needs_a_served_checkpoint_with_the_mask_tokens(tmp_path):
    released = next(p for p in RECIPES if p.name == "gres_grpo.yaml")
    server = [*_data_overrides(released, tmp_path), "grpo.use_vllm=true", "grpo.vllm_mode=server",
              "grpo.vllm_server_base_url=http://10.0.0.2:8000", "grpo.gradient_accumulation_steps=16"]
    r = load_recipe(released, server)
    assert r.grpo["vllm_mode"] == "server" and not r.model.add_mask_tokens
    with pytest.raises(RecipeError, match="grpo.vllm_mode: 'serve' is not colocate"):
        load_recipe(released, [*server, "grpo.vllm_mode=serve"])
    with pytest.raises(RecipeError, match="the server loads its model from disk, without the mask tokens"):
        load_recipe(released, [*server, "model.add_mask_tokens=true"])
    with pytest.raises(RecipeError, match="grpo.vllm_server_prot: not a GRPOConfig field"):
        load_recipe(released, [*server, "grpo.vllm_server_prot=8001"])


@pytest.mark.parametrize("config", sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_keep_the_released_batch(config, tmp_path):
    """Every launch line in an accelerate config's header trains the released GRES batch: 128 prompts x 8
    completions per update (processes x completions per device x accumulation steps)."""
    import re

    text = config.read_text()
    cfg = yaml.safe_load(text)
    assert (ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]).is_file()
    launches = re.findall(r"--config_file (\S+)(.*?)-m rl\.cli train (\S+)(.*?)(?:\n#\s*$|\n[^#]|\n# [A-Z]|$)",
                          text, flags=re.S)
    assert launches, "the header shows how to launch"
    for cfg_file, launch_opts, recipe, overrides in launches:
        assert cfg_file == f"recipes/accelerate/{config.name}"
        procs = re.search(r"--num_processes (\d+)", launch_opts)
        n = int(procs.group(1)) if procs else cfg["num_processes"]
        extra = re.findall(r"(grpo\.\S+=\S+)", overrides)
        r = load_recipe(ROOT / recipe, [*_data_overrides(ROOT / recipe, tmp_path), *extra])
        g = r.grpo
        if n <= 8:  # one node (the several-nodes lines double the processes and the batch with them)
            assert n * g["per_device_train_batch_size"] * g["gradient_accumulation_steps"] == 128 * g["num_generations"]


def test_dry_run_lists_trl_config_refusals_before_any_training():
    """GRPOConfig's own checks run at validation: these recipes used to print `recipe OK` and fail after SFT."""
    path = next(p for p in RECIPES if p.name == "shapes_gres.yaml")
    with pytest.raises(RecipeError, match="at least 2 generations"):
        load_recipe(path, ["grpo.num_generations=1"])
    with pytest.raises(RecipeError, match="divisible by num_generations"):
        load_recipe(path, ["grpo.per_device_train_batch_size=30"])


@pytest.mark.parametrize("name", ["gres_grpo_plus.yaml", "gres_grpo_plus_qwen3.yaml"])
def test_plus_recipes_keep_the_released_setup_and_add_the_miniatures_pick(name, tmp_path):
    path = next(p for p in RECIPES if p.name == name)
    released = load_recipe(next(p for p in RECIPES if p.name == "gres_grpo.yaml"), _data_overrides(path, tmp_path))
    r = load_recipe(path, _data_overrides(path, tmp_path))
    keep = ("num_generations", "temperature", "top_p", "learning_rate", "weight_decay", "beta", "epsilon",
            "epsilon_high", "loss_type", "per_device_train_batch_size", "gradient_accumulation_steps")
    assert {k: r.grpo[k] for k in keep} == {k: released.grpo[k] for k in keep}
    # The rewards and prompt mix of the miniature's measured pick, the gres_rewards plan's paper_iou variant
    # (docs/results.md): a change to either side must be made on purpose.
    import yaml

    plan_file = Path(__file__).resolve().parents[1] / "recipes" / "experiments" / "gres_rewards.yaml"
    plan = yaml.safe_load(plan_file.read_text())
    winner = load_recipe(plan_file.parent.parent / "shapes_gres.yaml", plan["variants"]["paper_iou"])
    assert [(w.name, w.params.get("grading")) for w in r.rewards] == [(w.name, w.params.get("grading"))
                                                                     for w in winner.rewards]
    assert r.rewards[0].params["grading"] == "binary"
    assert r.sampling.balance == winner.sampling.balance == {"no_target": 0.35, "single": 0.45, "multi": 0.2}
    base = {"gres_grpo_plus.yaml": "zhouyik/Qwen2.5-VL-3B-SAMTok-co", "gres_grpo_plus_qwen3.yaml": "zhouyik/Qwen3-VL-4B-SAMTok"}
    assert r.model.path == base[name] and not r.model.add_mask_tokens


def test_continuous_batching_is_refused_before_training():
    """TRL 1.16 raises for it with a multimodal processor only when the trainer is built (after SFT)."""
    with pytest.raises(RecipeError, match="use_transformers_continuous_batching: TRL 1.16 refuses it"):
        load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "shapes_gres.yaml",
                    ["grpo.use_transformers_continuous_batching=true"])


@pytest.mark.parametrize("old,new", [("shapes", "shapes_gres"), ("gres", "grefcoco"), ("gcg", "grandf")])
def test_old_environment_names_load_with_a_warning_naming_the_file(old, new, tmp_path):
    from envs import ENVIRONMENTS

    path = tmp_path / "old.yaml"
    (tmp_path / "prepared").mkdir()
    path.write_text(f"data: {{env: {old}, train: {tmp_path / 'prepared'}}}\nrewards: [{{name: answer_match}}]\n")
    with pytest.warns(FutureWarning, match=rf"{path}: data.env: environment '{old}' is now called '{new}'"):
        r = load_recipe(path)
    assert r.data.env == new and new in ENVIRONMENTS  # one set of names: the recipe's is the registry's
    with pytest.warns(FutureWarning):
        assert load_recipe(ROOT / "recipes" / "shapes_gres.yaml", [f"data.env={old}", f"data.train={tmp_path}",
                                                                   f"data.eval={tmp_path}"]).data.env == new


def test_a_recipe_without_rewards_trains_with_its_environments_recommended_rewards(tmp_path):
    from envs import get_task

    path = tmp_path / "bare.yaml"
    for env, task in (("shapes_gres", "gres"), ("shapes_gcg", "gcg")):
        path.write_text(f"data: {{env: {env}}}\n")
        r = load_recipe(path)
        assert [w.name for w in r.rewards] == list(get_task(task).recommended_rewards) and all(w.weight == 1 for w in r.rewards)
    path.write_text("data: {env: shapes_gres}\nrewards: []\n")  # an explicit empty list is a mistake, not a default
    with pytest.raises(RecipeError, match="rewards: at least one reward is required"):
        load_recipe(path)
