"""``samtok-rl prepare``: encode a dataset's ground-truth masks into SAMTok answers for RL (``envs.prepare``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rl.cli.errors import bad_input


def command(env: str, split: str, out: str, option: list[str] = (), tokenizer: str = "tiny16", shard_size: int = 1000,
            lenient: bool = False, overwrite: bool = False, no_progress: bool = False) -> int:
    """``env``'s ``split`` encoded into ``out``. The exit status."""
    from envs import get_env
    from envs.prepare import parse_options, prepare_dataset
    from tokenizer.load import load_mask_tokenizer

    try:
        options = parse_options(option)
        environment = get_env(env, **options)
        environment.check_split(split)
        if overwrite and Path(out).exists():
            shutil.rmtree(out)
        tok = load_mask_tokenizer(tokenizer)
        report = prepare_dataset(environment, split, out, tok, tokenizer, shard_size,
                                 strict=not lenient, options=options, progress=not no_progress)
    except (ValueError, FileNotFoundError) as e:
        return bad_input("samtok-rl prepare: error", e)
    print(json.dumps({k: v for k, v in report.items() if k != "skipped_rows"}, indent=1))
    return 0
