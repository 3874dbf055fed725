"""Bad input to a command ends in one line naming the file, row and field (exit status 2), with no traceback;
``samtok-rl --debug`` shows the traceback."""

import json
import os
from pathlib import Path

import pytest

from rl import cli
from rl.cli.errors import DEBUG_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)


def _train(tmp_path, data):
    return cli.main(["train", str(ROOT / "recipes" / "shapes_gres.yaml"), "data.env=grefcoco", f"data.train={data}",
                     "sft.enabled=false", "monitor.eval_steps=0", f"run.output_dir={tmp_path / 'run'}",
                     "run.report_to=[none]"])


def _last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()][-1]


def _row(i):
    return {"prompt": [{"role": "user", "content": [{"type": "text", "text": "q"}]}], "image": "a.png",
            "answer": "No target.", "id": str(i)}


def test_a_broken_line_in_prepared_jsonl_is_named(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(_row(0)) + "\n" + json.dumps(_row(1)) + "\n" + '{"prompt": [oops\n')
    assert _train(tmp_path, data) == 2
    assert _last_line(capsys.readouterr().err) == (
        f"error: {data}: line 3: not valid JSON (Expecting value at column 13)")


def test_prepared_rows_without_answer_are_named(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({k: v for k, v in _row(i).items() if k != "answer"}) + "\n" for i in range(3)))
    assert _train(tmp_path, data) == 2
    line = _last_line(capsys.readouterr().err)
    assert line == f"error: {data}: prepared rows lack the column(s) ['answer']; run `samtok-rl prepare` first"


def test_a_mistyped_policy_folder_is_not_looked_up_on_the_hub(tmp_path, capsys):
    args = ["eval", "--policy", "/nonexistent", "--env", "shapes_gres", "--limit", "2", "--tokenizer", "random",
            "--out", str(tmp_path / "eval")]
    assert cli.main(args) == 2
    line = _last_line(capsys.readouterr().err)
    assert line == "samtok-rl eval: error: policy '/nonexistent': no such folder (a hub id has the form owner/name)"
    with pytest.raises(FileNotFoundError, match="no such folder"):  # --debug: the traceback
        cli.main(["--debug", *args])
    # and for that command only: a later command in the same process reports in one line again
    assert DEBUG_ENV not in os.environ
    assert cli.main(args) == 2
