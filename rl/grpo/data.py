"""Training data: the shapes world's rows (cached on disk) and prepared GRES/GCG datasets, as ``datasets.Dataset``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rl.grpo.distributed import is_main_process
from rl.recipe.config import Recipe


def shapes_rows(recipe: Recipe, split: str, n: int, mask_tokenizer=None) -> list[dict]:
    """Rows of the generated shapes world (GT answers encoded with the recipe's mask tokenizer)."""
    from envs import get_env
    from envs.base import build_rows, group_by_image
    from tokenizer.load import load_mask_tokenizer

    d = recipe.data
    env = get_env(d.env, train_size=n, eval_size=n, seed=d.shapes.seed, image_size=d.shapes.image_size)
    tok = mask_tokenizer or load_mask_tokenizer(d.mask_tokenizer)
    return [row for group in group_by_image(env.samples(split)) for row in build_rows(group, tok)]


def shapes_dataset(recipe: Recipe, split: str, n: int, mask_tokenizer=None):
    """``shapes_rows`` as a ``datasets.Dataset``, cached on disk when the mask tokenizer is a saved one.

    Encoding thousands of scenes with the mask tokenizer takes minutes on a CPU, and every SFT and GRPO run
    of an experiment reads the same scenes (``data.shapes.seed`` is not the run's seed). The cache key holds
    everything the rows depend on: the world's parameters, the tokenizer's files and the source of the code
    that draws and encodes them, so an edit to any of these rebuilds. ``SAMTOK_RL_CACHE`` (default
    ``~/.cache/samtok-rl``) says where; ``SAMTOK_RL_CACHE=off`` disables it.
    """
    import datasets

    from envs.base import rows_to_dataset

    key = _shapes_cache_key(recipe, split, n)
    root = os.environ.get("SAMTOK_RL_CACHE", str(Path.home() / ".cache" / "samtok-rl"))
    path = Path(root) / "shapes" / key if key is not None and root != "off" else None
    if path is not None and (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    rows = shapes_rows(recipe, split, n, mask_tokenizer)
    ds = rows_to_dataset(rows)
    if path is not None and is_main_process():
        import shutil
        import tempfile

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=path.parent, prefix=".tmp-")
        ds.save_to_disk(tmp)
        try:
            os.replace(tmp, path)  # atomic: a concurrent run sees a whole cache entry or none
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return ds


def _shapes_cache_key(recipe: Recipe, split: str, n: int) -> str | None:
    import hashlib

    import envs.base
    import envs.shapes
    import envs.task
    import tokenizer.codec
    import tokenizer.config
    import tokenizer.masks
    import tokenizer.model
    import tokenizer.vq
    from tokenizer.load import spec_folder

    d = recipe.data
    folder = spec_folder(d.mask_tokenizer)
    if folder is None or not folder.is_dir():
        return None  # "random": seeded in memory, cheap to rebuild
    h = hashlib.sha256(repr((d.env, split, n, d.shapes.seed, d.shapes.image_size)).encode())
    for f in [*sorted(folder.glob("*.json")), *sorted(folder.glob("*.safetensors"))]:
        h.update(f.read_bytes())
    for module in (envs.base, envs.shapes, envs.task, tokenizer.codec, tokenizer.config, tokenizer.masks, tokenizer.model, tokenizer.vq):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:20]


def load_datasets(recipe: Recipe, mask_tokenizer=None):
    """``(train, eval)`` ``datasets.Dataset``s in TRL's conversational format (eval may be None)."""
    d = recipe.data
    from envs import is_generated

    if is_generated(d.env):
        train = shapes_dataset(recipe, "train", d.shapes.n_train, mask_tokenizer)
        evald = shapes_dataset(recipe, "val", d.shapes.n_eval, mask_tokenizer) if d.shapes.n_eval else None
    else:
        train = load_prepared(d.train, d.image_root)
        evald = load_prepared(d.eval, d.image_root) if d.eval else None
    if d.max_train_samples is not None:
        train = train.select(range(min(d.max_train_samples, len(train))))
    return train, evald


class DataError(ValueError):
    """Training data that cannot be used: the message names the file, the row (line) and the field."""


def _check_json_rows(files: list[str]) -> None:
    """Every row of .jsonl files parses, and a .json file is valid JSON: datasets would otherwise fail deep in
    pyarrow with a long traceback that names neither the file nor the line."""
    for f in files:
        text = Path(f).read_text()
        if f.endswith(".jsonl"):
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{f}: line {n}: a row must be a JSON object, got {type(row).__name__}")
        else:
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{f}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def load_prepared(path: str, image_root: str | None = None):
    """A prepared dataset: a ``samtok-rl prepare`` folder, a ``save_to_disk`` directory, or .jsonl/.json/.parquet
    files (or a directory of them)."""
    import datasets

    p = Path(path)
    if (p / "manifest.json").is_file():
        from envs.prepare import load_prepared as load_prepare_output

        ds = load_prepare_output(p)
    elif (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
    else:
        files = sorted(str(f) for f in p.glob("*") if f.suffix in (".jsonl", ".json", ".parquet")) if p.is_dir() else [str(p)]
        if not files:
            raise DataError(f"{path}: no .jsonl/.json/.parquet files")
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        if kind == "json":
            _check_json_rows(files)
        ds = datasets.load_dataset(kind, data_files=files, split="train")
    missing = [c for c in ("prompt", "image", "answer") if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: prepared rows lack the column(s) {missing}; run `samtok-rl prepare` first")
    if isinstance(ds.features["image"], datasets.Value):  # paths: make them images decoded on access
        if image_root:
            from envs.base import safe_image_path  # refuses paths that escape the image root

            ds = ds.map(lambda r: {"image": str(safe_image_path(image_root, r["image"]))})
        ds = ds.cast_column("image", datasets.Image())
    return ds
