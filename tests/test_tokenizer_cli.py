"""``samtok-rl tokenizer train|eval`` end to end on a few shapes-world scenes, and its errors."""

import json

from rl.cli import main as cli
from tokenizer import MaskTokenizer


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "tok"
    rc = cli(["tokenizer", "train", "--data", "shapes", "--scenes", "6", "--steps", "4", "--batch-images", "2",
              "--continuous-steps", "2", "--kmeans-masks", "8", "--loss-size", "64", "--ckpt-every", "2",
              "--eval-scenes", "2", "--no-progress", "--out", str(out)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["steps"] == 4 and 0 <= report["val"]["miou"] <= 1
    assert not (out / "checkpoints").exists()  # removed once the run completed
    MaskTokenizer.from_pretrained(out)
    assert cli(["tokenizer", "eval", "--weights", str(out), "--scenes", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["masks"] > 0 and 0 <= result["miou"] <= 1


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert cli(["tokenizer", "eval", "--weights", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "ann.json"
    bad.write_text('{"images": [], "annotations": []}')
    rc = cli(["tokenizer", "eval", "--weights", "tiny", "--data", "coco", "--annotations", str(bad),
              "--images", str(tmp_path)])
    assert rc == 2
    assert "no non-crowd annotations" in capsys.readouterr().err
