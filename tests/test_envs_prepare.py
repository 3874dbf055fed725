"""`samtok-rl prepare`: shards, resumption after a crash, skipped-row report, strict failure."""

import json

import numpy as np
import pytest

from envs import get_env
from envs.prepare import load_prepared, plan_shards, prepare_dataset
from rl import cli
from tokenizer.codec import parse_masks


def main(argv: list[str]) -> int:  # the `samtok-rl prepare` command line
    return cli.main(["prepare", *argv])


class Codes:
    """Deterministic stand-in for MaskTokenizer.encode; can crash after a number of calls."""

    def __init__(self, crash_after=None):
        self.calls = 0
        self.crash_after = crash_after

    def encode(self, image, masks, boxes=None):
        if self.crash_after is not None and self.calls >= self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        return np.array([[int(m.sum()) % 256, int(np.argmax(m)) % 256] for m in masks]).reshape(-1, 2)


def _env():
    return get_env("shapes_gres", train_size=40, eval_size=8, seed=1)


def test_resume_after_crash_redoes_only_unfinished_shards(tmp_path):
    env = _env()
    n_images = sum(1 for s in env.samples("train") if s["masks"])  # images with at least one mask to encode
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(env, "train", tmp_path / "out", Codes(crash_after=12), "fake", shard_size=10, progress=False)
    done = sorted(p.name for p in (tmp_path / "out/shards").glob("*.done.json"))
    assert 0 < len(done) < 4  # the crash hit a later shard
    with pytest.raises(ValueError, match="unfinished"):
        load_prepared(tmp_path / "out")

    resumed = Codes()
    report = prepare_dataset(env, "train", tmp_path / "out", resumed, "fake", shard_size=10, progress=False)
    assert report["shards_resumed"] == len(done) and report["rows"] == 40
    assert resumed.calls < n_images  # finished shards were not encoded again

    fresh = Codes()
    prepare_dataset(env, "train", tmp_path / "ref", fresh, "fake", shard_size=10, progress=False)
    assert fresh.calls == n_images
    a, b = load_prepared(tmp_path / "out"), load_prepared(tmp_path / "ref")
    assert a["id"] == b["id"] and a["answer"] == b["answer"] and a["masks"] == b["masks"]
    assert [len(parse_masks(x)) for x in a["answer"]] == [len(x) for x in a["masks"]]


def test_changed_arguments_are_refused(tmp_path):
    prepare_dataset(_env(), "val", tmp_path, Codes(), "fake", shard_size=4, progress=False)
    with pytest.raises(ValueError, match="different preparation.*shard_size"):
        prepare_dataset(_env(), "val", tmp_path, Codes(), "fake", shard_size=5, progress=False)


def test_bad_samples_are_skipped_and_reported_or_fail_strictly(tmp_path):
    env = _env()
    samples = env.samples("val")
    target = next(i for i, s in enumerate(samples) if s["masks"])
    samples[target]["masks"][0] = {"size": [112, 112], "counts": "#corrupt"}
    empty = next(i for i, s in enumerate(samples) if s["masks"] and i != target)
    samples[empty]["masks"][0] = {"size": [112, 112], "counts": [112 * 112]}
    patched = type(env)(env.name, env.task, env.splits, lambda split, bad_rows=None: samples)

    report = prepare_dataset(patched, "val", tmp_path / "lenient", Codes(), "fake", strict=False, progress=False)
    assert report["rows"] == 6 and report["skipped"] == 2
    assert report["skipped_by_reason"] == {"corrupt RLE": 1, "empty mask": 1}
    assert {r["id"] for r in report["skipped_rows"]} == {samples[target]["id"], samples[empty]["id"]}
    assert json.loads((tmp_path / "lenient/report.json").read_text())["skipped"] == 2
    with pytest.raises(ValueError, match=samples[target]["id"]):
        prepare_dataset(patched, "val", tmp_path / "strict", Codes(), "fake", strict=True, progress=False)


def test_shards_never_split_an_image():
    samples = [{"id": i, "image": f"img{i // 3}.jpg"} for i in range(9)]
    assert [len(s) for s in plan_shards(samples, 4)] == [3, 3, 3]
    assert [len(s) for s in plan_shards(samples, 6)] == [6, 3]


def test_cli_with_the_real_tiny_tokenizer(tmp_path, capsys):
    args = ["--env", "shapes_gcg", "--split", "val", "--out", str(tmp_path), "-o", "eval_size=3",
            "--tokenizer", "random", "--no-progress"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 3 and report["masks_encoded"] >= 3
    ds = load_prepared(tmp_path)
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "dataset"))["answer"] == ds["answer"]  # what recipes point data.train at
    assert all(len(parse_masks(a)) == len(m) for a, m in zip(ds["answer"], ds["masks"]))
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["shards_resumed"] == 1
    assert main(["--env", "nope", "--split", "val", "--out", str(tmp_path / "x")]) == 2
    assert "unknown environment" in capsys.readouterr().err
