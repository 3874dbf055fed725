"""One recipe, one mask tokenizer: ``data.mask_tokenizer`` encodes the answers, and every reward that decodes or
embeds masks, the monitor and the evaluation use that same tokenizer; a reward naming another is refused."""

from pathlib import Path

import pytest
import torch

from rl import cli
from rl.grpo.trainer import reward_items
from rl.recipe.config import RecipeError, load_recipe
from tokenizer import MaskTokenizer
from tokenizer.config import tiny
from tokenizer.load import WEIGHTS, load_mask_tokenizer, spec_folder

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "shapes_gres.yaml"


def test_rewards_that_decode_get_the_recipes_tokenizer(tmp_path):
    r = load_recipe(RECIPE, ["data.mask_tokenizer=tiny", "rewards=[{name: answer_match}, {name: mask_iou}, "
                             "{name: latent_match, params: {mask_tokenizer: tiny}}]"])
    items = reward_items(r)
    assert "mask_tokenizer" not in items[0]["params"]  # answer_match reads text only
    assert items[1]["params"]["mask_tokenizer"] == items[2]["params"]["mask_tokenizer"] == "tiny"
    assert r.rewards[1].params == {}  # the recipe itself is left as written


def test_a_reward_naming_another_tokenizer_is_refused(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, ["data.mask_tokenizer=tiny", "rewards=[{name: mask_iou, params: {mask_tokenizer: random}}]"])
    assert "rewards[0].params.mask_tokenizer: 'random' differs from data.mask_tokenizer 'tiny'" in str(e.value)
    with pytest.raises(RecipeError, match="data.mask_tokenizer: mask tokenizer 'nowhere' is not one of"):
        load_recipe(RECIPE, ["data.mask_tokenizer=nowhere"])


def test_every_spec_resolves_in_one_place(tmp_path, monkeypatch):
    assert spec_folder("tiny") == WEIGHTS / "tiny" and spec_folder("random") is None
    assert load_mask_tokenizer("tiny").codebook_size == 256
    torch.manual_seed(0)
    MaskTokenizer(tiny(8)).save_pretrained(tmp_path / "saved")
    assert load_mask_tokenizer(str(tmp_path / "saved")).codebook_size == 8
    # The released files, as a model repository ships them, load through load_official.
    (tmp_path / "repo").mkdir()
    for name in ("mask_tokenizer_256x2.pth", "sam2.1_hiera_large.pt"):
        (tmp_path / "repo" / name).write_bytes(b"")
    seen = []
    monkeypatch.setattr(MaskTokenizer, "load_official", classmethod(lambda cls, *paths: seen.append(paths) or "m"))
    assert load_mask_tokenizer(str(tmp_path / "repo")) == "m"
    assert seen == [(tmp_path / "repo" / "mask_tokenizer_256x2.pth", tmp_path / "repo" / "sam2.1_hiera_large.pt")]
    with pytest.raises(FileNotFoundError, match="README.md has the commands"):
        monkeypatch.setattr("tokenizer.load.WEIGHTS", tmp_path / "empty")
        load_mask_tokenizer("tiny")


def test_a_recipe_naming_one_tokenizer_never_touches_another(tmp_path, monkeypatch, one_thread):
    """The whole default pipeline (encoding the data, SFT, GRPO with mask_iou and latent_match, the held-out monitor,
    the evaluation) with data.mask_tokenizer set to a folder: no other tokenizer is ever loaded."""
    torch.manual_seed(0)
    folder = tmp_path / "tok"
    MaskTokenizer(tiny(16)).save_pretrained(folder)
    loaded = []
    real = MaskTokenizer.from_pretrained.__func__
    monkeypatch.setattr(MaskTokenizer, "from_pretrained",
                        classmethod(lambda cls, path, device=None: loaded.append(Path(path)) or real(cls, path, device)))
    monkeypatch.setattr(MaskTokenizer, "__init__", _only_loads(MaskTokenizer.__init__))
    monkeypatch.setenv("SAMTOK_RL_CACHE", "off")
    rc = cli.main(["demo", "--out", str(tmp_path / "demo"), "--test-samples", "4", f"data.mask_tokenizer={folder}",
                   "data.shapes.n_train=8", "sft.args.max_steps=2", "grpo.max_steps=2", "grpo.save_strategy=no",
                   "grpo.max_completion_length=8", "grpo.per_device_train_batch_size=8", "grpo.num_generations=4",
                   "run.report_to=[none]", "monitor.eval_steps=1", "monitor.eval_samples=2",
                   "rewards=[{name: answer_match}, {name: mask_iou}, {name: latent_match}]"])
    assert rc == 0
    assert loaded and set(loaded) == {folder}, loaded


def _only_loads(init):
    """MaskTokenizer.__init__ that fails unless called by from_pretrained (a built-from-config tokenizer, such as
    "random", would be another tokenizer)."""
    import inspect

    def wrapped(self, config):
        callers = [f.function for f in inspect.stack()[1:4]]
        assert "from_pretrained" in callers or "<lambda>" in callers, f"a tokenizer built outside the recipe's: {callers}"
        init(self, config)

    return wrapped
