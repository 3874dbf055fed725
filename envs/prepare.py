"""``samtok-rl prepare``: a source dataset in, a ready RL dataset out (GT answers with mask tokens).

Every GT mask is encoded with a ``tokenizer.MaskTokenizer``, all masks of one image in one batch, and
written into the answer string. The output folder::

    out/manifest.json          what is being prepared (env, split, options, tokenizer, shard plan)
    out/shards/00000/          a ``datasets`` dataset per shard, renamed into place when complete
    out/shards/00000.done.json written last: rows and skipped rows of that shard
    out/report.json            totals, skipped rows with reasons, timing
    out/dataset/               all shards as one ``datasets`` dataset, written once every shard is done
                               (``datasets.load_from_disk``; the recipes' ``data.train``)

Resumable: a rerun with the same arguments skips every shard that has its ``.done.json`` and redoes
the rest (a shard folder without one is a crash leftover and is rebuilt). Source rows are all loaded
and checked before any encoding, so strict mode fails before work (and training) starts; lenient mode
skips bad rows and lists them, with file, index and reason, in the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from envs.base import BadRowError, BadRows, build_rows, group_by_image, rows_to_dataset, unique_masks


def plan_shards(samples: list[dict], shard_size: int) -> list[list[dict]]:
    """Consecutive shards of about ``shard_size`` samples; an image's samples never straddle two shards."""
    shards: list[list[dict]] = [[]]
    for group in group_by_image(samples):
        if shards[-1] and len(shards[-1]) + len(group) > shard_size:
            shards.append([])
        shards[-1].extend(group)
    return [s for s in shards if s]


def prepare_dataset(env, split: str, out, mask_tokenizer, tokenizer_id: str = "", shard_size: int = 1000,
                    strict: bool = True, options: dict | None = None, progress: bool = True) -> dict:
    """Prepare ``env``'s ``split`` into ``out`` (see the module doc); returns the report dict."""
    env.check_split(split)
    out = Path(out)
    start = time.perf_counter()
    bad = BadRows(strict=strict)
    samples = list(env.samples(split, bad))
    shards = plan_shards(samples, shard_size)
    manifest = {
        "env": env.name, "split": split, "options": options or {}, "tokenizer": tokenizer_id,
        "shard_size": shard_size, "samples": len(samples),
        "ids_sha1": hashlib.sha1("\n".join(s["id"] for s in samples).encode()).hexdigest(),
        "shards": [len(s) for s in shards],
    }
    _check_manifest(out, manifest)
    bar = _progress(len(samples), progress)
    masks_done, resumed = 0, 0
    for i, shard in enumerate(shards):
        done = out / "shards" / f"{i:05d}.done.json"
        if done.is_file():
            resumed += 1
            bar.update(len(shard))
            continue
        rows, skipped, n_masks = _encode_shard(shard, mask_tokenizer, strict, bar)
        masks_done += n_masks
        _write_shard(out / "shards" / f"{i:05d}", rows)
        _write_json(done, {"rows": len(rows), "skipped": skipped, "masks": n_masks})
    bar.close()
    if masks_done or resumed < len(shards) or not (out / "dataset").is_dir():
        _write_shard(out / "dataset", load_prepared(out))
    return _write_report(out, shards, bad, masks_done, resumed, time.perf_counter() - start)


def _check_manifest(out: Path, manifest: dict) -> None:
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise ValueError(f"{out} holds a different preparation (differs in {diff}); use a new --out or --overwrite")
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)


def _encode_shard(shard, mask_tokenizer, strict, bar):
    rows, skipped, n_masks = [], [], 0
    for group in group_by_image(shard):
        try:
            rows += build_rows(group, mask_tokenizer)
            n_masks += len(unique_masks(group))
        except ValueError:
            # Isolate the bad sample(s) of this image; the others still become rows.
            for sample in group:
                try:
                    rows += build_rows([sample], mask_tokenizer)
                    n_masks += len(unique_masks([sample]))
                except ValueError as e:
                    where = sample.get("source", f"sample {sample['id']}")
                    if strict:
                        raise BadRowError(f"{where}: {e}") from None
                    skipped.append({"id": sample["id"], "source": where, "reason": str(e)})
        bar.update(len(group))
    return rows, skipped, n_masks


def _write_shard(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    for p in (tmp, path):  # leftovers of an interrupted run
        if p.exists():
            shutil.rmtree(p)
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = are_progress_bars_disabled()
    disable_progress_bars()  # our own bar counts samples; one "Saving the dataset" bar per shard is noise
    try:
        (rows_to_dataset(rows) if isinstance(rows, list) else rows).save_to_disk(str(tmp))
    finally:
        if not quiet:
            enable_progress_bars()
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _write_report(out: Path, shards, bad: BadRows, masks_done: int, resumed: int, seconds: float) -> dict:
    rows, skipped = 0, list(bad.skipped)
    for i in range(len(shards)):
        done = json.loads((out / "shards" / f"{i:05d}.done.json").read_text())
        rows += done["rows"]
        skipped += done["skipped"]
    reasons: dict[str, int] = {}
    for s in skipped:
        key = _reason_kind(s["reason"])
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "rows": rows, "skipped": len(skipped), "skipped_by_reason": reasons, "skipped_rows": skipped,
        "shards": len(shards), "shards_resumed": resumed, "masks_encoded": masks_done, "seconds": round(seconds, 3),
        "seconds_per_1000_masks": round(1000 * seconds / masks_done, 3) if masks_done else None,
    }
    _write_json(out / "report.json", report)
    return report


# Report keys for the skipped-row summary, by the phrase each loader's message contains.
_REASON_KINDS = (
    ("missing image", "missing image"), ("cannot read image", "unreadable image"), ("RLE", "corrupt RLE"),
    ("is empty", "empty mask"), ("empty mask", "empty mask"), ("escapes", "image path escapes root"),
    ("not found in the caption", "phrase not in caption"), ("phrases but", "phrase/mask count mismatch"),
)


def _reason_kind(reason: str) -> str:
    return next((kind for key, kind in _REASON_KINDS if key in reason), "other")


def load_prepared(out):
    """The prepared dataset in ``out`` (shards concatenated in order); fails if a shard is unfinished."""
    from datasets import concatenate_datasets, load_from_disk

    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    parts = []
    for i in range(len(manifest["shards"])):
        if not (out / "shards" / f"{i:05d}.done.json").is_file():
            raise ValueError(f"{out}: shard {i} is unfinished; rerun `samtok-rl prepare` with the same arguments")
        parts.append(load_from_disk(str(out / "shards" / f"{i:05d}")))
    return concatenate_datasets(parts) if parts else rows_to_dataset([])


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="prepare", unit="sample", disable=not enabled, file=sys.stderr)


def parse_options(items) -> dict:
    """``key=value`` pairs; values that read as JSON (numbers, booleans) are converted."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects key=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


