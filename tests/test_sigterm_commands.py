"""SIGTERM stops ``experiment``, ``demo`` and ``eval`` with one line saying what was kept and how to go on (exit 0, no
traceback), as ``train`` does (``tests/test_rl_resume.py``)."""

import os
import signal
from pathlib import Path

import pytest

from rl import cli
from rl.eval import evaluate
from rl.experiments import experiment
from rl.grpo import sft as sft_mod
from rl.grpo import train as train_mod
from rl.grpo.preemption import Preempted


def _sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM was not turned into a stop")


TOY = ["data.mask_tokenizer=random", "data.shapes.n_train=8", "sft.args.max_steps=1", "grpo.max_steps=1",
       "run.report_to=[none]", "monitor.eval_steps=0"]


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("task: gres\neval: {split: test, samples: 4, max_new_tokens: 8}\nvariants:\n  default: []\n")
    return path


def _one_line(err: str) -> str:
    """The message: the last line on stderr (progress bars come before it), with no traceback anywhere."""
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()][-1]


def test_experiment_stopped_in_sft(plan, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sft_mod, "sft_stage", _sigterm)
    out = tmp_path / "exp"
    assert cli.main(["experiment", str(plan), "--seeds", "0", "--out", str(out), *TOY]) == 0
    line = _one_line(capsys.readouterr().err)
    assert line == f"stopped on SIGTERM: the finished cells are kept in {out}; run the same command again to continue"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_experiment_stopped_in_grpo_names_the_checkpoint(plan, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(experiment, "run_sft_cell", lambda cell: {})
    monkeypatch.setattr(train_mod, "run", lambda recipe, *a, **k: (_ for _ in ()).throw(
        Preempted(Path(recipe.run.output_dir) / "checkpoint-3")))
    monkeypatch.setattr(experiment, "link_sft", lambda *a: None)
    out = tmp_path / "exp"
    assert cli.main(["experiment", str(plan), "--seeds", "0", "--out", str(out), *TOY]) == 0
    line = _one_line(capsys.readouterr().err)
    assert f"the GRPO cell under way saved {out / 'seed0' / 'default' / 'checkpoint-3'} and resumes from it" in line


def test_demo_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "run", _sigterm)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--test-samples", "2", *TOY]) == 0
    line = _one_line(capsys.readouterr().err)
    assert line == f"stopped on SIGTERM: nothing is kept; the demo starts over with `samtok-rl demo` (it replaces {out})"


def test_eval_stopped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "complete", _sigterm)
    out = tmp_path / "eval"
    rc = cli.main(["eval", "--policy", "tiny", "--env", "shapes_gres", "--split", "val", "--limit", "2",
                   "--tokenizer", "random", "--out", str(out)])
    assert rc == 0
    assert _one_line(capsys.readouterr().err).startswith("stopped on SIGTERM: the evaluation did not finish")
