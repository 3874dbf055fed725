"""``samtok-rl experiment`` at toy size: the plan is validated before anything trains, SFT is shared only
where it may be, summary.json/report.md/deltas.png are written, and a re-run skips every finished cell."""

import json
from pathlib import Path

import pytest

from envs import get_task
from rl import cli
from rl.experiments import demo, experiment
from rl.experiments.plan import PlanError, load_plan
from rl.grpo import sft as sft_mod
from rl.grpo import train as train_mod

TOY = [
    "data.mask_tokenizer=random", "data.shapes.n_train=16", "data.shapes.n_eval=0", "sft.args.max_steps=2",
    "grpo.max_steps=5", "grpo.logging_steps=1", "grpo.per_device_train_batch_size=8", "grpo.num_generations=4",
    "grpo.max_completion_length=8", "grpo.save_strategy=no", "grpo.log_completions=false", "run.report_to=[none]",
    "monitor.eval_steps=0",
]
GRES_METRICS = ("gIoU", "cIoU", "N-acc", "T-acc")
ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp_path, text: str):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


TOY_PLAN = """\
task: gres
eval: {split: test, samples: 6, max_new_tokens: 16}
variants:
  default: []
  beta0: [grpo.beta=0.0]
"""


def _forbid(monkeypatch, *names):
    """Make the named stages raise: a re-run that calls one of them redid a finished cell."""
    targets = {"run": (train_mod, "run"), "sft_stage": (sft_mod, "sft_stage"),
               "evaluate_policy": (demo, "evaluate_policy")}
    for name in names:
        module, attr = targets[name]

        def boom(*args, _name=name, **kwargs):
            raise AssertionError(f"{_name} called for a finished cell")

        monkeypatch.setattr(module, attr, boom)


def _cell_mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob(experiment.CELL_FILE)}


def test_toy_experiment_writes_summary_report_plot_and_resumes(tmp_path, monkeypatch, capsys, one_thread):
    plan, out = _plan(tmp_path, TOY_PLAN), tmp_path / "exp"
    argv = [str(plan), "--seeds", "0", "1", "--out", str(out), *TOY]
    assert cli.main(["experiment", *argv]) == 0
    first = capsys.readouterr().out
    assert "[cell 1/12] SFT seed=0 ..." in first and "[cell 3/12] RL variant=beta0 seed=0 ..." in first

    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "gres" and summary["sft_of"] == {"default": "sft", "beta0": "sft"}
    assert summary["cpu_threads"] == [1]  # the one_thread fixture; every cell records its device and thread count
    assert json.loads((out / "seed0" / "beta0" / experiment.CELL_FILE).read_text())["threads"] == 1
    runs = summary["runs"]
    assert sorted((r["variant"], r["seed"], r["policy"]) for r in runs) == sorted(
        [("sft", s, "SFT") for s in (0, 1)] + [(v, s, "RL") for v in ("default", "beta0") for s in (0, 1)])
    for r in runs:
        assert set(r) == {"variant", "seed", "policy", "metrics", "wall_s"} | ({"reward_fifths"} if r["policy"] == "RL" else set())
        if r["policy"] == "RL":  # the sampled reward of its 5 GRPO steps, one logged value per fifth
            logged = json.loads((out / f"seed{r['seed']}" / r["variant"] / "log_history.json").read_text())
            assert r["reward_fifths"] == [h["reward"] for h in logged if "reward" in h]
        assert isinstance(r["variant"], str) and isinstance(r["seed"], int) and isinstance(r["wall_s"], float)
        assert r["wall_s"] > 0
        for k in GRES_METRICS:
            assert isinstance(r["metrics"][k], float) and 0.0 <= r["metrics"][k] <= 100.0, (k, r)
    # Both variants of a seed started from one SFT policy: their run dirs link the same folder.
    sft0 = (out / "seed0" / "default" / "sft").resolve()
    assert sft0 == (out / "seed0" / "beta0" / "sft").resolve() and (sft0 / "config.json").is_file()
    assert sft0 != (out / "seed1" / "default" / "sft").resolve()

    text = (out / "report.md").read_text()
    assert "| sft | 1 | SFT |" in text and "| beta0 | 0 | RL |" in text
    assert "| default | 2 | " in text and "one seed proves nothing" in text and "- **beta0**: " in text
    assert "## Learning: the sampled training reward" in text and "| beta0 | 1 | " in text
    assert "- `default`: the reward rose (last fifth > first) on " in text
    for png in ("deltas.png", "curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 5000

    # Second run: every cell is finished, so no stage may run and no cell result may be rewritten.
    before = _cell_mtimes(out)
    assert len(before) == 12
    _forbid(monkeypatch, "run", "sft_stage", "evaluate_policy")
    assert cli.main(["experiment", *argv]) == 0
    assert capsys.readouterr().out.count("done earlier, skipped") == 12
    assert _cell_mtimes(out) == before

    # One lost evaluation: only it runs again.
    lost = out / "seed1" / "beta0" / "eval" / experiment.CELL_FILE
    lost.unlink()
    monkeypatch.undo()
    _forbid(monkeypatch, "run", "sft_stage")
    calls = []
    real_eval = demo.evaluate_policy
    monkeypatch.setattr(demo, "evaluate_policy", lambda *a, **k: calls.append(1) or real_eval(*a, **k))
    assert cli.main(["experiment", *argv]) == 0
    assert len(calls) == 1 and lost.is_file()
    assert {p: t for p, t in _cell_mtimes(out).items() if p != lost} == {p: t for p, t in before.items() if p != lost}
    assert json.loads((out / "summary.json").read_text())["runs"] == runs  # greedy: the same metrics again


def test_a_changed_recipe_is_refused_instead_of_mixed_into_finished_cells(tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path, TOY_PLAN)
    cells = experiment.build_cells(load_plan(plan, TOY), [0], tmp_path / "exp")
    for c in cells:  # finished cells of the TOY recipe, without training them
        experiment.write_json(c.file, {"kind": c.kind, "key": c.key, "done": True, "upstream": None})
    _forbid(monkeypatch, "run", "sft_stage", "evaluate_policy")
    rc = cli.main(["experiment", str(plan), "--seeds", "0", "--out", str(tmp_path / "exp"), *TOY, "grpo.learning_rate=2.5e-4"])  # not the recipe's value
    assert rc == 2
    err = capsys.readouterr().err
    assert "different plan, recipe or override" in err
    assert str(tmp_path / "exp" / "seed0" / "default" / experiment.CELL_FILE) in err


def test_unknown_plan_keys_and_bad_overrides_are_refused_before_training(tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path, """\
task: gres
evals: {samples: 8}
eval: {split: train, sampels: 3}
variants:
  default: []
  bad: [grpo.learnin_rate=1e-5, sft.args.max_step=3]
  sft_twice: []
""")
    with pytest.raises(PlanError) as e:
        load_plan(plan, ["grpo.bta=0.1"])
    problems = e.value.problems
    assert "evals: unknown key (did you mean 'eval'?)" in problems
    assert "eval.sampels: unknown key (did you mean 'samples'?)" in problems
    assert any(p.startswith("eval.split: 'train'") for p in problems)
    assert any(p.startswith("variants.sft_twice: a variant name") for p in problems)
    assert "variants.bad: grpo.learnin_rate: not a GRPOConfig field (did you mean 'learning_rate'?)" in problems
    assert "variants.bad: sft.args.max_step: not a SFTConfig field (did you mean 'max_steps'?)" in problems
    # A command-line problem is named once, not once per variant.
    assert [p for p in problems if "grpo.bta" in p] == ["recipe + command line: grpo.bta: not a GRPOConfig field (did you mean 'beta'?)"]

    _forbid(monkeypatch, "run", "sft_stage", "evaluate_policy")
    out = tmp_path / "exp"
    assert cli.main(["experiment", str(plan), "--seeds", "0", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evals: unknown key" in err and "variants.bad: grpo.learnin_rate" in err
    assert not out.exists()


def test_a_plan_for_another_world_or_without_sft_is_refused(tmp_path):
    plan = _plan(tmp_path, "task: gcg\nrecipe: recipes/shapes_gres.yaml\nvariants:\n  a: [sft.enabled=false]\n")
    with pytest.raises(PlanError) as e:
        load_plan(plan)
    text = str(e.value)
    # The base recipe's problem is named once as the recipe's; the variant's own on top of it.
    assert "- recipe: data.env: 'shapes_gres'; a gcg experiment evaluates on the generated 'shapes_gcg' world" in text
    assert "- variants.a: sft.enabled: must be true" in text and "variants.a: data.env" not in text


def test_sft_is_shared_only_by_variants_with_the_same_sft_sections(tmp_path):
    plan = load_plan(_plan(tmp_path, """\
task: gres
variants:
  default: []
  beta0: [grpo.beta=0.0]
  unfrozen: [model.freeze_vision=false, model.finetune=lora, model.lora.r=4]
  slow_sft: [sft.args.learning_rate=1e-4]
"""), TOY)
    cells = experiment.build_cells(plan, [0, 1], tmp_path / "exp")
    sft = [c for c in cells if c.kind == "sft"]
    rl = {(c.variant, c.seed): c for c in cells if c.kind == "rl"}
    assert len(sft) == 4 and len({c.dir for c in sft}) == 4  # 2 SFTs per seed, none shared across seeds
    for seed in (0, 1):
        # The vision tower and LoRA apply from GRPO on: SFT trains the same policy for them.
        assert rl[("default", seed)].needs is rl[("beta0", seed)].needs is rl[("unfrozen", seed)].needs
        assert rl[("slow_sft", seed)].needs is not rl[("default", seed)].needs
        assert len({rl[(v, seed)].key for v in ("default", "beta0", "unfrozen")}) == 3
    assert {c.variant for c in sft} == {"sft:default+beta0+unfrozen", "sft:slow_sft"}
    assert experiment.sft_of(cells) == {"default": "sft:default+beta0+unfrozen", "beta0": "sft:default+beta0+unfrozen",
                                          "unfrozen": "sft:default+beta0+unfrozen", "slow_sft": "sft:slow_sft"}
    labels = [c.label for c in cells]
    assert len(labels) == 2 * (2 + 4 + 2 + 4) and labels[0] == "SFT seed=0 (sft:default+beta0+unfrozen)"


def test_report_on_a_constructed_summary_pairs_rl_with_its_seeds_sft(tmp_path):
    plan = load_plan(_plan(tmp_path, TOY_PLAN))
    sft = [{"gIoU": 20.0 + s, "cIoU": 18.0, "N-acc": 10.0, "T-acc": 90.0} for s in range(3)]
    real = [{"gIoU": 25.0 + 2 * s, "cIoU": 21.0 + s, "N-acc": 11.0, "T-acc": 90.0} for s in range(3)]  # +5,+6,+7
    traded = [{"gIoU": 24.0 + s, "cIoU": 17.0, "N-acc": 40.0, "T-acc": 70.0} for s in range(3)]
    runs = [{"variant": "sft", "seed": s, "policy": "SFT", "metrics": sft[s], "wall_s": 1.0} for s in range(3)]
    runs += [{"variant": "default", "seed": s, "policy": "RL", "metrics": real[s], "wall_s": 2.0} for s in range(3)]
    runs += [{"variant": "beta0", "seed": s, "policy": "RL", "metrics": traded[s], "wall_s": 2.0} for s in range(3)]
    summary = {"task": "gres", "runs": runs, "sft_of": {"default": "sft", "beta0": "sft"}, "seeds": [0, 1, 2],
               "eval": {"split": "test", "samples": 6}}
    text = experiment.write_report(plan, summary, tmp_path)
    assert "| default | 3 | +6.00 ± 1.00 | +4.00 ± 1.00 | +1.00 ± 0.00 | +0.00 ± 0.00 |" in text
    assert "| sft | SFT | 21.00 ± 1.00 |" in text
    default, beta0 = text.split("- **default**: ")[1].split("- **beta0**: ")
    assert "comes from better masks (cIoU +4.00)" in default and "Note:" not in default
    assert "traded for 'No target.'" in beta0 and "not better masks" in beta0
    assert "Does the variants' order" not in text  # two variants: no order to test
    assert "different CPU thread counts" not in text
    mixed = experiment.write_report(plan, summary | {"cpu_threads": [1, 2]}, tmp_path)
    assert "- warning: the SFT and GRPO cells ran with different CPU thread counts (1 and 2" in mixed
    path = experiment.plot_deltas(summary, tmp_path / "deltas.png")
    assert path.stat().st_size > 5000


def test_report_says_whether_the_variants_order_repeats_across_seeds(tmp_path):
    plan = load_plan(_plan(tmp_path, TOY_PLAN + "  a: [grpo.beta=0.1]\n  b: [grpo.beta=0.2]\n"))

    def report(gains):  # per variant, its gIoU delta on seeds 0, 1, 2
        runs = [{"variant": "sft", "seed": s, "policy": "SFT", "metrics": dict.fromkeys(get_task("gres").metrics, 50.0),
                 "wall_s": 1.0} for s in range(3)]
        runs += [{"variant": v, "seed": s, "policy": "RL", "wall_s": 1.0,
                  "metrics": dict.fromkeys(get_task("gres").metrics, 50.0) | {"gIoU": 50.0 + d[s]}}
                 for v, d in gains.items() for s in range(3)]
        summary = {"task": "gres", "runs": runs, "sft_of": dict.fromkeys(gains, "sft"), "seeds": [0, 1, 2],
                   "eval": {"split": "test", "samples": 6}}
        return experiment.write_report(plan, summary, tmp_path)

    steady = report({"default": [4, 5, 6], "beta0": [1, 2, 3], "a": [0, 0.5, 1], "b": [-2, -1, 0]})
    assert ("Two seeds order them alike at a mean Spearman of +1.00; the reliability of the 3-seed mean "
            "(Spearman-Brown) is 1.00: the order repeats from seed to seed.") in steady
    # Each seed crowns another variant: the table of means would still show a winner.
    noisy = report({"default": [4, 1, 2], "beta0": [1, 4, 3], "a": [2, 3, 4], "b": [3, 2, 1]})
    assert "the order of the means is mostly seed noise" in noisy


def test_cli_lists_the_experiment_command(capsys):
    from rl import cli

    assert cli.main([]) == 0
    assert "experiment" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["experiment", "--help"])
    assert e.value.code == 0 and "--seeds" in capsys.readouterr().out


def test_shipped_plans_validate():
    from pathlib import Path

    root = Path(experiment.__file__).resolve().parents[2] / "recipes" / "experiments"
    for task in ("gres", "gcg"):
        plan = load_plan(root / f"{task}.yaml")
        assert plan.task == task and plan.variants["default"] == []
        assert plan.recipe.name == f"shapes_{task}.yaml"
        assert plan.eval == {"split": "test", "samples": 200, "max_new_tokens": get_task(task).max_new_tokens}
    for path in root.glob("*_rewards.yaml"):  # the ablations: the paper's reward next to the default
        plan = load_plan(path)
        assert {"paper", "default"} <= plan.variants.keys() and plan.variants["default"] == []
        # its holdout (the probe's test on variants fixed in advance) repeats none of its variants
        holdout = load_plan(path.with_name(path.stem + "_holdout.yaml"))
        assert holdout.recipe == plan.recipe and holdout.eval == plan.eval
        assert not set(map(tuple, holdout.variants.values())) & set(map(tuple, plan.variants.values()))


def test_settings_added_later_leave_finished_cells_keys_alone():
    """A setting added to the schema after cells were keyed is left out of the key at its default (and a section
    that only held such settings disappears), so results made before it existed stay valid."""
    from rl.recipe.config import later_settings, with_later_defaults, without_later_defaults

    old = {"run": {"seed": 0}, "reward_runtime": {"timeout_s": 10.0}}
    new = with_later_defaults(old)
    assert new["sampling"]["balance"] is None and new["reward_runtime"]["isolation"] == "none"
    assert without_later_defaults(new) == old and old == {"run": {"seed": 0}, "reward_runtime": {"timeout_s": 10.0}}
    changed = with_later_defaults({**old, "sampling": {"balance": {"no_target": 1.0}}})
    assert without_later_defaults(changed)["sampling"] == {"balance": {"no_target": 1.0}}  # a real choice stays
    assert set(later_settings()) >= {"sampling.balance", "sampling.dynamic", "reward_runtime.isolation"}


def test_variants_flag_runs_a_subset_and_refuses_unknown_names(tmp_path, monkeypatch, capsys):
    plan = _plan(tmp_path, TOY_PLAN)
    seen = {}
    def fake_run(p, seeds, out):
        seen.update(variants=dict(p.variants))
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "report.md").write_text("report\n")

    monkeypatch.setattr(experiment, "run_experiment", fake_run)
    assert cli.main(["experiment", str(plan), *TOY, "--out", str(tmp_path / "out"), "--variants", "beta0"]) == 0
    assert seen["variants"] == {"beta0": ["grpo.beta=0.0"]}
    assert cli.main(["experiment", str(plan), "--out", str(tmp_path / "out"), "--variants", "nope"]) == 2
    assert "no variant 'nope'; the plan has default, beta0" in capsys.readouterr().err


def test_renamed_environments_keep_the_keys_of_cells_made_before_the_rename():
    """Cells keyed before data.env's names became the registry's (shapes -> shapes_gres) stay done: keys spell
    the environment the old way, so an old experiment folder is not retrained."""
    from envs import ALIASES
    from rl.recipe.config import KEYED_ENV_NAMES, key_form, to_dict

    recipe = experiment.load_recipe(ROOT / "recipes" / "shapes_gres.yaml")
    assert recipe.data.env == "shapes_gres" and key_form(to_dict(recipe))["data"]["env"] == "shapes"
    assert {old: new for new, old in KEYED_ENV_NAMES.items()} == ALIASES
    with pytest.warns(FutureWarning):
        old = experiment.load_recipe(ROOT / "recipes" / "shapes_gres.yaml", ["data.env=shapes"])
    assert experiment.sft_key(old) == experiment.sft_key(recipe)
    assert experiment._recipe_key(old) == experiment._recipe_key(recipe)
