"""get_reward / build_rewards: built-in names, module paths, user files, and clear errors."""

import textwrap

import pytest
from omegaconf import OmegaConf

from rewards import build_rewards, builtin_names, get_reward

A = "<|mt_start|><|mt_0001|><|mt_0258|><|mt_end|>"
USER_FILE = textwrap.dedent(
    """
    def length_reward(prompts, completions, completion_ids=None, **columns):
        return [min(len(c), 10) / 10 for c in completions]

    def keyword(word="cat", bonus=1.0):
        def keyword_reward(prompts, completions, **columns):
            return [bonus if word in c else 0.0 for c in completions]
        return keyword_reward
    """
)


def test_builtin_names_and_params():
    assert {"answer_match", "no_repeat", "mask_format", "gres_format", "gcg_format", "mask_iou"} <= set(builtin_names())
    binary, coarse = get_reward("answer_match"), get_reward("answer_match", grading="coarse")
    half = "<|mt_start|><|mt_0001|><|mt_0300|><|mt_end|>"
    assert binary(completions=[half], answer=[A]) == [0.0]
    assert coarse(completions=[half], answer=[A]) == [0.4]
    assert binary.__name__ == "answer_match"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        get_reward("answer_matching")
    for name in builtin_names():
        assert name in str(e.value)
    assert "module:function" in str(e.value)


def test_bad_params_are_reported():
    with pytest.raises(ValueError, match="bad params for reward 'answer_match'"):
        get_reward("answer_match", gradin="coarse")
    with pytest.raises(ValueError, match="grading"):
        get_reward("answer_match", grading="fuzzy")


def test_dotted_module_path():
    fn = get_reward("rewards.format:gres_format")  # a factory: called with no params
    assert fn(completions=["No target."]) == [1.0]
    with pytest.raises(ValueError, match="cannot import module"):
        get_reward("rewards.nope:thing")
    with pytest.raises(ValueError, match="has no attribute 'nope'.*gres_format"):
        get_reward("rewards.format:nope")


def test_user_reward_from_a_file(tmp_path, monkeypatch):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    plain = get_reward(f"{path}:length_reward")
    assert plain.__name__ == "length_reward"
    assert plain(prompts=["p", "p"], completions=["abc", "x" * 50]) == [0.3, 1.0]
    factory = get_reward(f"{path}:keyword", word="dog", bonus=0.5)
    assert factory(prompts=["p", "p"], completions=["a dog", "a cat"]) == [0.5, 0.0]
    # A relative path resolves against the working directory.
    monkeypatch.chdir(tmp_path)
    assert get_reward("./my_rewards.py:length_reward")(prompts=["p"], completions=["ab"]) == [0.2]
    with pytest.raises(ValueError, match="takes no params"):
        get_reward(f"{path}:length_reward", scale=2)
    with pytest.raises(FileNotFoundError, match="missing.py"):
        get_reward(f"{tmp_path}/missing.py:length_reward")


def test_build_rewards_from_a_recipe_list():
    recipe = OmegaConf.create(
        {"rewards": [
            {"name": "answer_match", "weight": 1.0, "params": {"grading": "coarse"}},
            {"name": "no_repeat", "weight": 0.5},
            {"name": "rewards.format:gres_format"},
        ]}
    )
    funcs, weights = build_rewards(recipe.rewards)
    assert [f.__name__ for f in funcs] == ["answer_match", "no_repeat", "gres_format"]
    assert weights == [1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=r"rewards\[0\]: missing 'name'"):
        build_rewards([{"weight": 1.0}])
    with pytest.raises(ValueError, match=r"rewards\[0\] \(no_repeat\): unknown keys \['wieght'\]"):
        build_rewards([{"name": "no_repeat", "wieght": 1.0}])
    with pytest.raises(ValueError, match="no rewards configured"):
        build_rewards([])


def test_every_builtin_reward_pickles_and_scores_the_same_after():
    """Callable classes, not closures: a process pool or trl's AsyncGRPOTrainer can ship them to workers."""
    import pickle

    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    batch = dict(completions=[A, "No target.", "<|mt_start|><|mt_0001|>"], answer=[A, A, "No target."],
                 image=[image] * 3, masks=[[], [], []])
    for name in builtin_names():
        params = {}
        if name == "mask_iou":  # a random-init tiny tokenizer: decoding is what is exercised, not its quality
            from tokenizer.load import load_mask_tokenizer

            params = {"mask_tokenizer": load_mask_tokenizer("random")}
        reward = get_reward(name, **params)
        again = pickle.loads(pickle.dumps(reward))
        assert again.__name__ == reward.__name__ == name
        assert again(**batch) == reward(**batch), name


def test_recipe_validation_binds_model_loading_rewards_without_building_them(monkeypatch):
    from rewards import iou, latent, registry

    def boom(*a, **k):
        raise AssertionError("built during validation")

    monkeypatch.setattr(iou, "_load_tokenizer", boom)
    monkeypatch.setattr(latent, "codebooks_of", boom)
    registry.check_params("mask_iou", {"mode": "gcg"})
    registry.check_params("latent_match", {"similarity": "cosine"})
    with pytest.raises(ValueError, match="bad params for reward 'latent_match'"):
        registry.check_params("latent_match", {"simlarity": "cosine"})
    with pytest.raises(ValueError, match="grading must be one of"):  # light rewards are built: values checked
        registry.check_params("answer_match", {"grading": "fuzzy"})
